"""The sweep scripts (eval_MRI_multi.sh, eval_SVCT_2d.sh, eval_common.sh) and the combined table
(utils/sweep_table.py): the dry run prints exactly the sweep's commands and builds nothing; the
table's numbers are the per-setting means / standard deviations of the runs' metrics.csv; one tiny
real sweep end to end."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.main_runs import ROOT, run_env
from utils.fileio import read_csv, write_csv
from utils.sweep_table import main as sweep_main

BASH = "/bin/bash"


def script(name, *args, **env):
    e = run_env()
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run([BASH, str(ROOT / name), *args], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=600)


def commands(out: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if not line.startswith("===") and line.strip()]


def flag(cmd, name):
    hits = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--{name}=")]
    assert len(hits) == 1, (name, cmd)
    return hits[0]


def test_mri_dry_run_prints_the_sweep_and_builds_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    r = script("eval_MRI_multi.sh", "configs/demo_mri.py", "indist_samples", "--max_slices=1",
               DRY_RUN=1, MASKS="uniform1d gaussian1d", ACCS="4 8", NOISES="none relative:0.05",
               SOLVERS="cgsense,tv", SWEEP_DIR=sweep)
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    runs, last = cmds[:-1], cmds[-1]
    assert len(runs) == 2 * 2 * 2
    settings = set()
    for c in runs:
        assert c[1] == "main.py" and c[-1] == "--max_slices=1"          # extra flags passed through
        assert flag(c, "workdir") == str(sweep) and flag(c, "solver") == "cgsense,tv"
        noise = flag(c, "config.physics.noise")
        level = flag(c, "config.physics.noise_level") if noise == "relative" else None
        assert (noise, level) in {("none", None), ("relative", "0.05")}
        settings.add((flag(c, "config.physics.mask"), flag(c, "config.physics.acceleration"), noise))
        assert flag(c, "name").startswith(f"mri_{flag(c, 'config.physics.mask')}_")
    assert len(settings) == 8 and len({flag(c, "name") for c in runs}) == 8
    assert last[1:] == ["-m", "utils.sweep_table", str(sweep)]
    assert not sweep.exists()                                           # nothing was built


def test_ct_dry_run_limited_angle_and_poisson(tmp_path):
    r = script("eval_SVCT_2d.sh", DRY_RUN=1, VIEWS="18 30", NOISES="poisson:1e4 gaussian:0.5", DEG="LA-CT",
               ANGLE=120, SWEEP_DIR=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    runs = commands(r.stdout)[:-1]
    assert [(flag(c, "config.physics.num_views"), flag(c, "config.physics.noise")) for c in runs] == [
        ("18", "poisson"), ("30", "poisson"), ("18", "gaussian"), ("30", "gaussian")]
    assert {flag(c, "deg") for c in runs} == {"LA-CT"} and {flag(c, "config.physics.angle_range") for c in runs} == {"120"}
    assert flag(runs[0], "config.physics.I0") == "1e4" and flag(runs[2], "config.physics.noise_sigma") == "0.5"
    assert flag(runs[0], "name") == "ct_LA-CT_18v_poisson1e4"


def test_ct_dry_run_sparse_view_passes_no_arc(tmp_path):
    r = script("eval_SVCT_2d.sh", DRY_RUN=1, VIEWS="16", NOISES="none", ANGLE=120, SWEEP_DIR=tmp_path / "s")
    assert r.returncode == 0, r.stderr
    (run,) = commands(r.stdout)[:-1]
    assert flag(run, "deg") == "SV-CT" and not any("angle_range" in a for a in run)   # SV-CT spans 180°


@pytest.mark.parametrize("noises,match", [("laplace:1", "unknown NOISES entry"), ("relative", "needs a value")])
def test_bad_noise_entry_stops_before_running(tmp_path, noises, match):
    r = script("eval_MRI_multi.sh", DRY_RUN=1, NOISES=noises, SWEEP_DIR=tmp_path / "s")
    assert r.returncode != 0 and match in r.stderr
    assert "main.py" not in r.stdout


def test_existing_sweep_folder_is_refused(tmp_path):
    r = script("eval_SVCT_2d.sh", SWEEP_DIR=tmp_path, PY="/bin/false")
    assert r.returncode != 0 and "exists" in r.stderr and "main.py" not in r.stdout


# ---------------------------------------------------------------------------------- the table
def _fake_run(folder: Path, physics: dict, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"deg": "MRI-multi", "physics": physics}))
    write_csv(folder / "metrics.csv", rows)


def _row(solver, sl, psnr, ssim, sec, inp):
    return {"solver": solver, "deg": "MRI-multi", "slice": sl, "psnr": psnr, "ssim": ssim, "seconds": sec,
            "input_psnr": inp, "input_ssim": inp / 100}


def test_sweep_table_means_and_stds(tmp_path):
    base = {"mask": "uniform1d", "acceleration": 4.0}
    _fake_run(tmp_path / "a_clean", {**base, "noise": "none"},
              [_row("tv", "s0", 20.0, 0.5, 1.0, 15.0), _row("cgsense", "s0", 18.0, 0.4, 0.1, 15.0),
               _row("tv", "s1", 22.0, 0.7, 3.0, 17.0), _row("cgsense", "s1", 19.0, 0.6, 0.3, 17.0)])
    _fake_run(tmp_path / "b_noisy", {**base, "noise": "relative", "noise_level": 0.05},
              [_row("tv", "s0", 19.0, 0.45, 2.0, 14.0)])
    (tmp_path / "not_a_run").mkdir()
    assert sweep_main([str(tmp_path)]) == 0
    table = read_csv(tmp_path / "sweep.csv")
    key = [(r["noise"], r["method"]) for r in table]
    assert key == [("none", "zero-filled (input)"), ("none", "tv"), ("none", "cgsense"),
                   ("relative 0.05", "zero-filled (input)"), ("relative 0.05", "tv")]
    assert {r["setting"] for r in table} == {"uniform1d 4×"}
    tv = table[1]
    assert tv["n"] == 2 and tv["psnr_mean"] == pytest.approx(21.0) and tv["psnr_std"] == pytest.approx(1.0)
    assert tv["ssim_mean"] == pytest.approx(0.6) and tv["seconds_mean"] == pytest.approx(2.0)
    assert tv["seconds_std"] == pytest.approx(np.std([1.0, 3.0]))
    inp = table[0]                                          # the input over the 2 distinct slices
    assert inp["n"] == 2 and inp["psnr_mean"] == pytest.approx(16.0) and inp["seconds_mean"] is None
    assert table[4]["n"] == 1 and table[4]["psnr_std"] == 0
    md = (tmp_path / "sweep.md").read_text()
    assert "| MRI-multi | uniform1d 4× | none | tv | 2 | 21.00 ± 1.00 | 0.6000 ± 0.1000 | 2.00 ± 1.00 |" in md
    # nothing is overwritten without --overwrite; a missing folder is a one-line error
    assert sweep_main([str(tmp_path)]) == 2
    assert sweep_main([str(tmp_path), "--overwrite"]) == 0
    assert sweep_main([str(tmp_path / "not_a_run")]) == 2


def test_tiny_real_sweep_end_to_end(tmp_path):
    """Two settings (noiseless, 5 % relative noise) of one solver on one shipped slice: two run
    folders and one table in which noise costs CG-SENSE PSNR."""
    sweep = tmp_path / "sweep"
    r = script("eval_MRI_multi.sh", "configs/demo_mri.py", "indist_samples", "--max_slices=1", "--device=cpu",
               "--config.solver_cfg.cgsense.progress=False", MASKS="uniform1d", ACCS="4",
               NOISES="none relative:0.05", SOLVERS="cgsense", SWEEP_DIR=sweep)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert len([p for p in sweep.iterdir() if p.is_dir()]) == 2
    table = {(row["noise"], row["method"]): row for row in read_csv(sweep / "sweep.csv")}
    assert set(table) == {("none", "zero-filled (input)"), ("none", "cgsense"),
                          ("relative 0.05", "zero-filled (input)"), ("relative 0.05", "cgsense")}
    assert table[("none", "cgsense")]["psnr_mean"] > table[("relative 0.05", "cgsense")]["psnr_mean"]
    assert table[("none", "cgsense")]["psnr_mean"] > table[("none", "zero-filled (input)")]["psnr_mean"] + 2
    assert "combined table:" in r.stdout and os.path.isfile(sweep / "sweep.md")
