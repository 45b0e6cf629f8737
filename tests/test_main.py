"""End-to-end tests of ``main.py`` / ``run_lib.py``: run folders, metrics, determinism, resume, errors.

``main.py`` is driven as a subprocess (``python main.py ...``) so absl flag state never leaks
between tests.  Every run is tiny (64² shipped samples, shipped demo priors, 2 outer uDiG-DIP
iterations with an 8-channel DIP U-Net, 2 DDS NFE, 1 slice) and the independent runs of a
module are started together (one thread each) to keep the wall-clock time down.  The full
no-flag demo is ``@pytest.mark.slow``.  Batched runs: ``tests/test_main_batches.py``.
"""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.main_runs import (PY, ROOT, SLICE_FILES, SOLVERS, TINY, Finished, Run, file_state, main_args, metrics_rows,
                             ref_image, run_all, run_env, slice_dir, slice_key)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------- shared tiny runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The independent tiny runs of this module, started at once (lazily waited on)."""
    base = tmp_path_factory.mktemp("main_runs")
    logs = tmp_path_factory.mktemp("main_logs")
    same = base / "same"     # two identical commands → two folders, identical results
    r = {
        "mri_a": Run(main_args(same, "--deg=MRI-multi", "--solver=udigdip,dds", "--name=same",
                                "--seed=0"), logs / "mri_a.txt"),
        "mri_b": Run(main_args(same, "--deg=MRI-multi", "--solver=udigdip,dds", "--name=same",
                                "--seed=0"), logs / "mri_b.txt"),
        "mri_seed1": Run(main_args(base / "seed1", "--deg=MRI-multi", "--solver=udigdip,dds",
                                    "--name=same", "--seed=1"), logs / "mri_seed1.txt"),
        "ct": Run(main_args(base / "ct", "--deg=SV-CT", "--solver=udigdip,dds", "--name=ct"),
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
    slice_name = slice_key(deg)

    # metrics.csv: exactly one row per (solver, slice), headline and oracle columns separate
    rows = metrics_rows(run_dir)
    assert sorted((r["solver"], r["slice"]) for r in rows) == sorted(
        (s, slice_name) for s in SOLVERS)
    with open(run_dir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert list(header[:len(METRIC_COLUMNS)]) == list(METRIC_COLUMNS)
    assert {"psnr", "oracle_best_psnr", "oracle_best_iter"} <= set(header)
    for r in rows:
        assert r["deg"] == deg and r["run"] == run_dir.name

    ref = ref_image(deg)
    for r in rows:
        d = slice_dir(run_dir, r["solver"], slice_name)
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
    # the command line wins over the demo config file's per-modality values (60 / 100 outer
    # iterations there): they are gone from the saved config, and the run took K·N = 2 steps
    from configs.demo import get_config as demo_config

    demo = demo_config()
    for m in ("MRI", "CT"):
        assert not {"num_outer", "inner_steps", "purify_stop"} & set(cfg["modality_overrides"][m]["udigdip"])
        # the others stay as the config file has them
        assert cfg["modality_overrides"][m]["udigdip"]["lam"] == demo.modality_overrides[m]["udigdip"]["lam"]
    with open(slice_dir(run_dir, "udigdip", slice_name) / "curves.csv", newline="") as f:
        assert [int(float(c["step"])) for c in csv.DictReader(f)] == [1, 2]
    assert list(cfg["solver_cfg"]["udigdip"]["net"]["channels"]) == [8, 8, 8, 8]
    assert cfg["data"]["max_slices"] == 1
    meta = json.loads((run_dir / "meta.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    if head:
        assert meta["git"]["commit"] == head
    assert "dirty" in meta["git"]


@pytest.mark.parametrize("key,deg", [("mri_a", "MRI-multi"), ("ct", "SV-CT")])
def test_metrics_csv_matches_an_independent_computation(runs, key, deg):
    """The PSNR / SSIM / NMSE in metrics.csv equal what scikit-image and numpy compute from the
    files alone — the run's recon.npy and the shipped sample it reconstructs, read with np.load —
    in the fastMRI convention (magnitudes, data_range = max of the reference, 7×7 SSIM), with no
    project code (utils.metrics, utils.data) in the loop."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    def magnitude(a):
        return np.abs(a).astype(np.float64) if np.iscomplexobj(a) else a.astype(np.float64)

    run_dir = runs[key].run_dir
    rows = metrics_rows(run_dir)
    assert sorted(r["solver"] for r in rows) == sorted(SOLVERS)
    for r in rows:
        volume, stem = r["slice"].removeprefix(f"{deg}_").split("/")
        sample = ROOT / "indist_samples" / (f"MRI/{volume}/slice" if deg == "MRI-multi" else f"CT/{volume}")
        ref = magnitude(np.load(sample / f"{stem}.npy"))
        rec = magnitude(np.load(slice_dir(run_dir, r["solver"], r["slice"]) / "recon.npy"))
        assert rec.shape == ref.shape
        dr = ref.max()
        psnr = peak_signal_noise_ratio(ref, rec, data_range=dr)
        assert psnr == pytest.approx(10 * np.log10(dr ** 2 / np.mean((rec - ref) ** 2)), abs=1e-9)
        assert float(r["psnr"]) == pytest.approx(psnr, abs=1e-4), r["solver"]
        assert float(r["ssim"]) == pytest.approx(structural_similarity(ref, rec, win_size=7, data_range=dr),
                                                 abs=1e-5), r["solver"]
        assert float(r["nmse"]) == pytest.approx(np.sum((rec - ref) ** 2) / np.sum(ref ** 2), rel=1e-5)


# ---------------------------------------------------------------------------- 2. determinism
def test_same_command_is_bit_identical_and_seed_changes_result(runs):
    a, b, c = runs["mri_a"].run_dir, runs["mri_b"].run_dir, runs["mri_seed1"].run_dir
    slice_name = slice_key("MRI-multi")
    for s in SOLVERS:
        ra = np.load(slice_dir(a, s, slice_name) / "recon.npy")
        rb = np.load(slice_dir(b, s, slice_name) / "recon.npy")
        rc = np.load(slice_dir(c, s, slice_name) / "recon.npy")
        assert ra.dtype == rb.dtype and ra.tobytes() == rb.tobytes(), f"{s}: not bit-identical"
        assert not np.array_equal(ra, rc), f"{s}: --seed=1 gave the same reconstruction"
    keys = ("solver", "deg", "slice", "psnr", "ssim", "nmse", "input_psnr", "input_ssim",
            "oracle_best_psnr", "oracle_best_iter")
    rows_a = sorted(tuple(r[k] for k in keys) for r in metrics_rows(a))
    rows_b = sorted(tuple(r[k] for k in keys) for r in metrics_rows(b))
    assert rows_a == rows_b


@pytest.fixture(scope="module")
def priors():
    from models.priors import load_prior

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
    from utils.run_log import MetricsCallback

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
        assert len(metrics_rows(d)) == len(SOLVERS)
        assert (d / "meta.json").is_file()


def test_resume_skips_finished_slices(runs, tmp_path):
    src = runs["mri_a"].run_dir
    workdir = tmp_path / "resume_root"
    run_dir = workdir / src.name
    shutil.copytree(src, run_dir)  # copy2: mtimes preserved; an "interrupted" 1-of-2-slice run
    first = slice_key("MRI-multi", 0)
    second = slice_key("MRI-multi", 1)
    before = {s: file_state(slice_dir(run_dir, s, first)) for s in SOLVERS}
    old_rows = {r["solver"]: r for r in metrics_rows(run_dir)}

    args = main_args(workdir, "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=0",
                      f"--resume={run_dir}", "--max_slices=2")
    r = Run(args, tmp_path / "resume.txt").ok()
    assert r.run_dir == run_dir
    assert [p for p in workdir.iterdir()] == [run_dir], "resume created a new run folder"

    rows = metrics_rows(run_dir)
    for s in SOLVERS:
        mine = [x for x in rows if x["solver"] == s]
        assert sorted(x["slice"] for x in mine) == sorted([first, second]), rows
        # the finished slice was neither recomputed nor rewritten
        assert file_state(slice_dir(run_dir, s, first)) == before[s]
        row1 = next(x for x in mine if x["slice"] == first)
        assert {k: row1[k] for k in ("psnr", "ssim", "seconds")} == \
            {k: old_rows[s][k] for k in ("psnr", "ssim", "seconds")}
        d2 = slice_dir(run_dir, s, second)
        assert all((d2 / f).is_file() for f in SLICE_FILES)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(g["n"] == 2 for g in summary["groups"])
    meta = json.loads((run_dir / "meta.json").read_text())
    assert len(meta.get("resumes", [])) == 1


def test_resume_as_in_the_readme_recomputes_what_is_missing(runs, tmp_path):
    """``python main.py --resume=<run>`` and nothing else (the README's example) finishes a run with
    its stored config: a slice whose folder is gone and a slice whose ``DONE`` has no
    ``result.json`` are both computed again — bit-identical to the first time — and both are in
    metrics.csv (nothing is dropped silently)."""
    src = runs["mri_a"].run_dir
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    sl = slice_key("MRI-multi")
    (slice_dir(run_dir, "udigdip", sl) / "result.json").unlink()           # DONE without result.json
    shutil.rmtree(slice_dir(run_dir, "dds", sl))                            # an unfinished slice
    r = Run([f"--resume={run_dir}"], tmp_path.parent / f"{tmp_path.name}_readme.txt").ok()
    assert r.run_dir == run_dir and sorted(p.name for p in tmp_path.iterdir()) == [run_dir.name]
    assert "DONE marker without a readable result.json" in r.output
    rows = metrics_rows(run_dir)
    assert sorted((x["solver"], x["slice"]) for x in rows) == sorted((s, sl) for s in SOLVERS)
    for s in SOLVERS:
        d = slice_dir(run_dir, s, sl)
        assert all((d / f).is_file() for f in SLICE_FILES)
        assert np.load(d / "recon.npy").tobytes() == np.load(slice_dir(src, s, sl) / "recon.npy").tobytes(), s
    assert json.loads((run_dir / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert len(json.loads((run_dir / "meta.json").read_text()).get("resumes", [])) == 1


def test_resume_with_different_config_is_refused(runs, tmp_path):
    src = runs["mri_a"].run_dir
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    before = file_state(run_dir)
    args = main_args(tmp_path, "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=5",
                      f"--resume={run_dir}", "--max_slices=2")
    r = Run(args, tmp_path.parent / f"{tmp_path.name}_refused.txt").wait()
    assert r.rc != 0
    assert "config differs" in r.output and "seed" in r.output, r.output[-2000:]
    assert "Traceback" not in r.output
    assert file_state(run_dir) == before  # nothing written into the run


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
    cases = {}
    for name, (extra, _) in ERROR_CASES.items():
        if name == "cuda_missing" and torch.cuda.is_available():
            continue
        args = [a.format(tmp=tmp, nan=nan) for a in extra]
        # TINY comes first so the case's own flags win (e.g. purify_stop)
        cases[name] = [f"--workdir={tmp / f'work_{name}'}", *TINY, *args]
    return {name: (Finished(done), tmp / f"work_{name}") for name, done in run_all(cases).items()}


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
    from models.priors import get_prior_config
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
        assert p.checkpoint == f"models/priors/{name}.pt" and name.endswith(f"_{modality.lower()}_64")
        assert (ROOT / p.checkpoint).is_file()                 # shipped with the repository
        assert bool(p.is_complex) == (modality == "MRI")
        assert p.model.image_size == 64 == ref_image(
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
    rows = metrics_rows(run_dir)
    degs = [d.strip() for d in cfg.deg.split(",")]
    names = [s.strip() for s in cfg.solvers.split(",")]
    assert sorted((x["solver"], x["deg"]) for x in rows) == sorted(
        (s, d) for s in names for d in degs)
    for x in rows:
        assert math.isfinite(float(x["psnr"])) and math.isfinite(float(x["input_psnr"]))
        d = slice_dir(run_dir, x["solver"], x["slice"])
        assert all((d / f).is_file() for f in SLICE_FILES)
    assert (run_dir / "summary.json").is_file()


@pytest.mark.slow
def test_default_demo_udigdip_beats_its_input(demo_run):
    """Quality check of the demo: uDiG-DIP's final iterate beats zero-filled / FBP."""
    for x in metrics_rows(demo_run.run_dir):
        if x["solver"] == "udigdip":
            assert float(x["psnr"]) > float(x["input_psnr"]), x


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(runs, tmp_path):
    """Slice 2 of a resumed run is bit-identical to slice 2 of a 2-slice run from scratch."""
    fresh = Run(main_args(tmp_path / "fresh", "--deg=MRI-multi", "--solver=udigdip,dds",
                           "--seed=0", "--max_slices=2"), tmp_path / "fresh.txt").ok().run_dir
    src = runs["mri_a"].run_dir
    resumed = tmp_path / "resumed" / src.name
    shutil.copytree(src, resumed)
    Run(main_args(tmp_path / "resumed", "--deg=MRI-multi", "--solver=udigdip,dds", "--seed=0",
                   f"--resume={resumed}", "--max_slices=2"), tmp_path / "resumed.txt").ok()
    for i in (0, 1):
        sl = slice_key("MRI-multi", i)
        for s in SOLVERS:
            a = np.load(slice_dir(fresh, s, sl) / "recon.npy")
            b = np.load(slice_dir(resumed, s, sl) / "recon.npy")
            assert a.tobytes() == b.tobytes(), (s, sl)


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(tmp_path):
    """Slices sharded over 2 torchrun ranks (CPU, gloo) land in ONE run folder whose metrics and
    reconstructions equal a single-process run (each slice's seed follows its name)."""
    args = ["--config=configs/demo_mri.py", "--solver=dds", "--config.solver_cfg.dds.nfe=3",
            "--config.solver_cfg.dds.progress=False", "--max_slices=3", f"--workdir={tmp_path}"]
    torchrun = Path(PY).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "main.py", *args, "--name=two"],
                         cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single = Run([*args, "--name=one"], tmp_path / "one.log").run_dir
    two = Path(re.findall(r"^run folder: (.+)$", out.stdout, flags=re.M)[-1].strip())
    rows_two, rows_one = metrics_rows(two), metrics_rows(single)
    assert len(rows_two) == len(rows_one) == 3
    key = lambda r: r["slice"]
    for a, b in zip(sorted(rows_two, key=key), sorted(rows_one, key=key)):
        assert a["slice"] == b["slice"] and float(a["psnr"]) == float(b["psnr"])
        assert np.array_equal(np.load(slice_dir(two, "dds", a["slice"]) / "recon.npy"),
                              np.load(slice_dir(single, "dds", b["slice"]) / "recon.npy"))
    assert json.loads((two / "summary.json").read_text())
