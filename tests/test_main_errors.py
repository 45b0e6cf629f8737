"""Bad command lines, table-driven: each ends in ONE line ``main.py: error: ...`` naming what to
change (exit status 2), with no traceback, no flag-help dump and no run folder (nothing written).

Every case runs ``main.py`` in a fresh process (tests/cli_batch.py: forked from one that imported
torch once, so absl flag state never leaks); they fail before any reconstruction, two at a time.  The cases of tests/test_main.py (``ERROR_CASES``) and
tests/test_main_batches.py (batch size, perf values) check the same properties."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.main_runs import ROOT, run_all

CT_DICOM = ROOT / "tests" / "data" / "ct_hu_128.dcm"

#: name → (arguments, substrings the error line must contain); {tmp}, {file}, ... are filled in
#: by the fixture.  Every invalid value the documentation lists (docs/errors.md) has a case.
CASES = {
    # --config.physics.*
    "acceleration_negative": (["--deg=MRI-multi", "--solver=aseqdip", "--config.physics.acceleration=-4"],
                              ["--config.physics.acceleration", "[1, 1024]", "-4"]),
    "acceleration_zero": (["--deg=MRI-multi", "--solver=aseqdip", "--config.physics.acceleration=0"],
                          ["--config.physics.acceleration", "[1, 1024]"]),
    "acceleration_above_width": (["--deg=MRI-multi", "--solver=aseqdip", "--config.physics.acceleration=1000"],
                                 ["--config.physics.", "acceleration 1000", "no column to sample for W=64"]),
    "num_views_zero": (["--deg=SV-CT", "--solver=aseqdip", "--config.physics.num_views=0"],
                       ["--config.physics.num_views", "[1, 10000]"]),
    "center_fraction": (["--deg=MRI-multi", "--solver=aseqdip", "--config.physics.center_fraction=1.5"],
                        ["--config.physics.center_fraction", "[0, 1]"]),
    "mask_misspelt": (["--deg=MRI-multi", "--solver=aseqdip", "--config.physics.mask=uniform_1d"],
                      ["--config.physics.", "unknown mask name 'uniform_1d'", "uniform1d", "gaussian1d"]),
    "la_ct_angle_zero": (["--deg=LA-CT", "--solver=aseqdip", "--config.physics.angle_range=0"],
                         ["--config.physics.angle_range", "(0, 180)"]),
    "noise_negative": (["--deg=SV-CT", "--solver=aseqdip", "--config.physics.noise_sigma=-0.1"],
                       ["--config.physics.noise_sigma", ">= 0"]),
    "noise_nan": (["--deg=SV-CT", "--solver=aseqdip", "--config.physics.noise_sigma=nan"],
                  ["--config.physics.noise_sigma", "finite", "nan"]),
    # --config.solver_cfg.* / modality_overrides
    "t_start_above_999": (["--deg=SV-CT", "--solver=udigdip", "--config.solver_cfg.udigdip.t_start=1000"],
                          ["udigdip", "t_start must be in [0, 999]", "--config.solver_cfg.udigdip"]),
    "lr_negative": (["--deg=SV-CT", "--solver=aseqdip", "--config.solver_cfg.aseqdip.lr=-0.001"],
                    ["aseqdip", "lr must be a finite number in (0, 10]"]),
    "dds_nfe_zero": (["--deg=SV-CT", "--solver=dds", "--config.solver_cfg.dds.nfe=0"],
                     ["dds", "nfe must be an integer >= 1"]),
    "dds_nfe_above_1000": (["--deg=SV-CT", "--solver=dds", "--config.solver_cfg.dds.nfe=1001"],
                           ["dds", "nfe must be in [1, 1000]"]),
    "lam_nan": (["--deg=MRI-multi", "--solver=udigdip", "--config.solver_cfg.udigdip.lam=nan"],
                ["udigdip", "lam must be a finite number >= 0, got nan"]),
    "dip_num_steps_zero": (["--deg=SV-CT", "--solver=dip", "--config.solver_cfg.dip.num_steps=0"],
                           ["'dip'", "num_steps must be an integer >= 1"]),
    "dip_num_steps_negative_per_modality": (
        ["--deg=MRI-multi", "--solver=dip", "--config.modality_overrides.MRI.dip.num_steps=-3"],
        ["--config.modality_overrides.MRI.dip", "num_steps must be an integer >= 1"]),
    "mri_only_solver_on_ct": (["--deg=SV-CT", "--solver=l1wavelet"],
                              ["'l1wavelet' reconstructs MRI only", "--solver"]),
    "scoremri_on_ct": (["--deg=MRI-multi,SV-CT", "--solver=scoremri"], ["'scoremri' reconstructs MRI only"]),
    "poisson_noise_for_mri": (["--deg=MRI-multi", "--solver=cgsense", "--config.physics.noise=poisson"],
                              ["--config.physics.noise=poisson models CT"]),
    "mcg_alpha_negative": (["--deg=SV-CT", "--solver=mcg", "--config.solver_cfg.mcg.alpha=-1"],
                           ["mcg", "alpha must be a finite number >= 0"]),
    "tv_iterations_zero": (["--deg=SV-CT", "--solver=tv", "--config.solver_cfg.tv.num_iters=0"],
                           ["tv", "num_iters must be an integer in [1, 100000]"]),
    # data
    "mri_given_ct_npy": (["--deg=MRI-multi", "--solver=aseqdip", "--data={ct_npy}"],
                         ["AAPM-style CT .npy", "MRI", "--data", "--deg"]),
    "max_slices_negative": (["--deg=SV-CT", "--solver=aseqdip", "--max_slices=-1"],
                            ["--max_slices must be an integer >= 0", "-1"]),
    "missing_maps": (["--deg=MRI-multi", "--solver=aseqdip", "--data={no_maps}"],
                     ["sensitivity maps", "--config.data.require_maps=False"]),
    "empty_folder": (["--deg=SV-CT", "--solver=aseqdip", "--data={empty}"], ["empty folder", "--data"]),
    "dds_without_modality": (["--deg=MRI-multi", "--solver=aseqdip", "--data={ct_dds}"],
                             ["DDS sample folder with CT/ but no MRI/ sub-folder", "--data", "--deg"]),
    "size_differs_from_prior": (["--deg=SV-CT", "--solver=dds", f"--data={CT_DICOM}"],
                                ["expects 64×64", "128×128", "--config.data.image_size=64"]),
    "one_slice_size_differs": (["--deg=SV-CT", "--solver=dds", "--data={mixed}", "--max_slices=0"],
                               ["expects 64×64", "vol/001", "128×128", "--config.data.image_size=64"]),
    "image_size_wrong_for_prior": (["--deg=SV-CT", "--solver=dds", "--config.data.image_size=32"],
                                   ["expects 64×64", "--config.data.image_size=32", "--config.data.image_size=64"]),
    "hu_npy_read_as_unit": (["--deg=SV-CT", "--solver=aseqdip", "--data={hu_npy}"],
                            ["Hounsfield", "--config.data.units=hu"]),
    "image_size_too_small": (["--deg=SV-CT", "--solver=aseqdip", "--config.data.image_size=5"],
                             ["--config.data.image_size", "0 (as stored) or in [8, 4096]"]),
    "units_misspelt": (["--deg=SV-CT", "--solver=aseqdip", "--config.data.units=HU"],
                       ["--config.data.units must be one of unit, hu"]),
    "slices_unreadable": (["--deg=SV-CT", "--solver=aseqdip", "--data={hu_npy}", "--config.data.units=hu",
                           "--config.data.slices=1-3"], ["--config.data.slices", "10:20"]),
    # the run itself
    "workdir_is_a_file": (["--deg=SV-CT", "--solver=aseqdip", "--workdir={file}"], ["--workdir", "is a file"]),
    "workdir_under_a_file": (["--deg=SV-CT", "--solver=aseqdip", "--workdir={file}/runs"],
                             ["--workdir", "is a file"]),
    "config_missing": (["--config={tmp}/no_such_config.py"], ["--config=", "no_such_config.py",
                                                                "cannot load the config file"]),
    "config_broken": (["--config={broken}"], ["--config", "cannot load the config file", "SyntaxError"]),
    "config_field_misspelt": (["--config.solver_cfg.udigdip.num_outr=5"],
                              ["--config.solver_cfg.udigdip.num_outr", "no field 'num_outr'", "num_outer"]),
    "config_field_misspelt_with_file": (["--config=configs/demo_ct.py", "--config.physics.num_view=5"],
                                        ["--config.physics.num_view", "num_views"]),
    "config_value_wrong_type": (["--config.solver_cfg.udigdip.num_outer=2.5"],
                                ["--config.solver_cfg.udigdip.num_outer=2.5"]),
    "ckpt_is_a_folder": (["--deg=SV-CT", "--solver=dds", "--ckpt={tmp}"], ["--ckpt=", "is a folder"]),
    "seed_negative": (["--deg=SV-CT", "--solver=aseqdip", "--seed=-1"], ["--seed must be an integer in [0, 4294967295]"]),
    "seed_too_large": (["--deg=SV-CT", "--solver=aseqdip", "--seed=4294967296"],
                       ["--seed must be an integer in [0, 4294967295]"]),
    "seed_not_a_number": (["--seed=abc"], ["--seed=abc"]),
    "device_malformed": (["--deg=SV-CT", "--solver=aseqdip", "--device=gpu"], ["--device=gpu", "cpu, cuda"]),
    "resume_not_a_run": (["--resume={empty}"], ["--resume=", "no config.json"]),
    "solver_listed_twice": (["--deg=SV-CT", "--solver=dds,dds"], ["listed twice"]),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_errors")
    unit = np.load(ROOT / "indist_samples" / "CT" / "cranium" / "048.npy")
    paths = {"tmp": tmp, "file": tmp / "a_file", "empty": tmp / "empty", "ct_npy": tmp / "ct.npy",
             "hu_npy": tmp / "hu.npy", "no_maps": tmp / "no_maps", "ct_dds": tmp / "ct_dds", "mixed": tmp / "mixed",
             "broken": tmp / "broken_config.py"}
    paths["file"].write_text("not a folder")
    paths["empty"].mkdir()
    np.save(paths["ct_npy"], unit)
    np.save(paths["hu_npy"], np.stack([unit, unit]) * 3000.0 - 1000.0)
    (paths["no_maps"] / "MRI" / "v" / "slice").mkdir(parents=True)
    np.save(paths["no_maps"] / "MRI" / "v" / "slice" / "000.npy", np.ones((64, 64), np.complex64))
    (paths["ct_dds"] / "CT" / "v").mkdir(parents=True)
    np.save(paths["ct_dds"] / "CT" / "v" / "000.npy", unit)
    (paths["mixed"] / "CT" / "vol").mkdir(parents=True)
    np.save(paths["mixed"] / "CT" / "vol" / "000.npy", unit)
    np.save(paths["mixed"] / "CT" / "vol" / "001.npy", np.kron(unit, np.ones((2, 2))))
    paths["broken"].write_text("def get_config(:\n")
    cases = {}
    for name, (args, _) in CASES.items():
        filled = [a.format(**paths) for a in args]
        workdir = [] if any(a.startswith("--workdir") for a in filled) else [f"--workdir={tmp / ('work_' + name)}"]
        cases[name] = ["--device=cpu", *workdir, *filled]
    before = sorted(p.name for p in tmp.iterdir())
    out = run_all(cases, workers=2)
    return {"out": out, "tmp": tmp, "paths": paths, "before": before}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_command_line_gives_one_clear_line(results, case):
    proc = results["out"][case]
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"{case}: exit status {proc.returncode}\n{text[-3000:]}"
    assert "Traceback" not in text, f"{case}: traceback\n{text[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if line.startswith("main.py: error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), f"{case}: not one final error line\n{text}"
    for s in CASES[case][1]:
        assert s in errors[0], f"{case}: {s!r} not in {errors[0]!r}"
    # no usage / flag help dump before the message
    assert "flags:" not in text and "USAGE" not in text and "Run config (a configs/*.py file)" not in text, text
    assert len(text.splitlines()) < 15, f"{case}: {len(text.splitlines())} lines of output\n{text}"


def test_nothing_is_written(results):
    """No run folder (not even an empty workdir) after any refused command line, and the data
    folders were not touched."""
    tmp: Path = results["tmp"]
    assert sorted(p.name for p in tmp.iterdir()) == results["before"]
    assert not any(p.name.startswith("work_") for p in tmp.iterdir())
    assert list(results["paths"]["empty"].iterdir()) == []
