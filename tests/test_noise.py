"""simulate_measurements (physics/noise.py): the stated noise model, checked statistically and
against an independent draw."""
from __future__ import annotations

import pytest
import torch

from physics import GaussianNoise, MultiCoilMRI, NoiseModel, ParallelBeamCT, simulate_measurements
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
