"""simulate_measurements (physics/noise.py): the stated noise model, checked statistically and
against an independent draw."""
from __future__ import annotations

import math

import pytest
import torch

from physics import GaussianNoise, MultiCoilMRI, NoiseModel, ParallelBeamCT, simulate_measurements
from physics.noise import PoissonNoise, RelativeGaussianNoise, is_noiseless, noise_from_config, noise_label
from physics.coils import synthetic_coil_maps
from physics.masks import get_mask

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMA = 0.3


def _mri(H=96, W=96, C=8, batched=False):
    mask = get_mask("uniform1d", (H, W), 4, seed=1)
    if batched:
        mask = torch.stack([mask, get_mask("uniform1d", (H, W), 4, seed=2)])
    return MultiCoilMRI(mask, synthetic_coil_maps(C, H, W, seed=0)), mask


def _image(B, H, W, complex_=True):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(B, H, W, generator=g, dtype=torch.float64)
    return (x * torch.exp(1j * x)).to(torch.complex128) if complex_ else x


def test_mri_noise_variance_on_sampled_kspace():
    """E|n|² = σ² per sampled entry, real and imaginary parts each N(0, σ²/2), mean 0."""
    A, mask = _mri()
    x = _image(2, 96, 96)
    n = simulate_measurements(A, x, SIGMA, seed=3) - A(x)
    sampled = n[mask.expand_as(n.real) != 0]
    N = sampled.numel()
    assert N == 2 * 8 * 96 * 24                        # 1/4 of the columns, every coil
    # statistical tolerances: ~5 standard errors (|n|²/σ² is Exp(1): relative SE 1/√N ≈ 0.7 %)
    ratio = float((sampled.abs() ** 2).mean()) / SIGMA ** 2
    assert abs(ratio - 1) < 0.04, ratio                # a missing or extra √2 gives 2 or 0.5
    for part in (sampled.real, sampled.imag):
        assert abs(float(part.var()) / (SIGMA ** 2 / 2) - 1) < 0.06
        assert abs(float(part.mean())) < 5 * SIGMA / (2 * N) ** 0.5
    assert abs(float((sampled.real * sampled.imag).mean())) < 5 * SIGMA ** 2 / 2 / N ** 0.5


def test_mri_noise_zero_off_the_mask_per_slice():
    A, masks = _mri(48, 40, 3, batched=True)
    x = _image(2, 48, 40)
    y = simulate_measurements(A, x, SIGMA, seed=0)
    off = masks[:, None].expand_as(y.real) == 0
    assert torch.all(y[off] == 0)                      # exactly zero, coil by coil, slice by slice
    assert torch.all(y[~off] != 0)
    assert torch.equal(A.measurement_mask(y)[:, 0], masks.double())


def test_noise_matches_an_independent_draw():
    """The documented draw: real parts, then imaginary parts, from torch.Generator().manual_seed(seed),
    scaled by σ/√2 and masked."""
    A, mask = _mri(24, 20, 2)
    x = _image(1, 24, 20)
    y = simulate_measurements(A, x, SIGMA, seed=11)
    g = torch.Generator().manual_seed(11)
    shape = (1, 2, 24, 20)
    a = torch.randn(shape, generator=g, dtype=torch.float64)
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    expected = A(x) + SIGMA * torch.complex(a, b) / 2 ** 0.5 * mask
    assert torch.allclose(y, expected, rtol=0, atol=1e-15)


def test_ct_noise_is_real_with_variance_sigma2():
    A = ParallelBeamCT(64, num_views=60)
    x = _image(2, 64, 64, complex_=False)
    y = simulate_measurements(A, x, SIGMA, seed=5)
    assert not y.is_complex() and y.dtype == x.dtype
    n = (y - A(x)).flatten()
    assert n.numel() == 2 * 60 * A.num_detectors
    assert abs(float(n.var()) / SIGMA ** 2 - 1) < 0.06   # relative SE √(2/N) ≈ 1.3 %
    assert abs(float(n.mean())) < 5 * SIGMA / n.numel() ** 0.5
    g = torch.Generator().manual_seed(5)
    assert torch.allclose(y, A(x) + SIGMA * torch.randn(y.shape, generator=g, dtype=y.dtype), atol=1e-12)


@pytest.mark.parametrize("kind", ["MRI", "CT"])
def test_noise_seeded_and_zero_sigma_exact(kind):
    if kind == "MRI":
        A, x = _mri(20, 18, 2)[0], _image(1, 20, 18).to(torch.complex64)
    else:
        A, x = ParallelBeamCT(20, num_views=8), _image(1, 20, 20, complex_=False).float()
    clean = A(x)
    assert torch.equal(simulate_measurements(A, x, 0.0, seed=1), clean)
    assert torch.equal(simulate_measurements(A, x, 0.0, seed=1), simulate_measurements(A, x, seed=9))
    y1 = simulate_measurements(A, x, SIGMA, seed=1)
    assert y1.dtype == clean.dtype and y1.shape == clean.shape
    assert torch.equal(y1, simulate_measurements(A, x, SIGMA, seed=1))
    assert not torch.equal(y1, simulate_measurements(A, x, SIGMA, seed=2))
    assert not torch.equal(y1, clean)
    assert torch.equal(y1, simulate_measurements(A, x, noise=GaussianNoise(SIGMA), seed=1))


def test_noise_model_hook_and_errors():
    class AddMask(NoiseModel):            # a model sees y, the measurement mask and the generator
        def apply(self, y, mask, generator):
            return y + mask

    A, mask = _mri(12, 10, 2)
    x = _image(1, 12, 10)
    y = simulate_measurements(A, x, noise=AddMask())
    assert torch.allclose(y - A(x), mask.expand(1, 2, 12, 10).to(y.dtype), rtol=0, atol=1e-12)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise_sigma"):
            simulate_measurements(A, x, bad)
    with pytest.raises(ValueError, match="not both"):
        simulate_measurements(A, x, 0.1, noise=GaussianNoise(0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_noise_is_device_independent():
    A, _ = _mri(32, 30, 2)
    x = _image(1, 32, 30).to(torch.complex64)
    y_cpu = simulate_measurements(A, x, SIGMA, seed=4)
    y_gpu = simulate_measurements(A.cuda(), x.cuda(), SIGMA, seed=4)
    assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-5)


# ------------------------------------------------------------------- relative Gaussian noise
def test_relative_noise_variance_is_level_times_rms_per_slice():
    """σ_b = level × RMS of slice b's noiseless measured entries: E|n|² = σ_b², mean 0, only on the
    sampled k-space, one σ per slice (two slices of very different energy)."""
    A, masks = _mri(64, 64, 4, batched=True)
    x = _image(2, 64, 64)
    x[1] *= 5.0                                        # slice 1: 5× the signal → 5× the σ
    level = 0.1
    clean = A(x)
    m = masks[:, None].expand_as(clean.real) != 0
    rms = [float(clean[b][m[b]].abs().pow(2).mean().sqrt()) for b in range(2)]
    assert rms[1] > 4 * rms[0]                          # (the two slices have different masks)
    model = RelativeGaussianNoise(level)
    assert torch.allclose(model.sigmas(clean, A.measurement_mask(clean)), level * torch.tensor(rms, dtype=torch.float64))
    n = simulate_measurements(A, x, noise=model, seed=3) - clean
    assert torch.all(n[~m] == 0)
    for b in range(2):
        s = n[b][m[b]]
        N = s.numel()
        ratio = float(s.abs().pow(2).mean()) / (level * rms[b]) ** 2
        assert abs(ratio - 1) < 5 / N ** 0.5, ratio          # |n|²/σ² ~ Exp(1): SE 1/√N
        assert abs(complex(s.mean())) < 5 * level * rms[b] / N ** 0.5
    # the same draws as GaussianNoise of that σ (one slice): the model only sets the scale
    one = simulate_measurements(A.slice(1), x[1:], noise=model, seed=8)
    ref = simulate_measurements(A.slice(1), x[1:], noise_sigma=level * rms[1], seed=8)
    assert torch.allclose(one, ref, rtol=0, atol=1e-12)


def test_relative_noise_ct_and_seeds_per_slice():
    A = ParallelBeamCT(32, num_views=20)
    x = _image(3, 32, 32, complex_=False)
    model = RelativeGaussianNoise(0.02)
    y = simulate_measurements(A, x, noise=model, seeds=[4, 5, 6])
    for b, s in enumerate([4, 5, 6]):                  # slice b = a one-slice call with seed s
        assert torch.equal(y[b:b + 1], simulate_measurements(A, x[b:b + 1], noise=model, seed=s))
    n = (y - A(x)).flatten()
    rms = float(A(x).pow(2).mean().sqrt())
    assert abs(float(n.std()) / (0.02 * rms) - 1) < 0.1      # slices of similar energy here
    assert torch.equal(y, simulate_measurements(A, x, noise=model, seeds=[4, 5, 6]))
    assert not torch.equal(y, simulate_measurements(A, x, noise=model, seeds=[4, 5, 7]))
    with pytest.raises(ValueError, match="seeds"):
        simulate_measurements(A, x, noise=model, seeds=[1, 2])
    assert torch.equal(simulate_measurements(A, x, noise=RelativeGaussianNoise(0.0), seed=1), A(x))


# ----------------------------------------------------------------------------- Poisson noise
def test_poisson_counts_have_the_stated_mean_and_variance():
    """Counts N = I0·exp(−s·y_noisy) (exact where N > 0): mean and variance I0·e^{−s p} for each
    line integral p; zero counts become 0.1 photon (y = −log(0.1/I0)/s)."""
    model = PoissonNoise(I0=2000.0, mu_max=0.06, pixel_mm=2.0)
    s = model.scale
    assert s == pytest.approx(0.12)
    p = torch.tensor([0.0, 10.0, 30.0, 60.0], dtype=torch.float64)   # s·p = 0 … 7.2
    y = p.repeat(1, 50_000)                                            # [1, 200000], 50k per value
    noisy = model.apply(y, torch.ones(1, 1, dtype=torch.float64), torch.Generator().manual_seed(0))
    counts = (model.I0 * torch.exp(-s * noisy)).reshape(50_000, 4)
    for j, pj in enumerate(p.tolist()):
        lam = model.I0 * math.exp(-s * pj)
        c = counts[:, j]
        zero = c <= 0.1 * (1 + 1e-9)
        c = torch.where(zero, torch.zeros_like(c), c)                 # undo the 0.1-photon floor
        assert torch.allclose(c, c.round(), atol=1e-6 * max(lam, 1))    # integers: real counts
        se = (lam / 50_000) ** 0.5
        assert abs(float(c.mean()) - lam) < 5 * se, (pj, float(c.mean()), lam)
        assert abs(float(c.var()) / lam - 1) < 5 * (2 / 50_000) ** 0.5 + 1 / lam   # Poisson: var = mean
        assert bool(zero.any()) == (lam < 10)                          # only the dimmest ray hits 0
    floor = -math.log(0.1 / model.I0) / s
    assert float(noisy.max()) == pytest.approx(floor)
    # seeded: same seed, same counts; the expected counts are the stated formula
    again = model.apply(y, torch.ones(1, 1, dtype=torch.float64), torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.allclose(model.expected_counts(p), 2000 * torch.exp(-0.12 * p))


def test_poisson_noise_through_the_ct_operator():
    A = ParallelBeamCT(32, num_views=12)
    x = _image(2, 32, 32, complex_=False).float()
    model = PoissonNoise(I0=1e4, mu_max=0.06, pixel_mm=3.83)
    y = simulate_measurements(A, x, noise=model, seeds=[1, 2])
    clean = A(x)
    assert y.dtype == clean.dtype and y.shape == clean.shape
    # small-noise regime: Var(y) ≈ e^{s p} / (I0 s²) per bin (delta method)
    z = (y - clean).double() / torch.sqrt(torch.exp(model.scale * clean.double()) / (model.I0 * model.scale ** 2))
    assert abs(float(z.var()) - 1) < 0.1 and abs(float(z.mean())) < 0.1
    assert torch.equal(y[1:], simulate_measurements(A, x[1:], noise=model, seed=2))
    with pytest.raises(ValueError, match="CT sinograms"):
        simulate_measurements(*_mri(8, 8, 2)[:1], _image(1, 8, 8), noise=model)


# ------------------------------------------------------------------------------------ config
def test_noise_from_config_kinds_and_errors():
    from configs.base import get_base_config

    phys = get_base_config().physics
    assert phys.noise == "gaussian" and is_noiseless(phys)             # default: noiseless
    with phys.unlocked():
        phys.noise_sigma = 0.01                                        # the old flag still works
    assert noise_from_config(phys) == GaussianNoise(0.01) and not is_noiseless(phys)
    assert noise_label(phys) == "gaussian σ=0.01"
    cases = [
        ({"noise": "none"}, GaussianNoise(0.0), "none"),
        ({"noise": "relative", "noise_level": 0.05}, RelativeGaussianNoise(0.05), "relative 0.05"),
        ({"noise": "poisson", "I0": 1000.0, "mu_max": 0.05, "pixel_mm": 2.0},
         PoissonNoise(1000.0, 0.05, 2.0), "poisson I0=1000"),
    ]
    for cfg, model, label in cases:
        assert noise_from_config(cfg, "CT") == model and noise_label(cfg) == label
    assert is_noiseless({"noise": "none"}) and is_noiseless({"noise": "relative", "noise_level": 0.0})
    assert not is_noiseless({"noise": "poisson"})
    bad = [({"noise": "laplace"}, "noise must be one of"),
           ({"noise": "none", "noise_sigma": 0.1}, "noise_sigma=0.1 applies to noise='gaussian'"),
           ({"noise": "relative", "noise_level": 0.1, "noise_sigma": 0.1}, "noise_sigma"),
           ({"noise": "gaussian", "noise_level": 0.1}, "noise_level=0.1 applies to noise='relative'"),
           ({"noise": "relative", "noise_level": -1.0}, "noise_level"),
           ({"noise": "poisson", "I0": 0.0}, "I0"), ({"noise": "poisson", "I0": float("inf")}, "I0"),
           ({"noise": "poisson", "pixel_mm": -1.0}, "pixel_mm")]
    for cfg, match in bad:
        with pytest.raises(ValueError, match=match):
            noise_from_config(cfg, "CT")
    with pytest.raises(ValueError, match="poisson models CT"):
        noise_from_config({"noise": "poisson"}, "MRI")


def test_runs_simulate_the_configured_noise(tmp_path):
    """run_lib checks the noise fields before anything is written, and each slice's measurements
    are the configured model seeded with the slice's seed."""
    import configs.demo_mri
    import run_lib
    from physics import make_physics
    from utils.data import load_dataset

    cfg = configs.demo_mri.get_config()
    with cfg.unlocked():
        cfg.solvers, cfg.workdir, cfg.device = "cgsense", str(tmp_path / "exp"), "cpu"
        cfg.physics.noise = "poisson"
    with pytest.raises(run_lib.InputError, match="MRI-multi: --config.physics.noise=poisson models CT"):
        run_lib.plan_run(cfg)
    assert not (tmp_path / "exp").exists()
    with cfg.unlocked():
        cfg.physics.noise, cfg.physics.noise_level = "relative", 0.05
    run_lib.plan_run(cfg)
    sample = load_dataset("indist_samples", "MRI")[0]
    job = run_lib.prepare_slice(cfg, "MRI-multi", sample, torch.device("cpu"))
    A = make_physics("MRI-multi", cfg.physics, sample)
    seed = run_lib.slice_seed(cfg.seed, sample.name)        # the slice's own seed
    expected = simulate_measurements(A, sample.x_ref[None], noise=RelativeGaussianNoise(0.05), seed=seed)
    assert torch.equal(job.y, expected) and not torch.equal(job.y, A(sample.x_ref[None]))
