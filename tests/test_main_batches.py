"""End-to-end tests of ``main.py --batch_size`` (one batched solve per chunk of slices, resumable)
and of the one solve path every solver takes (a chunk's unfinished slices in one call)."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.main_runs import (PY, ROOT, SLICE_FILES, TINY, Finished, Run, file_state, metrics_rows, run_all, run_env,
                             slice_dir, slice_key)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------- 6. --batch_size (batched solves)
#: Short uDiG-DIP / aSeqDIP / DIP runs on MRI (3×2 and 6 steps; the MRI-only
#: ``modality_overrides`` flags win over TINY's ``solver_cfg`` values for MRI).
BATCH_TINY = [
    *TINY, "--deg=MRI-multi", "--solver=udigdip,aseqdip,dip,dds", "--max_slices=3", "--seed=0",
    *(f"--config.solver_cfg.{n}.{k}={v}" for n in ("aseqdip", "dip")
      for k, v in (("net.channels", "(8,8,8,8)"), ("log_every", 1), ("disable_progress", True))),
    "--config.solver_cfg.dip.num_steps=6",
    "--config.modality_overrides.MRI.udigdip.num_outer=3",
    "--config.modality_overrides.MRI.udigdip.inner_steps=2",
    "--config.modality_overrides.MRI.udigdip.purify_stop=3",
    "--config.solver_cfg.aseqdip.num_outer=3",
    "--config.solver_cfg.aseqdip.inner_steps=2",
]
BATCH_SOLVERS = ("udigdip", "aseqdip", "dip", "dds")


@pytest.fixture(scope="module")
def batch_runs(tmp_path_factory):
    """The same 3-slice run with --batch_size=1 and --batch_size=2, started together."""
    tmp = tmp_path_factory.mktemp("batch_runs")
    r = {bs: Run([f"--workdir={tmp / f'bs{bs}'}", *BATCH_TINY, f"--batch_size={bs}", f"--name=bs{bs}"],
                 tmp / f"bs{bs}.txt") for bs in (1, 2)}
    yield r
    for v in r.values():
        if v.proc.poll() is None:
            v.proc.kill()
            v.wait()


def _extra(run_dir: Path, solver: str, slice_name: str) -> dict:
    return json.loads((slice_dir(run_dir, solver, slice_name) / "result.json").read_text())["extra"]


def test_batch_size_matches_one_at_a_time(batch_runs):
    one, two = batch_runs[1].run_dir, batch_runs[2].run_dir
    names = [slice_key("MRI-multi", i) for i in range(3)]
    # same rows and the same files
    key = lambda r: (r["solver"], r["slice"])  # noqa: E731
    rows1, rows2 = sorted(metrics_rows(one), key=key), sorted(metrics_rows(two), key=key)
    assert [key(r) for r in rows1] == [key(r) for r in rows2] == sorted(
        (s, n) for s in BATCH_SOLVERS for n in names)
    files = lambda d: sorted(str(p.relative_to(d)) for p in (d / "slices").rglob("*") if p.is_file())  # noqa: E731
    assert files(one) == files(two)
    assert json.loads((two / "config.json").read_text())["batch_size"] == 2
    for a, b in zip(rows1, rows2):
        s, sl = key(a)
        ra = np.load(slice_dir(one, s, sl) / "recon.npy")
        rb = np.load(slice_dir(two, s, sl) / "recon.npy")
        if sl == names[2]:
            # the chunk's lone slice: a one-slice solve, bit for bit
            assert ra.tobytes() == rb.tobytes(), (s, sl)
            assert _extra(two, s, sl)["batch_size"] == 1 and _extra(one, s, sl)["batch_size"] == 1
            continue
        ex = _extra(two, s, sl)
        assert ex["batch_size"] == 2 and ex["batch_slices"] == names[:2]
        assert ("perf" in ex) == (s != "dds")      # config.perf belongs to the batched DIP only
        # each slice of the batch gets the batch's time / 2
        assert float(b["seconds"]) == pytest.approx(ex["batch_seconds"] / 2, rel=1e-9)
        with open(slice_dir(one, s, sl) / "curves.csv", newline="") as f1, \
                open(slice_dir(two, s, sl) / "curves.csv", newline="") as f2:
            c1, c2 = list(csv.DictReader(f1)), list(csv.DictReader(f2))
        assert [c["step"] for c in c1] == [c["step"] for c in c2]
        if s == "dds":
            # per-slice noise streams (seed of the slice, as one at a time): the same computation,
            # only the batched prior call / FFTs sum in another order → float32 rounding
            rel = np.linalg.norm(ra - rb) / np.linalg.norm(ra)
            assert rel <= 1e-5, (s, sl, rel)
            assert len(c1) == 2          # nfe=2, log_every=1: per-slice residuals, not batch means
            for c_1, c_2 in zip(c1, c2):
                for k in ("residual", "residual_tweedie", "psnr"):
                    assert float(c_2[k]) == pytest.approx(float(c_1[k]), rel=1e-5), (s, sl, k)
            continue
        # batched DIP (grouped convolutions): equal up to float32 rounding, which Adam amplifies
        # (a near-zero gradient's sign flips → a ±lr step) mostly in the null space of A, so the
        # images differ more than the PSNR (float64 agrees to 1e-13, tests/test_perf.py)
        assert abs(float(a["psnr"]) - float(b["psnr"])) < 0.1, (s, sl, a["psnr"], b["psnr"])
        assert len(c1) == 6
        # the loss before the first update: the same net (seed), y and reference slice
        for k in ("loss", "data_loss", "psnr"):
            assert float(c2[0][k]) == pytest.approx(float(c1[0][k]), rel=1e-5), (s, sl, k)
    out = batch_runs[2].output
    for s in BATCH_SOLVERS:
        assert f"{s}: 2 slices in one batched solve" in out
    assert "cannot stack" not in out and "one at a time" not in out


def test_resume_with_batches_runs_only_missing_slices(batch_runs, tmp_path):
    """An interrupted batched run (only slice 0 finished) resumed with --batch_size=3: the chunk
    [0, 1, 2] runs one batched solve over slices 1 and 2; slice 0 is not touched."""
    src = batch_runs[2].run_dir
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    names = [slice_key("MRI-multi", i) for i in range(3)]
    for s in BATCH_SOLVERS:
        for sl in names[1:]:
            shutil.rmtree(slice_dir(run_dir, s, sl))
    rows = [r for r in metrics_rows(run_dir) if r["slice"] == names[0]]
    with open(run_dir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    before = {s: file_state(slice_dir(run_dir, s, names[0])) for s in BATCH_SOLVERS}

    r = Run([f"--workdir={tmp_path}", *BATCH_TINY, "--batch_size=3", f"--resume={run_dir}"],
            tmp_path.parent / f"{tmp_path.name}_resume.txt").ok()
    assert r.run_dir == run_dir
    assert sorted((x["solver"], x["slice"]) for x in metrics_rows(run_dir)) == sorted(
        (s, n) for s in BATCH_SOLVERS for n in names)
    for s in BATCH_SOLVERS:
        assert file_state(slice_dir(run_dir, s, names[0])) == before[s]
        assert f"skip {s} / {names[0]}" in r.output
        for sl in names[1:]:
            assert all((slice_dir(run_dir, s, sl) / f).is_file() for f in SLICE_FILES)
            ex = _extra(run_dir, s, sl)
            assert ex["batch_size"] == 2 and ex["batch_slices"] == names[1:]
    for s in BATCH_SOLVERS:
        assert f"{s}: 2 slices in one batched solve" in r.output
    assert json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def bad_batch_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_batch")
    cases = {"zero": "--batch_size=0", "negative": "--batch_size=-1", "config": "--config.batch_size=0"}
    done = run_all({k: [f"--workdir={tmp / k}", *TINY, "--deg=SV-CT", "--solver=dds", a] for k, a in cases.items()})
    return {k: (Finished(d), tmp / k) for k, d in done.items()}


@pytest.mark.parametrize("case", ["zero", "negative", "config"])
def test_bad_batch_size_clear_error(bad_batch_runs, case):
    run, workdir = bad_batch_runs[case]
    run.wait()
    assert run.rc != 0
    assert "--batch_size must be an integer in [1, 4096]" in run.output, run.output[-2000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    assert not workdir.exists() or not any(workdir.iterdir())


# ------------------------------------------------------------- 7. one solve path for every solver
_ROUTING_SCRIPT = r"""
import ml_collections
import run_lib as M
from solvers.perf import parse_graph_mode

calls = []
M.prepare_slice = lambda cfg, deg, s, dev: type("J", (), {"name": s.name})()
M.solve = lambda cfg, jobs, name, *a: calls.append((name, [j.name for j in jobs]))

class RD:
    done = {("dds", "MRI-multi_b")}
    def is_done(self, name, key):
        return (name, key) in self.done

S = lambda n: type("S", (), {"name": n})()
cfg = ml_collections.ConfigDict({"seed": 0})
for chunk in ([S("a")], [S("a"), S("b"), S("c")]):
    calls.clear()
    M.run_chunk(cfg, "MRI-multi", chunk, ["udigdip", "dds", "sgdip"], None, "cpu", RD())
    names = [s.name for s in chunk]
    want = [("udigdip", names), ("dds", [n for n in names if n != "b"]), ("sgdip", names)]
    assert calls == want, (chunk, calls)
assert not hasattr(M, "BATCHED_SOLVERS") and not hasattr(M, "graph_path")
assert [parse_graph_mode(v) for v in (True, "ON", "false", "auto", 0)] == ["on", "on", "off", "auto", "off"]
try:
    parse_graph_mode("maybe")
    raise SystemExit("no error for a bad value")
except ValueError as e:
    assert "cuda_graph" in str(e)
print("ROUTING OK")
"""


def test_every_solver_solves_a_chunk_in_one_call():
    """One path for every solver (DIP and DM alike, one slice or several): the chunk's unfinished
    slices of each solver go to ONE ``run_lib.solve`` call (whether CUDA graphs are used is the
    solver's own business, solvers/perf.py).  (A subprocess, so no module state leaks.)"""
    out = subprocess.run([PY, "-c", _ROUTING_SCRIPT], cwd=ROOT, env=run_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "ROUTING OK" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


@pytest.mark.parametrize("field,expect", [("cuda_graph", "'auto', 'on' or 'off'"), ("net_impl", "'auto' or one of")])
def test_bad_perf_value_clear_error(tmp_path, field, expect):
    run = Run([f"--workdir={tmp_path / 'w'}", *TINY, "--deg=MRI-multi", "--solver=udigdip",
               f"--config.perf.{field}=maybe"], tmp_path / "out.txt").wait()
    assert run.rc != 0
    assert field in run.output and expect in run.output, run.output[-2000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
