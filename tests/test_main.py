"""End-to-end tests of ``main.py``: run folders, metrics, determinism, resume, error messages.

``main.py`` is driven as a subprocess (``python main.py ...``) so absl flag state never leaks
between tests.  Every run is tiny (64² shipped samples, shipped demo priors, 2 outer uDiG-DIP
iterations with an 8-channel DIP U-Net, 2 DDS NFE, 1 slice) and the independent runs of a
module are started together (one thread each) to keep the wall-clock time down.  The full
no-flag demo is ``@pytest.mark.slow``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: Overrides that make one (solver, slice) take about a second of CPU.
TINY = [
    "--device=cpu",
    "--max_slices=1",
    "--config.solver_cfg.udigdip.num_outer=2",
    "--config.solver_cfg.udigdip.inner_steps=1",
    "--config.solver_cfg.udigdip.purify_stop=2",
    "--config.solver_cfg.udigdip.net.channels=(8,8,8,8)",
    "--config.solver_cfg.udigdip.log_every=1",
    "--config.solver_cfg.udigdip.disable_progress=True",
    "--config.solver_cfg.dds.nfe=2",
    "--config.solver_cfg.dds.log_every=1",
    "--config.solver_cfg.dds.progress=False",
    # the demo config's per-modality settings (1000 / 600 DIP steps) win over solver_cfg
    *(f"--config.modality_overrides.{m}.udigdip.{k}={v}" for m in ("MRI", "CT")
      for k, v in (("num_outer", 2), ("inner_steps", 1), ("purify_stop", 2))),
]
SOLVERS = ("udigdip", "dds")
SLICE_FILES = ("recon.npy", "recon.png", "comparison.png", "curves.csv", "curves.png",
               "result.json", "DONE")


# ---------------------------------------------------------------------------------- helpers
def _env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


class Run:
    """``python main.py *args`` started in the background; :meth:`wait` returns self."""

    def __init__(self, args, log_path: Path):
        self.args = list(args)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PY, "main.py", *self.args], cwd=ROOT, env=_env(),
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.rc = None
        self.output = ""

    def wait(self, timeout: float = 900) -> "Run":
        if self.rc is None:
            try:
                self.rc = self.proc.wait(timeout=timeout)
            finally:
                self._log.close()
            self.output = self.log_path.read_text()
        return self

    def ok(self) -> "Run":
        self.wait()
        assert self.rc == 0, f"main.py {' '.join(self.args)} failed (rc={self.rc}):\n{self.output[-4000:]}"
        return self

    @property
    def run_dir(self) -> Path:
        self.ok()
        found = re.findall(r"^run folder: (.+)$", self.output, flags=re.M)
        assert found, f"no 'run folder:' line in the output:\n{self.output[-2000:]}"
        return Path(found[-1].strip())


def _main_args(workdir, *extra):
    return [f"--workdir={workdir}", *TINY, *extra]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _slice_name(deg: str, index: int = 0) -> str:
    """The slice key main.py uses: ``<deg>_<sample name>`` of the shipped samples."""
    from physics import modality_of
    from utils.data import load_dataset

    return f"{deg}_{load_dataset(ROOT / 'indist_samples', modality_of(deg))[index].name}"


def _slice_dir(run_dir: Path, solver: str, slice_name: str) -> Path:
    from utils.run_dir import safe_name

    return run_dir / "slices" / safe_name(solver) / safe_name(slice_name)


def _file_state(folder: Path) -> dict:
    """``{relative path: (mtime_ns, bytes)}`` of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _ref_image(deg: str, index: int = 0) -> torch.Tensor:
    from physics import modality_of
    from utils.data import load_dataset

    return load_dataset(ROOT / "indist_samples", modality_of(deg))[index].x_ref


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- shared tiny runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The independent tiny runs of this module, started at once (lazily waited on)."""
    base = tmp_path_factory.mktemp("main_runs")
    logs = tmp_path_factory.mktemp("main_logs")
    same = base / "same"     # two identical commands → two folders, identical results
    r = {
        "mri_a": Run(_main_args(same, "--deg=MRI-multi", "--solver=udigdip,dds", "--name=same",
                                "--seed=0"), logs / "mri_a.txt"),
        "mri_b": Run(_main_args(same, "--deg=MRI-multi", "--solver=udigdip,dds", "--name=same",
                                "--seed=0"), logs / "mri_b.txt"),
        "mri_seed1": Run(_main_args(base / "seed1", "--deg=MRI-multi", "--solver=udigdip,dds",
                                    "--name=same", "--seed=1"), logs / "mri_seed1.txt"),
        "ct": Run(_main_args(base / "ct", "--deg=SV-CT", "--solver=udigdip,dds", "--name=ct"),
                  logs / "ct.txt"),
    }
    r["base"] = base
    r["logs"] = logs
    yield r
    for k, v in r.items():
        if isinstance(v, Run) and v.proc.poll() is None:
            v.proc.kill()
            v.wait()


# ------------------------------------------------------------------- 1. outputs and metrics
@pytest.mark.parametrize("key,deg", [("mri_a", "MRI-multi"), ("ct", "SV-CT")])
def test_run_writes_complete_outputs(runs, key, deg):
    from utils.metrics import compute_metrics
    from utils.run_dir import METRIC_COLUMNS

    run_dir = runs[key].run_dir
    slice_name = _slice_name(deg)

    # metrics.csv: exactly one row per (solver, slice), headline and oracle columns separate
    rows = _rows(run_dir)
    assert sorted((r["solver"], r["slice"]) for r in rows) == sorted(
        (s, slice_name) for s in SOLVERS)
    with open(run_dir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert list(header[:len(METRIC_COLUMNS)]) == list(METRIC_COLUMNS)
    assert {"psnr", "oracle_best_psnr", "oracle_best_iter"} <= set(header)
    for r in rows:
        assert r["deg"] == deg and r["run"] == run_dir.name

    ref = _ref_image(deg)
    for r in rows:
        d = _slice_dir(run_dir, r["solver"], slice_name)
        for f in SLICE_FILES:
            assert (d / f).is_file() and (d / f).stat().st_size > 0, f"missing {d / f}"
        rec = np.load(d / "recon.npy")
        assert rec.shape == tuple(ref.shape)
        assert np.iscomplexobj(rec) == (deg == "MRI-multi")
        assert np.isfinite(rec).all()

        # the headline is the FINAL iterate: metrics recomputed from recon.npy (fastMRI
        # convention, utils.metrics) equal the CSV row
        m = compute_metrics(torch.from_numpy(rec)[None], ref[None])
        for k in ("psnr", "ssim", "nmse"):
            val = m[k][0] if isinstance(m[k], (list, tuple)) else m[k]
            assert float(r[k]) == pytest.approx(float(val), rel=1e-9, abs=1e-9), k
        assert math.isfinite(float(r["psnr"])) and math.isfinite(float(r["input_psnr"]))

        # the oracle is the best logged iterate (from curves.csv), reported in its own column
        with open(d / "curves.csv", newline="") as f:
            curve = [float(c["psnr"]) for c in csv.DictReader(f) if c.get("psnr")]
        assert curve, "curves.csv has no PSNR history"
        assert float(r["oracle_best_psnr"]) == pytest.approx(max(curve), rel=1e-9)

        res = json.loads((d / "result.json").read_text())
        assert res["row"]["psnr"] == pytest.approx(float(r["psnr"]), rel=1e-12)

    # summary.json: mean / std per (solver, deg) of the final-iterate metrics; oracle labelled
    summary = json.loads((run_dir / "summary.json").read_text())
    groups = {(g["solver"], g["deg"]): g for g in summary["groups"]}
    assert set(groups) == {(s, deg) for s in SOLVERS}
    for r in rows:
        g = groups[(r["solver"], deg)]
        assert g["n"] == 1
        assert g["final"]["psnr"]["mean"] == pytest.approx(float(r["psnr"]), rel=1e-12)
        assert g["final"]["psnr"]["std"] == 0.0
        assert "ssim" in g["final"] and "psnr" not in g["oracle_best_over_iterations"]
        assert "ORACLE" in g["oracle_best_over_iterations"]["note"]
    assert (run_dir / "summary.md").is_file()

    # config snapshot (with the command-line overrides) and provenance
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["deg"] == deg and cfg["solvers"] == "udigdip,dds"
    assert cfg["solver_cfg"]["udigdip"]["num_outer"] == 2
    assert list(cfg["solver_cfg"]["udigdip"]["net"]["channels"]) == [8, 8, 8, 8]
    assert cfg["data"]["max_slices"] == 1
    meta = json.loads((run_dir / "meta.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if head:
        assert meta["git"]["commit"] == head
    assert "dirty" in meta["git"]


# ---------------------------------------------------------------------------- 2. determinism
def test_same_command_is_bit_identical_and_seed_changes_result(runs):
    a, b, c = runs["mri_a"].run_dir, runs["mri_b"].run_dir, runs["mri_seed1"].run_dir
    slice_name = _slice_name("MRI-multi")
    for s in SOLVERS:
        ra = np.load(_slice_dir(a, s, slice_name) / "recon.npy")
        rb = np.load(_slice_dir(b, s, slice_name) / "recon.npy")
        rc = np.load(_slice_dir(c, s, slice_name) / "recon.npy")
        assert ra.dtype == rb.dtype and ra.tobytes() == rb.tobytes(), f"{s}: not bit-identical"
        assert not np.array_equal(ra, rc), f"{s}: --seed=1 gave the same reconstruction"
    keys = ("solver", "deg", "slice", "psnr", "ssim", "nmse", "input_psnr", "input_ssim",
            "oracle_best_psnr", "oracle_best_iter")
    rows_a = sorted(tuple(r[k] for k in keys) for r in _rows(a))
    rows_b = sorted(tuple(r[k] for k in keys) for r in _rows(b))
    assert rows_a == rows_b


@pytest.fixture(scope="module")
def priors():
    from models.denoiser import load_prior

    return {"MRI": load_prior("demo_mri_64"), "CT": load_prior("demo_ct_64")}


def _problem(deg: str):
    from configs.base import get_base_config
    from physics import make_physics, modality_of, simulate_measurements
    from utils.data import load_dataset

    cfg = get_base_config()
    sample = load_dataset(ROOT / "indist_samples", modality_of(deg))[0]
    physics = make_physics(deg, cfg.physics, sample)
    x_ref = sample.x_ref[None]
    y = simulate_measurements(physics, x_ref, 0.01, seed=0)
    return cfg, physics, x_ref, y


def _tiny_solver(cfg, name, denoiser):
    import solvers

    c = cfg.solver_cfg[name]
    if name == "udigdip":
        c.update(num_outer=2, inner_steps=1, purify_stop=2, log_every=1, disable_progress=True)
        c.net.channels = (8, 8, 8, 8)
    else:
        c.update(nfe=3, log_every=1, progress=False)
    return solvers.make_solver(name, c, denoiser, seed=3)


@pytest.mark.parametrize("name,deg", [("udigdip", "MRI-multi"), ("dds", "MRI-multi"),
                                      ("udigdip", "SV-CT")])
def test_reconstruction_independent_of_ground_truth(priors, name, deg):
    from physics import modality_of
    from utils.logging import MetricsCallback

    cfg, physics, x_ref, y = _problem(deg)
    den = priors[modality_of(deg)]
    cb = MetricsCallback(x_ref)
    with_gt = _tiny_solver(cfg, name, den)(y, physics, x_gt=x_ref, callback=cb)
    without = _tiny_solver(cfg, name, den)(y, physics)
    assert len(cb.records) > 0 and all(math.isfinite(r["psnr"]) for r in cb.records)
    assert torch.equal(with_gt.x_hat, without.x_hat)


@pytest.mark.parametrize("name", ["udigdip", "dds"])
def test_nan_measurements_are_rejected(priors, name):
    cfg, physics, x_ref, y = _problem("MRI-multi")
    y = y.clone()
    y.view(-1)[5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _tiny_solver(cfg, name, priors["MRI"])(y, physics)


# ------------------------------------------------------------------- 3. never overwrite, resume
def test_same_name_twice_gives_two_folders(runs):
    a, b = runs["mri_a"].run_dir, runs["mri_b"].run_dir
    assert a != b and a.parent == b.parent == runs["base"] / "same"
    folders = sorted(p for p in (runs["base"] / "same").iterdir() if p.is_dir())
    assert folders == sorted([a, b])
    for d in folders:
        assert re.fullmatch(r"\d{8}-\d{6}_same(_\d+)?", d.name), d.name
        assert len(_rows(d)) == len(SOLVERS)
        assert (d / "meta.json").is_file()


def test_resume_skips_finished_slices(runs, tmp_path):
    src = runs["mri_a"].run_dir
    workdir = tmp_path / "resume_root"
    run_dir = workdir / src.name
    shutil.copytree(src, run_dir)  # copy2: mtimes preserved; an "interrupted" 1-of-2-slice run
    first = _slice_name("MRI-multi", 0)
    second = _slice_name("MRI-multi", 1)
    before = {s: _file_state(_slice_dir(run_dir, s, first)) for s in SOLVERS}
    old_rows = {r["solver"]: r for r in _rows(run_dir)}

    args = _main_args(workdir, "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=0",
                      f"--resume={run_dir}", "--max_slices=2")
    r = Run(args, tmp_path / "resume.txt").ok()
    assert r.run_dir == run_dir
    assert [p for p in workdir.iterdir()] == [run_dir], "resume created a new run folder"

    rows = _rows(run_dir)
    for s in SOLVERS:
        mine = [x for x in rows if x["solver"] == s]
        assert sorted(x["slice"] for x in mine) == sorted([first, second]), rows
        # the finished slice was neither recomputed nor rewritten
        assert _file_state(_slice_dir(run_dir, s, first)) == before[s]
        row1 = next(x for x in mine if x["slice"] == first)
        assert {k: row1[k] for k in ("psnr", "ssim", "seconds")} == \
            {k: old_rows[s][k] for k in ("psnr", "ssim", "seconds")}
        d2 = _slice_dir(run_dir, s, second)
        assert all((d2 / f).is_file() for f in SLICE_FILES)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(g["n"] == 2 for g in summary["groups"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta.get("resumes", [])) == 1


def test_resume_with_different_config_is_refused(runs, tmp_path):
    src = runs["mri_a"].run_dir
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    before = _file_state(run_dir)
    args = _main_args(tmp_path, "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=5",
                      f"--resume={run_dir}", "--max_slices=2")
    r = Run(args, tmp_path.parent / f"{tmp_path.name}_refused.txt").wait()
    assert r.rc != 0
    assert "config differs" in r.output and "seed" in r.output, r.output[-2000:]
    assert "Traceback" not in r.output
    assert _file_state(run_dir) == before  # nothing written into the run


# ------------------------------------------------------------------------------ 4. bad input
def _nan_dds_folder(root: Path) -> Path:
    src = np.load(ROOT / "indist_samples" / "CT" / "cranium" / "048.npy")
    src[10, 20] = np.nan
    (root / "CT" / "vol").mkdir(parents=True)
    np.save(root / "CT" / "vol" / "000.npy", src)
    return root


_VALID_SOLVERS = ("udigdip", "aseqdip", "dip", "sgdip", "dds", "dps")
ERROR_CASES = {
    # name: (extra args, substrings the output must contain)
    "unknown_solver": (["--deg=MRI-multi", "--solver=udigdip,nosuch"],
                       ["unknown solver 'nosuch'", *_VALID_SOLVERS]),
    "unknown_deg": (["--deg=MRI-single", "--solver=dds"],
                    ["unknown degradation 'MRI-single'", "MRI-multi", "SV-CT", "LA-CT"]),
    "missing_data": (["--deg=SV-CT", "--solver=dds", "--data={tmp}/no_such_folder"],
                     ["no_such_folder", "does not exist"]),
    "ckpt_mismatch": (["--deg=MRI-multi", "--solver=udigdip",
                       "--ckpt=models/priors/demo_ct_64.pt"],
                      ["checkpoint mismatch", "demo_ct_64.pt", "MRI"]),
    "nan_data": (["--deg=SV-CT", "--solver=dds", "--data={nan}"], ["NaN"]),
    "cuda_missing": (["--deg=SV-CT", "--solver=dds", "--device=cuda"],
                     ["CUDA is not available"]),
    "bad_solver_cfg": (["--deg=SV-CT", "--solver=udigdip",
                        "--config.modality_overrides.CT.udigdip.purify_stop=500"], ["purify_stop", "udigdip"]),
    "resume_missing": (["--deg=SV-CT", "--solver=dds", "--resume={tmp}/no_such_run"],
                       ["no_such_run"]),
    "positional_arg": (["--deg=SV-CT", "--solver=dds", "stray"], ["unexpected arguments"]),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("main_errors")
    nan = _nan_dds_folder(tmp / "nan_dds")
    out = {}
    for name, (extra, _) in ERROR_CASES.items():
        if name == "cuda_missing" and torch.cuda.is_available():
            continue
        workdir = tmp / f"work_{name}"
        args = [a.format(tmp=tmp, nan=nan) for a in extra]
        # TINY comes first so the case's own flags win (e.g. purify_stop)
        out[name] = (Run([f"--workdir={workdir}", *TINY, *args], tmp / f"{name}.txt"), workdir)
    yield out
    for run, _ in out.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.wait()


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_clear_error(error_runs, case):
    if case not in error_runs:
        pytest.skip("CUDA is available on this machine")
    run, workdir = error_runs[case]
    run.wait()
    assert run.rc != 0, f"{case}: exit status 0\n{run.output[-2000:]}"
    for s in ERROR_CASES[case][1]:
        assert s in run.output, f"{case}: {s!r} not in the output:\n{run.output[-2000:]}"
    assert "Traceback" not in run.output, f"{case}: raw traceback\n{run.output[-3000:]}"
    # input is checked before anything is written: no (half-made) run folder is left behind
    assert not workdir.exists() or not any(workdir.iterdir())


# ------------------------------------------------------------------- 5. the default demo path
def test_demo_config_covers_both_modalities_with_shipped_files():
    import solvers
    from configs.demo import get_config
    from configs.priors import get_prior_config
    from physics import modality_of

    cfg = get_config()
    degs = [d.strip() for d in cfg.deg.split(",")]
    assert "MRI-multi" in degs and "SV-CT" in degs
    assert {modality_of(d) for d in degs} == {"MRI", "CT"}
    names = [solvers.canonical(s) for s in cfg.solvers.split(",")]
    assert "udigdip" in names
    assert cfg.data.path == "indist_samples" and (ROOT / cfg.data.path / "MRI").is_dir() \
        and (ROOT / cfg.data.path / "CT").is_dir()
    assert cfg.prior.ckpt == ""
    for modality, name in (("MRI", cfg.prior.mri), ("CT", cfg.prior.ct)):
        p = get_prior_config(name)
        assert p.checkpoint == f"models/priors/demo_{modality.lower()}_64.pt"
        assert (ROOT / p.checkpoint).is_file()
        assert bool(p.is_complex) == (modality == "MRI")
        assert p.model.image_size == 64 == _ref_image(
            "MRI-multi" if modality == "MRI" else "SV-CT").shape[-1]
    # the demo's solver settings are valid (constructors validate their configs)
    for n in names:
        solvers.make_solver(n, cfg.solver_cfg[n], object() if solvers.needs_prior(n) else None)
    # main.py uses this file when --config is not given
    text = (ROOT / "main.py").read_text()
    assert re.search(r'DEFINE_config_file\(\s*"config",\s*"configs/demo.py"', text)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``python main.py`` with no flags but ``--workdir`` (so ``exp/`` is not touched)."""
    tmp = tmp_path_factory.mktemp("demo")
    return Run([f"--workdir={tmp}"], tmp / "demo.txt").ok()


@pytest.mark.slow
def test_default_demo_run(demo_run):
    """The default path runs both modalities with every demo solver and writes all outputs."""
    from configs.demo import get_config

    cfg = get_config()
    run_dir = demo_run.run_dir
    assert run_dir.name.endswith("_demo")
    rows = _rows(run_dir)
    degs = [d.strip() for d in cfg.deg.split(",")]
    names = [s.strip() for s in cfg.solvers.split(",")]
    assert sorted((x["solver"], x["deg"]) for x in rows) == sorted(
        (s, d) for s in names for d in degs)
    for x in rows:
        assert math.isfinite(float(x["psnr"])) and math.isfinite(float(x["input_psnr"]))
        d = _slice_dir(run_dir, x["solver"], x["slice"])
        assert all((d / f).is_file() for f in SLICE_FILES)
    assert (run_dir / "summary.json").is_file()


@pytest.mark.slow
def test_default_demo_udigdip_beats_its_input(demo_run):
    """Quality check of the demo: uDiG-DIP's final iterate beats zero-filled / FBP."""
    for x in _rows(demo_run.run_dir):
        if x["solver"] == "udigdip":
            assert float(x["psnr"]) > float(x["input_psnr"]), x


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(runs, tmp_path):
    """Slice 2 of a resumed run is bit-identical to slice 2 of a 2-slice run from scratch."""
    fresh = Run(_main_args(tmp_path / "fresh", "--deg=MRI-multi", "--solver=udigdip,dds",
                           "--seed=0", "--max_slices=2"), tmp_path / "fresh.txt").ok().run_dir
    src = runs["mri_a"].run_dir
    resumed = tmp_path / "resumed" / src.name
    shutil.copytree(src, resumed)
    Run(_main_args(tmp_path / "resumed", "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=0",
                   f"--resume={resumed}", "--max_slices=2"), tmp_path / "resumed.txt").ok()
    for i in (0, 1):
        sl = _slice_name("MRI-multi", i)
        for s in SOLVERS:
            a = np.load(_slice_dir(fresh, s, sl) / "recon.npy")
            b = np.load(_slice_dir(resumed, s, sl) / "recon.npy")
            assert a.tobytes() == b.tobytes(), (s, sl)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    """Slices sharded over 2 torchrun ranks (CPU, gloo) land in ONE run folder whose metrics and
    reconstructions equal a single-process run (seeds follow the global slice index)."""
    args = ["--config=configs/demo_mri.py", "--solver=dds", "--config.solver_cfg.dds.nfe=3",
            "--config.solver_cfg.dds.progress=False", "--max_slices=3", f"--workdir={tmp_path}"]
    torchrun = Path(PY).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "main.py", *args, "--name=two"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single = Run([*args, "--name=one"], tmp_path / "one.log").run_dir
    two = Path(re.findall(r"^run folder: (.+)$", out.stdout, flags=re.M)[-1].strip())
    rows_two, rows_one = _rows(two), _rows(single)
    assert len(rows_two) == len(rows_one) == 3
    key = lambda r: r["slice"]
    for a, b in zip(sorted(rows_two, key=key), sorted(rows_one, key=key)):
        assert a["slice"] == b["slice"] and float(a["psnr"]) == float(b["psnr"])
        assert np.array_equal(np.load(_slice_dir(two, "dds", a["slice"]) / "recon.npy"),
                              np.load(_slice_dir(single, "dds", b["slice"]) / "recon.npy"))
    assert json.loads((two / "summary.json").read_text())


# ------------------------------------------------------------- 6. --batch_size (batched solves)
#: Short uDiG-DIP / aSeqDIP runs on MRI: the demo config's ``modality_overrides.MRI`` (1000 DIP
#: steps) would win over TINY's ``solver_cfg`` values, so they are overridden there (3×2 steps).
BATCH_TINY = [
    *TINY, "--deg=MRI-multi", "--solver=udigdip,aseqdip,dip,dds", "--max_slices=3", "--seed=0",
    *(f"--config.solver_cfg.{n}.{k}={v}" for n in ("aseqdip", "dip")
      for k, v in (("net.channels", "(8,8,8,8)"), ("log_every", 1), ("disable_progress", True))),
    "--config.modality_overrides.MRI.dip.num_steps=6",
    "--config.modality_overrides.MRI.udigdip.num_outer=3",
    "--config.modality_overrides.MRI.udigdip.inner_steps=2",
    "--config.modality_overrides.MRI.udigdip.purify_stop=3",
    "--config.modality_overrides.MRI.aseqdip.num_outer=3",
    "--config.modality_overrides.MRI.aseqdip.inner_steps=2",
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
    return json.loads((_slice_dir(run_dir, solver, slice_name) / "result.json").read_text())["extra"]


def test_batch_size_matches_one_at_a_time(batch_runs):
    one, two = batch_runs[1].run_dir, batch_runs[2].run_dir
    names = [_slice_name("MRI-multi", i) for i in range(3)]
    # same rows and the same files
    key = lambda r: (r["solver"], r["slice"])  # noqa: E731
    rows1, rows2 = sorted(_rows(one), key=key), sorted(_rows(two), key=key)
    assert [key(r) for r in rows1] == [key(r) for r in rows2] == sorted(
        (s, n) for s in BATCH_SOLVERS for n in names)
    files = lambda d: sorted(str(p.relative_to(d)) for p in (d / "slices").rglob("*") if p.is_file())  # noqa: E731
    assert files(one) == files(two)
    assert json.loads((two / "config.json").read_text())["batch_size"] == 2
    for a, b in zip(rows1, rows2):
        s, sl = key(a)
        ra = np.load(_slice_dir(one, s, sl) / "recon.npy")
        rb = np.load(_slice_dir(two, s, sl) / "recon.npy")
        if sl == names[2]:
            # the chunk's lone slice: the one-at-a-time path, bit for bit
            assert ra.tobytes() == rb.tobytes(), (s, sl)
            assert "batch_size" not in _extra(two, s, sl)
            continue
        ex = _extra(two, s, sl)
        assert ex["batch_size"] == 2 and ex["batch_slices"] == names[:2]
        assert ("perf" in ex) == (s != "dds")      # config.perf belongs to the batched DIP only
        # each slice of the batch gets the batch's time / 2
        assert float(b["seconds"]) == pytest.approx(ex["batch_seconds"] / 2, rel=1e-9)
        with open(_slice_dir(one, s, sl) / "curves.csv", newline="") as f1, \
                open(_slice_dir(two, s, sl) / "curves.csv", newline="") as f2:
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
    assert "one slice at a time" not in out


def test_resume_with_batches_runs_only_missing_slices(batch_runs, tmp_path):
    """An interrupted batched run (only slice 0 finished) resumed with --batch_size=3: the chunk
    [0, 1, 2] runs one batched solve over slices 1 and 2; slice 0 is not touched."""
    src = batch_runs[2].run_dir
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    names = [_slice_name("MRI-multi", i) for i in range(3)]
    for s in BATCH_SOLVERS:
        for sl in names[1:]:
            shutil.rmtree(_slice_dir(run_dir, s, sl))
    rows = [r for r in _rows(run_dir) if r["slice"] == names[0]]
    with open(run_dir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    before = {s: _file_state(_slice_dir(run_dir, s, names[0])) for s in BATCH_SOLVERS}

    r = Run([f"--workdir={tmp_path}", *BATCH_TINY, "--batch_size=3", f"--resume={run_dir}"],
            tmp_path.parent / f"{tmp_path.name}_resume.txt").ok()
    assert r.run_dir == run_dir
    assert sorted((x["solver"], x["slice"]) for x in _rows(run_dir)) == sorted(
        (s, n) for s in BATCH_SOLVERS for n in names)
    for s in BATCH_SOLVERS:
        assert _file_state(_slice_dir(run_dir, s, names[0])) == before[s]
        assert f"skip {s} / {names[0]}" in r.output
        for sl in names[1:]:
            assert all((_slice_dir(run_dir, s, sl) / f).is_file() for f in SLICE_FILES)
            ex = _extra(run_dir, s, sl)
            assert ex["batch_size"] == 2 and ex["batch_slices"] == names[1:]
    for s in BATCH_SOLVERS:
        assert f"{s}: 2 slices in one batched solve" in r.output
    assert json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def bad_batch_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_batch")
    cases = {"zero": "--batch_size=0", "negative": "--batch_size=-1", "config": "--config.batch_size=0"}
    out = {k: (Run([f"--workdir={tmp / k}", *TINY, "--deg=SV-CT", "--solver=dds", a], tmp / f"{k}.txt"),
               tmp / k) for k, a in cases.items()}
    yield out
    for run, _ in out.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.wait()


@pytest.mark.parametrize("case", ["zero", "negative", "config"])
def test_bad_batch_size_clear_error(bad_batch_runs, case):
    run, workdir = bad_batch_runs[case]
    run.wait()
    assert run.rc != 0
    assert "batch_size" in run.output and ">= 1" in run.output, run.output[-2000:]
    assert "Traceback" not in run.output, run.output[-3000:]
    assert not workdir.exists() or not any(workdir.iterdir())


# ------------------------------------------------------------- 7. CUDA graphs (config.perf.cuda_graph)
_ROUTING_SCRIPT = r"""
import ml_collections
import main as M
from solvers.perf import parse_graph_mode

calls = []
M.prepare_slice = lambda cfg, deg, s, dev, seed: ("job", s, seed)
M.solve_batch = lambda cfg, jobs, name, *a: calls.append(("batch", name, len(jobs)))
M.solve_one = lambda cfg, job, name, *a: calls.append(("one", name, 1))

class RD:
    def is_done(self, *a):
        return False

cfg = ml_collections.ConfigDict({"seed": 0, "perf": {"cuda_graph": "auto"}})
assert not M.graph_path(cfg, "udigdip", "cpu")          # auto: off on CPU
for graphs in (True, False):
    calls.clear()
    M.graph_path = lambda cfg, name, dev, g=graphs: g and name in M.PERF_SOLVERS
    M.run_chunk(cfg, "MRI-multi", [(0, type("S", (), {"name": "a"})())], ["udigdip", "dds", "sgdip"],
                None, "cpu", RD())
    want = [("batch" if graphs else "one", "udigdip", 1), ("one", "dds", 1), ("batch" if graphs else "one", "sgdip", 1)]
    assert calls == want, (graphs, calls)
assert [parse_graph_mode(v) for v in (True, "ON", "false", "auto", 0)] == ["on", "on", "off", "auto", "off"]
try:
    parse_graph_mode("maybe")
    raise SystemExit("no error for a bad value")
except ValueError as e:
    assert "cuda_graph" in str(e)
print("ROUTING OK")
"""


def test_cuda_graph_routing_sends_single_slices_to_the_batched_solver():
    """Where CUDA graphs apply (``main.graph_path``; "auto" = CUDA only), the DIP solvers go
    through the batched solver even for a chunk of one slice; other solvers, and every solver
    without graphs, one at a time.  (A subprocess: main's absl flags must not meet train's.)"""
    out = subprocess.run([PY, "-c", _ROUTING_SCRIPT], cwd=ROOT, env=_env(), capture_output=True, text=True,
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
