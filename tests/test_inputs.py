"""Input handling below the command line: resampling (utils/resample.py), CT units, the reader
choice and its messages, slice folders and seeds, value ranges of every numeric config field and
the library constructors' refusals.  (The command line itself: tests/test_main_errors.py.)"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.data import data_kind, load_dataset, load_dds_folder, load_fastmri_h5
from utils.resample import kspace_resample, resample_mri, resize_area

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize("n,N", [(64, 50), (64, 17), (64, 128), (37, 64), (128, 64)])
def test_area_resample_of_a_constant_is_that_constant(n, N):
    out = resize_area(np.full((n, n), 0.3141), N)
    assert out.shape == (N, N)
    np.testing.assert_allclose(out, 0.3141, rtol=0, atol=1e-12)


def test_non_square_slices_are_padded_to_a_square_before_resampling():
    """The aspect ratio is kept: a 64×32 CT slice becomes the 64×64 slice padded with its minimum
    (air) on both sides, then resampled; an MRI slice is zero-padded alike, maps too."""
    a = np.random.default_rng(1).random((64, 32)) + 0.2
    padded = np.full((64, 64), a.min())
    padded[:, 16:48] = a
    np.testing.assert_allclose(resize_area(a, 32), resize_area(padded, 32), atol=1e-12)
    x = torch.from_numpy(a).to(torch.complex64)
    xp = torch.zeros(64, 64, dtype=torch.complex64)
    xp[:, 16:48] = x
    torch.testing.assert_close(kspace_resample(x, 32), kspace_resample(xp, 32))
    _, mr = resample_mri(x, torch.ones(2, 64, 32, dtype=torch.complex64), 32)
    assert mr.shape == (2, 32, 32)
    assert float(mr[:, :, :6].abs().max()) == 0 and float(mr[:, :, 10:22].abs().min()) == 1  # support = the data


def test_area_resample_by_an_integer_factor_is_the_block_mean():
    a = np.random.default_rng(0).random((12, 12))
    np.testing.assert_allclose(resize_area(a, 4), a.reshape(4, 3, 4, 3).mean(axis=(1, 3)), atol=1e-12)


def _band_limited(n: int, freqs, amps) -> torch.Tensor:
    """``Σ a_f exp(2πi (f_y y + f_x x))`` sampled at the ``n × n`` pixel positions of one field of
    view (pixel ``j`` at ``(j − n//2)/n``), complex128."""
    pos = (torch.arange(n, dtype=torch.float64) - n // 2) / n
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    x = torch.zeros(n, n, dtype=torch.complex128)
    for (fy, fx), a in zip(freqs, amps):
        x = x + a * torch.exp(2j * math.pi * (fy * yy + fx * xx))
    return x


@pytest.mark.parametrize("n,N", [(96, 64), (97, 40), (64, 96), (80, 33)])
def test_kspace_resample_of_a_band_limited_image_is_exact(n, N):
    """An image with no k-space content outside the central N×N is resampled exactly: the result
    is the same function sampled on the N×N grid of the same field of view (same intensities)."""
    m = min(n, N) // 2        # frequencies inside both grids' band
    freqs = [(0, 0), (3, -5), (-7, 2), (m - 1, 1), (-m + 1, -m + 2)]
    amps = [0.7, 0.2 - 0.1j, 0.05j, 0.03, -0.02 + 0.01j]
    out = kspace_resample(_band_limited(n, freqs, amps), N)
    assert out.shape == (N, N)
    torch.testing.assert_close(out, _band_limited(N, freqs, amps), atol=1e-12, rtol=0)


def test_kspace_resample_keeps_a_constant_and_the_field_of_view():
    x = torch.full((80, 80), 0.25 + 0.5j, dtype=torch.complex64)
    torch.testing.assert_close(kspace_resample(x, 48), torch.full((48, 48), 0.25 + 0.5j), atol=1e-6, rtol=0)
    # a centred disc keeps its size relative to the field of view (same FOV, only the pixel size changes)
    yy, xx = np.mgrid[:128, :128]
    disc = torch.from_numpy((((yy - 64) ** 2 + (xx - 64) ** 2) < 32 ** 2).astype(np.complex64))
    small = kspace_resample(disc, 64).abs().numpy()
    assert abs(float((small > 0.5).mean()) - float(disc.abs().numpy().mean())) < 0.01


def _smooth_maps(n: int) -> torch.Tensor:
    """Two smooth, non-periodic coil maps on the ``n × n`` grid of one field of view (the pixel
    positions of ``_band_limited``)."""
    pos = (torch.arange(n, dtype=torch.float64) - n // 2) / n
    yy, xx = torch.meshgrid(pos, pos, indexing="ij")
    maps = [torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5) * torch.exp(1j * (1.3 * yy - 0.7 * xx))
            for cy, cx in ((-0.6, 0.1), (0.5, -0.4))]
    return torch.stack(maps).to(torch.complex64)


@pytest.mark.parametrize("n,N", [(64, 32), (64, 48), (40, 64)])
def test_resample_mri_maps_follow_the_image_grid_and_keep_their_support(n, N):
    """The maps are the same smooth functions sampled at the resampled image's pixel positions
    (no ringing at the borders of the field of view); maps that vanish outside the object stay
    zero outside it."""
    x = _band_limited(n, [(0, 0), (2, 3)], [0.5, 0.1]).to(torch.complex64)
    xr, mr = resample_mri(x, _smooth_maps(n), N)
    assert xr.shape == (N, N) and mr.shape == (2, N, N) and mr.dtype == torch.complex64
    torch.testing.assert_close(xr, _band_limited(N, [(0, 0), (2, 3)], [0.5, 0.1]).to(torch.complex64),
                               atol=1e-5, rtol=0)
    err = (mr - _smooth_maps(N)).abs()
    assert float(err[:, :-1, :-1].max()) < 4e-3     # bilinear error of smooth maps
    assert float(err.max()) < 0.02                  # the last row/column of an up-sampling lies beyond the input
    pos = lambda k: (torch.arange(k, dtype=torch.float64) - k // 2) / k  # noqa: E731
    disc = lambda k: (pos(k)[:, None] ** 2 + pos(k)[None] ** 2) < 0.35 ** 2  # noqa: E731
    _, mr2 = resample_mri(x, _smooth_maps(n) * disc(n), N)
    support = (mr2.abs() ** 2).sum(0) > 0
    assert float((support != disc(N)).float().mean()) < 0.03        # only boundary pixels may differ


# ---------------------------------------------------------------------------- readers and units
def _dds_ct(root: Path, values: np.ndarray, vol="vol", name="000"):
    (root / "CT" / vol).mkdir(parents=True, exist_ok=True)
    np.save(root / "CT" / vol / f"{name}.npy", values)
    return root


def test_dds_ct_units_and_size(tmp_path):
    unit = np.load(ROOT / "indist_samples/CT/cranium/048.npy")
    _dds_ct(tmp_path / "hu", unit * 3000.0 - 1000.0)
    _dds_ct(tmp_path / "unit", unit)
    s = load_dds_folder(tmp_path / "hu", "CT", units="hu")[0]
    np.testing.assert_allclose(s.x_ref.numpy(), unit, atol=1e-6)
    with pytest.raises(ValueError, match="Hounsfield.*--config.data.units=hu"):
        load_dds_folder(tmp_path / "hu", "CT")
    with pytest.raises(ValueError, match="not Hounsfield.*--config.data.units=unit"):
        load_dds_folder(tmp_path / "unit", "CT", units="hu")
    half = load_dds_folder(tmp_path / "unit", "CT", size=32)[0]
    np.testing.assert_allclose(half.x_ref.numpy(), unit.reshape(32, 2, 32, 2).mean(axis=(1, 3)), atol=1e-6)
    assert half.meta["stored_shape"] == (64, 64)


def test_dds_mri_size_resamples_image_and_maps():
    full = load_dds_folder(ROOT / "indist_samples", "MRI", max_samples=1)[0]
    s = load_dds_folder(ROOT / "indist_samples", "MRI", max_samples=1, size=32)[0]
    xr, mr = resample_mri(full.x_ref, full.sens_maps, 32)
    assert s.x_ref.shape == (32, 32) and s.sens_maps.shape == (8, 32, 32)
    torch.testing.assert_close(s.x_ref, xr)
    torch.testing.assert_close(s.sens_maps, mr)


def test_missing_maps_message_names_the_config_field(tmp_path):
    (tmp_path / "MRI" / "v" / "slice").mkdir(parents=True)
    np.save(tmp_path / "MRI" / "v" / "slice" / "000.npy", np.ones((8, 8), np.complex64))
    with pytest.raises(FileNotFoundError, match="--config.data.require_maps=False"):
        load_dds_folder(tmp_path, "MRI")


def test_fastmri_size_estimates_maps_at_the_new_size(tmp_path):
    from tests.test_data import _write_h5

    p = tmp_path / "f.h5"
    _write_h5(p)
    ref = load_fastmri_h5(p, slices=[0], crop=40, maps="rss")[0]
    s = load_fastmri_h5(p, slices=[0], crop=40, maps="rss", size=24)[0]
    assert s.x_ref.shape == (24, 24) and s.sens_maps.shape == (6, 24, 24)
    energy = (s.sens_maps.abs() ** 2).sum(0)
    assert torch.allclose(energy[energy > 0], torch.ones(()), atol=1e-5)      # RSS maps: Σ|S|² = 1
    # the same image at 24² (k-space resampling of the 40² one, up to the RSS combination)
    want = kspace_resample(ref.x_ref, 24).abs()
    want = want / want.max()
    assert float((s.x_ref.abs() - want).abs().max()) < 0.05
    with pytest.raises(ValueError, match="--config.data.calib_width"):
        load_fastmri_h5(p, slices=[0], crop=40, maps="espirit", calib_width=24, size=16)
    with pytest.raises(ValueError, match="--config.data.crop"):
        load_fastmri_h5(p, slices=[0], crop=320)


def test_reader_choice_messages(tmp_path):
    """What a path cannot hold is said plainly, with what to pass instead."""
    with pytest.raises(FileNotFoundError, match="does not exist.*--data"):
        data_kind(tmp_path / "nope", "CT")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty folder.*--data"):
        data_kind(tmp_path / "empty", "CT")
    _dds_ct(tmp_path / "ctonly", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="CT/ but no MRI/ sub-folder.*--data.*--deg"):
        load_dataset(tmp_path / "ctonly", "MRI")
    np.save(tmp_path / "ct.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="AAPM-style CT .npy.*MRI"):
        load_dataset(tmp_path / "ct.npy", "MRI")
    (tmp_path / "k.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="fastMRI k-space file.*CT"):
        load_dataset(tmp_path / "k.h5", "CT")
    with pytest.raises(ValueError, match="is CT DICOM.*MRI"):
        load_dataset(ROOT / "tests/data/ct_hu_128.dcm", "MRI")
    assert data_kind(tmp_path / "ctonly", "CT") == "dds" and data_kind(ROOT / "indist_samples", "MRI") == "dds"


# ---------------------------------------------------------------------------- folders and seeds
def test_slice_paths_are_injective_and_keep_structure():
    from utils.fileio import safe_path

    assert safe_path("SV-CT_cranium/048") == "SV-CT_cranium/048"
    pairs = [("CT/a_b/c.npy", "CT/a/b_c.npy"), ("völ/1", "väl/1"), ("a b/1", "a_b/1"), ("x/.", "x/_"),
             ("a/b", "a_b"), ("Ü", "Ö")]
    for a, b in pairs:
        assert safe_path(a) != safe_path(b), (a, b)
    assert safe_path("völ/1") == f"v_l-{hashlib.sha256('völ'.encode()).hexdigest()[:8]}/1"  # stable, not hash()
    for name in ("völ/1", "a b/../c", "/abs"):
        assert all(part and part not in (".", "..") for part in safe_path(name).split("/")), name


def test_check_slice_folders_refuses_a_collision(monkeypatch):
    import run_checks
    from utils.data import Sample

    samples = [Sample("a", torch.zeros(2, 2)), Sample("b", torch.zeros(2, 2))]
    run_checks.check_slice_folders(["SV-CT"], {"SV-CT": samples}, ["dds"])         # distinct: fine
    monkeypatch.setattr(run_checks.RunDir, "slice_folder", staticmethod(lambda solver, key: "slices/x/same"))
    with pytest.raises(run_checks.InputError, match="would share the output folder"):
        run_checks.check_slice_folders(["SV-CT"], {"SV-CT": samples}, ["dds"])


def test_slice_seed_is_a_stable_function_of_run_seed_and_name():
    from run_checks import slice_seed

    s = slice_seed(0, "cranium/048")
    assert s == int.from_bytes(hashlib.sha256(b"0/cranium/048").digest()[:4], "big") & 0x7FFFFFFF
    assert 0 <= s < 2 ** 31
    assert slice_seed(0, "cranium/050") != s and slice_seed(1, "cranium/048") != s
    assert slice_seed(0, "cranium/048") == s


def test_workdir_must_be_writable(tmp_path, monkeypatch):
    import tempfile

    import run_checks

    run_checks.check_writable(tmp_path / "new" / "deeper", "--workdir")       # created later: fine
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []   # nothing left behind
    (tmp_path / "f").write_text("x")
    with pytest.raises(run_checks.InputError, match="is a file"):
        run_checks.check_writable(tmp_path / "f" / "sub", "--workdir")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)          # a read-only folder (root ignores chmod)
    with pytest.raises(run_checks.InputError, match="cannot create folders.*Permission denied"):
        run_checks.check_writable(tmp_path, "--workdir")


# --------------------------------------------------------------------------------- value ranges
def test_range_refuses_what_it_should():
    from solvers.common import Range

    r = Range(1, integer=True)
    for bad in (0, -3, 2.5, 2.0, float("nan"), True, "3", None):
        assert not r.ok(bad), bad
    assert r.ok(1) and r.ok(np.int64(7))
    f = Range(0, 1, hi_open=True)
    assert f.ok(0.0) and f.ok(0.999) and not f.ok(1.0) and not f.ok(float("inf")) and not f.ok(float("-nan"))
    assert Range(0, integer=True, none_ok=True).ok(None)
    with pytest.raises(ValueError, match=r"lam must be a finite number >= 0, got nan"):
        Range(0).check(float("nan"), "lam")
    with pytest.raises(ValueError, match=r"betas must be a finite number in \[0, 1\) \(each entry\)"):
        Range(0, 1, hi_open=True).check((0.9, 1.0), "betas")


def _numeric_leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _numeric_leaves(v, f"{prefix}{k}.")
        elif not isinstance(v, (bool, str)) and (isinstance(v, (int, float)) or v is None or isinstance(v, (tuple, list))):
            yield f"{prefix}{k}", v


def test_every_numeric_config_field_has_a_range():
    """Each numeric field of the run config and of every registered solver's config has a
    declared range (configs.base.RANGES; each solver class's RANGES merged over its bases),
    and its default lies in it."""
    import solvers
    from configs.base import RANGES, get_base_config

    base = get_base_config().to_dict()
    for section in ("solver_cfg", "modality_overrides", "perf", "prior"):
        base.pop(section)
    for field, value in _numeric_leaves(base):
        assert field in RANGES, f"config.{field} has no range in configs.base.RANGES"
        RANGES[field].check(value, field)
    for name in solvers.REGISTRY:
        cls = solvers.solver_class(name)
        table = cls.config_ranges()
        for field, value in _numeric_leaves(solvers.default_config(name).to_dict()):
            assert field in table, f"solver_cfg.{name}.{field} has no range (RANGES of {cls.__name__})"
            table[field].check(value, f"{name}.{field}")


#: (solver, field, bad value, message fragment): the library constructors refuse each
BAD_SOLVER_VALUES = [
    ("udigdip", "lam", float("nan"), "lam must be a finite number >= 0"),
    ("udigdip", "lr", -1e-3, "lr must be a finite number in (0, 10]"),
    ("udigdip", "num_outer", 0, "num_outer must be an integer >= 1"),
    ("udigdip", "t_start", 1000, "t_start must be in [0, 999]"),
    ("udigdip", "eta", 1.5, "eta must be a finite number in [0, 1]"),
    ("aseqdip", "inner_steps", 0, "inner_steps must be an integer >= 1"),
    ("aseqdip", "betas", (0.9, 1.2), "betas must be"),
    ("dip", "num_steps", 0, "num_steps must be an integer >= 1"),
    ("dip", "num_steps", -5, "num_steps must be an integer >= 1"),
    ("sgdip", "num_samples", 0, "num_samples must be an integer in [1, 1024]"),
    ("sgdip", "z_lr", float("inf"), "z_lr must be"),
    ("dds", "nfe", 0, "nfe must be an integer >= 1"),
    ("dds", "nfe", 1001, "nfe must be in [1, 1000]"),
    ("dds", "gamma", float("nan"), "gamma must be a finite number >= 0"),
    ("dps", "zeta", -1.0, "zeta must be a finite number >= 0"),
    ("dps", "num_steps", 1001, "num_steps must be in [1, 1000]"),
]


@pytest.mark.parametrize("name,field,value,msg", BAD_SOLVER_VALUES)
def test_solver_constructors_refuse_out_of_range_values(name, field, value, msg):
    import solvers
    from tests.dip_problems import eps_denoiser

    den = eps_denoiser() if solvers.needs_prior(name) else None
    with pytest.raises(ValueError) as e:
        solvers.make_solver(name, {field: value}, den)
    assert msg in str(e.value)


def test_solvers_refuse_numpy_measurements_with_a_message():
    import solvers
    from tests.dip_problems import eps_denoiser, mri_problems

    ops, ys = mri_problems(torch.float32, B=1)
    for name in ("aseqdip", "dds"):
        s = solvers.make_solver(name, {"nfe": 2} if name == "dds" else {"num_outer": 1, "inner_steps": 1},
                                eps_denoiser() if name == "dds" else None)
        with pytest.raises(ValueError, match=r"torch.Tensor.*torch.from_numpy"):
            s(ys[0].numpy(), ops[0])


def test_slices_that_cannot_be_stacked_are_solved_one_at_a_time(monkeypatch):
    """``run_lib.solve``'s explicit fallback: a chunk whose operators cannot be stacked (here two CT
    sizes) is solved slice by slice, each with its own seed; stackable slices in one solve."""
    import run_lib
    from configs.base import get_base_config
    from utils.data import Sample

    cfg = get_base_config()
    a, b = (Sample(n, torch.rand(s, s, generator=torch.Generator().manual_seed(s)), None, "CT")
            for n, s in (("v/a", 32), ("v/b", 24)))
    jobs = [run_lib.prepare_slice(cfg, "SV-CT", s, "cpu") for s in (a, b)]
    assert run_lib._stacked("dds", jobs) is None
    assert run_lib._stacked("dds", [jobs[0], run_lib.prepare_slice(cfg, "SV-CT", a, "cpu")]) is not None
    calls = []

    class Built(Exception):
        pass

    def build(cfg, name, modality, den, seeds, device):
        calls.append(list(seeds))
        raise Built

    monkeypatch.setattr(run_lib, "build_solver", build)
    with pytest.raises(Built):
        run_lib.solve(cfg, jobs, "aseqdip", None, "cpu", rd=None)
    assert calls == [[jobs[0].seed]]          # the first slice alone, with its own seed
    assert jobs[0].seed != jobs[1].seed


def test_resume_compares_what_changes_results_only():
    """A resumed run may change the device, batch size, ... but nothing that changes results; the
    settings of solvers the run does not use (e.g. solvers added to the code since) do not count."""
    import json

    from configs.base import get_base_config
    from run_checks import config_differences
    from utils.fileio import to_jsonable

    cfg = get_base_config()
    cfg.solvers = "udigdip,dds"
    saved = json.loads(json.dumps(to_jsonable(cfg)))
    del saved["solver_cfg"]["dps"]                               # a solver the old run's code lacked
    saved["modality_overrides"]["MRI"] = {"sgdip": {"num_steps": 5}}
    with cfg.unlocked():
        cfg.device, cfg.batch_size, cfg.data.max_slices = "cuda", 8, 3
    assert config_differences(cfg, saved) == []
    cfg.solver_cfg.udigdip.lam = 0.5
    cfg.data.image_size = 64
    assert config_differences(cfg, saved) == ["data.image_size", "solver_cfg.udigdip.lam"]
    cfg.solvers = "udigdip,dds,dps"                              # now dps counts
    assert "solver_cfg.dps.zeta" in config_differences(cfg, saved)


def test_noiseless_data_consistency_under_noise_is_warned(tmp_path, caplog):
    """A data-consistency step that assumes exact measurements (DDS's Krylov branch, MCG's
    projection) is named in a warning when the run adds noise, and not when it does not."""
    import logging

    import configs.demo_ct
    import run_lib

    cfg = configs.demo_ct.get_config()
    with cfg.unlocked():
        cfg.solvers, cfg.workdir, cfg.device, cfg.data.max_slices = "dds,mcg", str(tmp_path / "exp"), "cpu", 1
        cfg.solver_cfg.dds.dc_mode = "krylov"
    caplog.set_level(logging.WARNING)
    run_lib.plan_run(cfg)
    assert "assumes noiseless" not in caplog.text
    with cfg.unlocked():
        cfg.physics.noise, cfg.physics.I0 = "poisson", 4096.0
    run_lib.plan_run(cfg)
    assert "dds assumes noiseless" in caplog.text and "mcg assumes noiseless" in caplog.text
    assert "dc_mode='proximal'" in caplog.text
    assert not (tmp_path / "exp").exists()
