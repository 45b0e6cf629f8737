"""Tests for physics/mri.py (FFT convention, multi-coil operator) and physics/coils.py."""
import numpy as np
import pytest
import torch

from physics.coils import espirit_maps, synthetic_coil_maps
from physics.coils import rss as coils_rss
from physics.masks import get_mask
from physics.mri import MultiCoilMRI, fft2c, ifft2c, rss


def _crandn(*shape, dtype=torch.complex128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=dtype, generator=g)


def _vdot(a, b):
    """⟨a, b⟩ = Σ conj(a)·b."""
    return torch.sum(a.conj() * b)


def _ellipse_phantom(H, W):
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    img = np.zeros((H, W))
    for a, b, x0, y0, v in [(0.7, 0.85, 0.0, 0.0, 1.0), (0.3, 0.2, -0.25, 0.1, -0.4),
                            (0.15, 0.25, 0.3, -0.2, 0.3)]:
        img += v * ((((xx - x0) / a) ** 2 + ((yy - y0) / b) ** 2) <= 1)
    return img


# ----------------------------------------------------------------------------- FFT
@pytest.mark.parametrize("shape", [(2, 16, 16), (3, 17, 12), (1, 15, 21)])
def test_fft2c_parseval_and_inverse(shape):
    x = _crandn(*shape, seed=1)
    k = fft2c(x)
    assert k.shape == x.shape and k.dtype == torch.complex128
    assert torch.allclose(k.norm(), x.norm(), rtol=1e-12)                # Parseval
    assert torch.allclose(ifft2c(k), x, atol=1e-12)                      # inverse
    assert torch.allclose(fft2c(ifft2c(x)), x, atol=1e-12)
    # ifft2c is the adjoint of fft2c
    y = _crandn(*shape, seed=2)
    assert abs(_vdot(fft2c(x), y) - _vdot(x, ifft2c(y))) <= 1e-12 * abs(_vdot(x, ifft2c(y)))


@pytest.mark.parametrize("H,W", [(16, 16), (15, 17), (8, 11)])
def test_fft2c_is_centred(H, W):
    c = 0.7 - 0.2j
    k = fft2c(torch.full((H, W), c, dtype=torch.complex128))
    expected = torch.zeros(H, W, dtype=torch.complex128)
    expected[H // 2, W // 2] = c * np.sqrt(H * W)
    assert torch.allclose(k, expected, atol=1e-12)
    # and a centred delta has a flat spectrum (the image centre is (H//2, W//2) too)
    d = torch.zeros(H, W, dtype=torch.complex128)
    d[H // 2, W // 2] = 1
    assert torch.allclose(fft2c(d), torch.full_like(d, 1 / np.sqrt(H * W)), atol=1e-12)


def test_fft2c_matches_fastmri_numpy_and_sigpy():
    import sigpy as sp

    x = _crandn(2, 13, 10, seed=3)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1))
    assert np.allclose(fft2c(x).numpy(), ref, atol=1e-12)
    assert np.allclose(fft2c(x).numpy(), sp.fft(x.numpy(), axes=(-2, -1), center=True),
                       atol=1e-12)
    assert np.allclose(ifft2c(x).numpy(), sp.ifft(x.numpy(), axes=(-2, -1), center=True),
                       atol=1e-12)


# ------------------------------------------------------------------- operator / adjoint
def _geometry(kind):
    """(operator, batch size) for several geometries, complex128."""
    if kind == "single_coil_even_1d":
        B, H, W = 2, 32, 32
        return MultiCoilMRI(get_mask("uniform1d", (H, W), 4, seed=1)), B
    if kind == "multi_coil_odd_2d":
        B, H, W = 2, 33, 29
        return MultiCoilMRI(get_mask("uniform2d", (H, W), 3, seed=2),
                            synthetic_coil_maps(4, H, W, seed=2, dtype=torch.complex128)), B
    if kind == "batched_mask_and_maps":
        B, C, H, W = 3, 5, 24, 27
        masks = torch.stack([get_mask("gaussian1d", (H, W), 3, seed=s) for s in range(B)])
        maps = _crandn(B, C, H, W, seed=4)                     # arbitrary complex maps
        return MultiCoilMRI(masks, maps), B
    if kind == "batched_mask_shared_maps_2d":
        B, C, H, W = 2, 3, 31, 31
        masks = torch.stack([get_mask("gaussian2d", (H, W), 4, seed=s) for s in range(B)])
        return MultiCoilMRI(masks, synthetic_coil_maps(C, H, W, seed=5)), B
    if kind == "weighted_mask_batched_maps":
        B, C, H, W = 2, 2, 20, 18
        g = torch.Generator().manual_seed(6)
        return MultiCoilMRI(torch.rand(H, W, generator=g, dtype=torch.float64),
                            _crandn(B, C, H, W, seed=6)), B
    raise KeyError(kind)


GEOMETRIES = ["single_coil_even_1d", "multi_coil_odd_2d", "batched_mask_and_maps",
              "batched_mask_shared_maps_2d", "weighted_mask_batched_maps"]


@pytest.mark.parametrize("kind", GEOMETRIES)
def test_adjoint_dot_product(kind):
    A, B = _geometry(kind)
    H, W = A.image_shape
    x = _crandn(B, H, W, seed=10)
    y = _crandn(B, A.num_coils, H, W, seed=11)
    Ax, Aty = A(x), A.adjoint(y)
    assert Ax.shape == (B, A.num_coils, H, W) and Aty.shape == (B, H, W)
    lhs, rhs = _vdot(Ax, y), _vdot(x, Aty)
    assert abs(lhs - rhs) / abs(lhs) <= 1e-5
    # the same criterion rejects a subtly wrong adjoint (maps not conjugated) -> it can fail
    if A.sens_maps is not None:
        S = A._maps_for(y)
        wrong = torch.sum(S * ifft2c(A._mask_for(y) * y), dim=1)
        assert abs(lhs - _vdot(x, wrong)) / abs(lhs) > 1e-3
    assert A.adjointness_test() <= 1e-12                       # the operator's own self-test
    # normal and input_image are consistent with forward/adjoint
    assert torch.allclose(A.normal(x), A.adjoint(A(x)))
    assert torch.allclose(A.input_image(y), Aty)


def test_forward_matches_explicit_model():
    B, C, H, W = 2, 3, 16, 13
    mask = get_mask("uniform1d", (H, W), 2, seed=0)
    maps = synthetic_coil_maps(C, H, W, seed=0, dtype=torch.complex128)
    x = _crandn(B, H, W, seed=1)
    A = MultiCoilMRI(mask, maps)
    coil = maps.numpy()[None] * x.numpy()[:, None]
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil, axes=(-2, -1)), norm="ortho"),
                          axes=(-2, -1)) * mask.numpy()
    assert np.allclose(A(x).numpy(), ref, atol=1e-12)
    # unsampled columns are exactly zero in the measured k-space
    assert torch.all(A(x)[..., mask[0] == 0] == 0)
    ref_adj = np.sum(maps.numpy().conj()[None] * np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(
        ref, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)), axis=1)
    assert np.allclose(A.adjoint(A(x)).numpy(), ref_adj, atol=1e-12)


def test_fully_sampled_normal_is_identity_with_normalised_maps():
    H, W = 20, 22
    x = _crandn(2, H, W, seed=3)
    A = MultiCoilMRI(torch.ones(H, W), synthetic_coil_maps(6, H, W, dtype=torch.complex128))
    assert torch.allclose(A.normal(x), x, atol=1e-10)
    A1 = MultiCoilMRI(torch.ones(H, W))
    assert torch.allclose(A1.normal(x), x, atol=1e-12)


def test_single_coil_attributes():
    A = MultiCoilMRI(get_mask("equispaced1d", (12, 10), 2, center_fraction=0.2))
    assert A.is_complex is True and A.image_shape == (12, 10) and A.num_coils == 1
    y = A(_crandn(3, 12, 10))
    assert y.shape == (3, 1, 12, 10)
    assert A.adjoint(y).shape == (3, 12, 10)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("maps_dtype", [torch.complex64, torch.complex128])
def test_float32_and_float64(dtype, maps_dtype):
    H, W = 16, 15
    A = MultiCoilMRI(get_mask("uniform2d", (H, W), 2).to(torch.float64),
                     synthetic_coil_maps(3, H, W, dtype=maps_dtype))
    x = _crandn(2, H, W, dtype=dtype, seed=4)
    y = A(x)
    assert y.dtype == dtype and A.adjoint(y).dtype == dtype and A.normal(x).dtype == dtype
    ref = MultiCoilMRI(A.mask, A.sens_maps.to(torch.complex128))(x.to(torch.complex128))
    tol = 1e-5 if torch.complex64 in (dtype, maps_dtype) else 1e-12
    assert torch.allclose(y.to(torch.complex128), ref, atol=tol)


def test_module_to_dtype_keeps_complex_maps():
    """Module.to(real/complex dtype) must not drop the maps' imaginary part."""
    H, W = 12, 14
    maps = synthetic_coil_maps(3, H, W, seed=1)
    x = _crandn(1, H, W, dtype=torch.complex128)
    ref = MultiCoilMRI(torch.ones(H, W), maps)(x)
    for dt in (torch.float64, torch.complex128, torch.float32):
        A = MultiCoilMRI(torch.ones(H, W), maps).to(dt)
        assert A.sens_maps.is_complex()
        assert torch.allclose(A.sens_maps.to(torch.complex128), maps.to(torch.complex128),
                              atol=1e-7)
        assert torch.allclose(A(x), ref, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda():
    H, W = 32, 30
    A = MultiCoilMRI(get_mask("uniform1d", (H, W), 3), synthetic_coil_maps(4, H, W))
    x = _crandn(2, H, W, dtype=torch.complex64)
    y_cpu = A(x)
    y_gpu = A(x.cuda())                       # maps/mask moved on the fly
    assert y_gpu.is_cuda
    assert torch.allclose(y_gpu.cpu(), y_cpu, atol=1e-5)
    A_gpu = A.to("cuda")                      # buffers follow .to
    assert A_gpu.mask.is_cuda and A_gpu.sens_maps.is_cuda
    assert torch.allclose(A_gpu.adjoint(y_gpu).cpu(), A.adjoint(y_cpu), atol=1e-5)


# ------------------------------------------------------------------------ bad input
def _op(H=12, W=10, C=2, batched_mask=None):
    mask = get_mask("uniform1d", (H, W), 2, center_fraction=0.2)
    if batched_mask:
        mask = mask.expand(batched_mask, H, W).clone()
    return MultiCoilMRI(mask, synthetic_coil_maps(C, H, W))


@pytest.mark.parametrize("bad,match", [
    (lambda: torch.randn(2, 12, 10), "complex"),                          # real image
    (lambda: _crandn(12, 10, dtype=torch.complex64), "shape"),            # missing batch dim
    (lambda: _crandn(2, 12, 11, dtype=torch.complex64), "spatial shape"),  # wrong H, W
    (lambda: torch.full((1, 12, 10), float("nan"), dtype=torch.complex64), "NaN"),
    (lambda: np.zeros((1, 12, 10), np.complex64), "torch.Tensor"),
])
def test_forward_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        _op()(bad())


def test_adjoint_bad_input():
    A = _op(C=2)
    with pytest.raises(ValueError, match="coils"):
        A.adjoint(_crandn(1, 3, 12, 10, dtype=torch.complex64))
    with pytest.raises(ValueError, match="shape"):
        A.adjoint(_crandn(1, 12, 10, dtype=torch.complex64))
    with pytest.raises(ValueError, match="complex"):
        A.adjoint(torch.randn(1, 2, 12, 10))
    y = _crandn(1, 2, 12, 10, dtype=torch.complex64)
    y[0, 1, 3, 3] = complex("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        A.adjoint(y)


def test_batch_mismatch_and_bad_construction():
    A = _op(batched_mask=3)
    with pytest.raises(ValueError, match="batch size"):
        A(_crandn(2, 12, 10, dtype=torch.complex64))
    assert A(_crandn(3, 12, 10, dtype=torch.complex64)).shape == (3, 2, 12, 10)
    with pytest.raises(ValueError, match="does not match mask"):
        MultiCoilMRI(torch.ones(12, 10), synthetic_coil_maps(2, 12, 11))
    with pytest.raises(ValueError, match="complex"):
        MultiCoilMRI(torch.ones(12, 10), torch.ones(2, 12, 10))           # real maps
    with pytest.raises(ValueError, match="real"):
        MultiCoilMRI(torch.ones(12, 10, dtype=torch.complex64))           # complex mask
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        MultiCoilMRI(torch.ones(10))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        MultiCoilMRI(torch.ones(12, 10), _crandn(12, 10))
    with pytest.raises(ValueError, match="NaN"):
        MultiCoilMRI(torch.full((12, 10), float("nan")))
    with pytest.raises(ValueError, match="batch size"):
        MultiCoilMRI(torch.ones(2, 12, 10), _crandn(3, 2, 12, 10))


# ---------------------------------------------------------------------- coils / rss
@pytest.mark.parametrize("C,H,W", [(1, 16, 16), (8, 33, 40), (12, 64, 64)])
def test_synthetic_coil_maps(C, H, W):
    S = synthetic_coil_maps(C, H, W, seed=3)
    assert S.shape == (C, H, W) and S.dtype == torch.complex64
    assert torch.allclose(rss(S, dim=0), torch.ones(H, W), atol=1e-5)     # Σ|S_c|² = 1
    assert torch.allclose(coils_rss(S.unsqueeze(0)), torch.ones(1, H, W), atol=1e-5)
    assert torch.equal(S, synthetic_coil_maps(C, H, W, seed=3))
    if C > 1:
        assert not torch.allclose(S, synthetic_coil_maps(C, H, W, seed=4))
        # smooth: neighbouring pixels differ little relative to the map magnitude
        d = (S[:, 1:, :] - S[:, :-1, :]).abs().max() + (S[:, :, 1:] - S[:, :, :-1]).abs().max()
        assert d < 0.25
        # coils are spatially distinct (each coil is strongest somewhere else)
        peaks = {int(torch.argmax(S[c].abs())) for c in range(C)}
        assert len(peaks) == C


def test_rss_values():
    x = torch.tensor([[[3.0 + 0j]], [[0 + 4j]]]).unsqueeze(0)    # [1, 2, 1, 1]
    assert torch.allclose(rss(x), torch.tensor([[[5.0]]]))


def test_espirit_recovers_synthetic_maps():
    H = W = 64
    img = torch.from_numpy(_ellipse_phantom(H, W)).to(torch.complex128)
    S = synthetic_coil_maps(8, H, W, seed=1, dtype=torch.complex128)
    ksp = fft2c(S * img)                         # fully sampled (so the centre is too)
    S_hat = espirit_maps(ksp.numpy().astype(np.complex64), calib_width=20)   # numpy input
    assert S_hat.shape == S.shape and S_hat.dtype == torch.complex64
    S_hat = S_hat.to(torch.complex128)

    def corr(a, b):
        return (a * b.conj()).sum(0).abs() / (a.norm(dim=0) * b.norm(dim=0) + 1e-12)

    inside = torch.from_numpy(np.abs(_ellipse_phantom(H, W)) > 0.05)
    c = corr(S, S_hat)[inside]
    assert c.mean() >= 0.95, float(c.mean())
    # ESPIRiT maps are normalised like the synthetic ones inside the object
    assert (rss(S_hat, dim=0)[inside] - 1).abs().mean() < 0.05
    # negative control: maps of a different seed do NOT reach the threshold
    assert corr(S, synthetic_coil_maps(8, H, W, seed=7, dtype=torch.complex128))[inside].mean() < 0.95


def test_espirit_bad_input():
    with pytest.raises(ValueError, match="complex"):
        espirit_maps(np.ones((4, 32, 32)))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        espirit_maps(np.ones((1, 4, 32, 32), np.complex64))
    with pytest.raises(ValueError, match="calib_width"):
        espirit_maps(np.ones((4, 16, 16), np.complex64), calib_width=24)
