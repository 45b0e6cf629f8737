"""Tests for physics/ct.py + physics/ct_kernels.py (parallel-beam CT) and utils/phantoms.py
(analytic ellipse oracle)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from physics import ct
from physics.ct import ParallelBeamCT
from utils import phantoms as P

torch.set_num_threads(min(2, torch.get_num_threads()))


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    """PSNR with data_range = max of the reference (fastMRI convention)."""
    return float(10 * np.log10(ref.max() ** 2 / np.mean((x - ref) ** 2)))


def _square_chords(n: int, angles_deg, s) -> np.ndarray:
    """Exact chord length of the lines <p,(cos θ, sin θ)> = s through the square [-n/2, n/2]².

    A line lying exactly on the square's boundary counts half (the operator's edge convention).
    """
    h = n / 2.0
    out = np.zeros((len(angles_deg), len(s)))
    for v, a in enumerate(angles_deg):
        c, si = math.cos(math.radians(a)), math.sin(math.radians(a))
        for k, sk in enumerate(s):
            lo, hi, w = -np.inf, np.inf, 1.0
            # x(t) = sk c - t si, y(t) = sk si + t c
            for p0, dp in ((sk * c, -si), (sk * si, c)):
                if abs(dp) < 1e-14:
                    if abs(p0) > h + 1e-12:
                        lo, hi = 0.0, 0.0
                    elif abs(abs(p0) - h) <= 1e-12:
                        w = 0.5
                    continue
                t1, t2 = sorted(((-h - p0) / dp, (h - p0) / dp))
                lo, hi = max(lo, t1), min(hi, t2)
            out[v, k] = w * max(0.0, hi - lo)
    return out


# --------------------------------------------------------------------------------------------
# geometry / adjointness
# --------------------------------------------------------------------------------------------
GEOMETRIES = [
    dict(image_size=32, num_views=8),
    dict(image_size=33, num_views=23),
    dict(image_size=48, num_views=60),
    dict(image_size=40, num_views=30, angle_range=90.0),  # limited angle
    dict(image_size=31, num_views=20, num_detectors=50),  # parity mismatch: edge rays at 0°/90°
    dict(image_size=24, num_views=9, num_detectors=41, detector_spacing=0.7),
    dict(image_size=20, angles=[0.0, 45.0, 90.0, 135.0, 180.0, 270.0, 12.3, -30.0]),
]


@pytest.mark.parametrize("geom", GEOMETRIES, ids=lambda g: "-".join(f"{k}={v}" for k, v in g.items()))
def test_adjointness_float64(geom):
    op = ParallelBeamCT(**geom)
    g = torch.Generator().manual_seed(0)
    n = op.image_size
    for dist in ("uniform", "normal"):
        if dist == "uniform":
            x = torch.rand(3, n, n, generator=g, dtype=torch.float64)
            y = torch.rand(3, *op.sinogram_shape, generator=g, dtype=torch.float64)
        else:
            x = torch.randn(3, n, n, generator=g, dtype=torch.float64)
            y = torch.randn(3, *op.sinogram_shape, generator=g, dtype=torch.float64)
        ax, aty = op(x), op.adjoint(y)
        lhs = (ax * y).sum(dim=(1, 2))
        rhs = (x * aty).sum(dim=(1, 2))
        scale = ax.flatten(1).norm(dim=1) * y.flatten(1).norm(dim=1)
        rel = ((lhs - rhs).abs() / scale).max().item()
        assert rel <= 1e-5, f"<Ax,y> vs <x,A^T y> relative error {rel:.2e}"
        if dist == "uniform":  # no cancellation: plain relative error
            assert ((lhs - rhs).abs() / lhs.abs()).max().item() <= 1e-5
    assert op.adjointness_test() <= 1e-12  # the operator's own self-test agrees


def test_adjoint_is_exact_transpose_and_normal():
    op = ParallelBeamCT(16, num_views=7, num_detectors=25)
    a = op.matrix.to_dense()
    at = op.matrix_t.to_dense()
    assert a.shape == (7 * 25, 16 * 16)
    assert torch.equal(a.t(), at)
    assert (a >= 0).all() and a.sum() > 0
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    assert torch.allclose(op.normal(x), op.adjoint(op(x)), rtol=0, atol=1e-12)


def test_uniform_square_gives_exact_chord_lengths():
    """Projection of an all-ones image = exact chord length of the image square (no model error)."""
    for geom in (dict(image_size=16, num_views=13), dict(image_size=15, num_views=10, num_detectors=26),
                 dict(image_size=12, angles=[0, 30, 45, 90, 135, 180, 271.5])):
        op = ParallelBeamCT(**geom)
        n = op.image_size
        y = op(torch.ones(1, n, n, dtype=torch.float64))[0].numpy()
        ref = _square_chords(n, op.angles_deg, op.detector_pos)
        assert np.abs(y - ref).max() < 1e-9, geom


def test_projection_location_and_edge_split():
    """Objects project onto s = x cosθ + y sinθ (x right, y up); edge rays split 50/50."""
    n = 64
    op = ParallelBeamCT(n, angles=[0, 30, 90, 135, 200, 333])
    # a small disc (radius 3 px) centred on pixel (row 10, col 45)
    i, j = 10, 45
    xc, yc = j - (n - 1) / 2, (n - 1) / 2 - i
    disc = np.array([[1.0, 3 / (n / 2), 3 / (n / 2), xc / (n / 2), yc / (n / 2), 0.0]])
    img = torch.from_numpy(P.rasterize_ellipses(disc, n, supersample=8))[None]
    y = op(img)[0].numpy()
    for v, a in enumerate(op.angles_deg):
        w = y[v]
        assert abs(w.sum() - img.sum().item()) / img.sum().item() < 0.01  # mass is conserved
        centroid = (w * op.detector_pos).sum() / w.sum()
        expect = xc * math.cos(math.radians(a)) + yc * math.sin(math.radians(a))
        assert abs(centroid - expect) < 0.05, (a, centroid, expect)
    # detector parity differs from N → at 0° the rays lie on pixel edges: half to each side
    op2 = ParallelBeamCT(4, angles=[0.0], num_detectors=5)  # s = -2..2, edges at x = -2..2
    x = torch.arange(16, dtype=torch.float64).reshape(1, 4, 4)
    y2 = op2(x)[0, 0]
    colsum = x[0].sum(0)
    expect = torch.stack([colsum[0] / 2, (colsum[0] + colsum[1]) / 2, (colsum[1] + colsum[2]) / 2,
                          (colsum[2] + colsum[3]) / 2, colsum[3] / 2])
    assert torch.allclose(y2, expect, atol=1e-12)


def test_orientation_matches_skimage_radon():
    """Same orientation as skimage.transform.radon (odd N: both rotate about the image centre)."""
    skt = pytest.importorskip("skimage.transform")
    n = 63
    op = ParallelBeamCT(n, num_views=12)
    img = P.rasterize_ellipses(P.random_ellipses(5, 0), n, 4)
    ours = op(torch.from_numpy(img)[None])[0].numpy()
    sk = skt.radon(img, op.angles_deg, circle=False).T  # [V, 90], centre at 90 // 2 = 45
    assert op.num_detectors == 91 and sk.shape[1] == 90  # our centre (91-1)/2 = 45 as well
    ours = ours[:, :90]
    rel = np.linalg.norm(ours - sk) / np.linalg.norm(sk)
    assert rel < 0.02, rel
    assert np.linalg.norm(ours - sk[:, ::-1]) / np.linalg.norm(sk) > 0.1  # discriminating


# --------------------------------------------------------------------------------------------
# accuracy against the analytic ellipse oracle
# --------------------------------------------------------------------------------------------
def _project_raster(op, ellipses, supersample=8):
    img = P.rasterize_ellipses(ellipses, op.image_size, supersample)
    return op(torch.from_numpy(img)[None])[0].numpy()


def _oracle_error(op, y, oracle, margin=1.5, angle_offset=0.0):
    """Relative L2 error of the projection ``y`` vs the analytic sinogram of ``oracle`` on bins
    farther than ``margin`` pixels from every ellipse tangent ray."""
    n = op.image_size
    ang = op.angles_deg + angle_offset
    ya = P.ellipse_sinogram(oracle, n, ang, op.detector_pos)
    keep = P.tangent_distance(oracle, n, ang, op.detector_pos) > margin
    assert keep.mean() > 0.5  # the comparison covers most of the sinogram
    return np.linalg.norm((y - ya)[keep]) / np.linalg.norm(ya[keep])


@pytest.mark.parametrize("n,seed", [(128, 0), (127, 1), (96, 2)])
def test_forward_matches_analytic_random_ellipses(n, seed):
    op = ParallelBeamCT(n, num_views=45)
    e = P.random_ellipses(8, seed)
    err = _oracle_error(op, _project_raster(op, e), e)
    assert err <= 0.01, f"relative L2 error {err:.4f} vs analytic line integrals"


def test_forward_matches_analytic_shepp_logan_and_detects_wrong_geometry():
    op = ParallelBeamCT(256, num_views=30)
    e = P.shepp_logan_ellipses()
    y = _project_raster(op, e, supersample=4)
    err = _oracle_error(op, y, e)
    assert err <= 0.01, f"relative L2 error {err:.4f}"
    # the oracle is discriminating: a 1° angle mistake or an up/down flip breaks the 1 % bound
    assert _oracle_error(op, y, e, angle_offset=1.0) > 0.01
    e_flip = e.copy()
    e_flip[:, 4] *= -1
    e_flip[:, 5] *= -1
    assert _oracle_error(op, y, e_flip) > 0.01


def test_phantom_rasterisation_mass_matches_analytic():
    """Integral of the rasterised phantom == ∫p(s)ds of the analytic sinogram (= Σ ρ π a b)."""
    e = P.random_ellipses(5, 3)
    n = 100
    img = P.rasterize_ellipses(e, n, supersample=8)
    mass = float((e[:, 0] * np.pi * e[:, 1] * e[:, 2]).sum() * (n / 2) ** 2)
    assert abs(img.sum() - mass) / mass < 2e-3
    s = np.linspace(-80, 80, 3201)
    p = P.ellipse_sinogram(e, n, [0.0, 33.0, 120.0], s)
    assert np.allclose(np.trapezoid(p, s, axis=1), mass, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# FBP
# --------------------------------------------------------------------------------------------
def _fbp_full_vs_sparse(n, full_views, sparse_views):
    img = P.rasterize_ellipses(P.shepp_logan_ellipses(), n, supersample=4)
    x = torch.from_numpy(img)[None]
    psnr = {}
    for v in (full_views, sparse_views):
        op = ParallelBeamCT(n, num_views=v)
        y = op(x)
        rec = op.fbp(y)[0].numpy()
        psnr[v] = _psnr(rec, img)
        if v == full_views:
            # intensities are reproduced (scaling π/V) and the other filters also work
            c = np.arange(n) - (n - 1) / 2
            circ = np.hypot(c[:, None], c[None, :]) < n / 2 - 2
            assert abs(rec[circ].mean() / img[circ].mean() - 1) < 0.01
            for f in ("shepp-logan", "cosine", "hann", "ram-lak"):
                assert _psnr(op.fbp(y, filter=f)[0].numpy(), img) > 22, f
            assert torch.equal(op.input_image(y), op.fbp(y))
            assert _psnr(op.fbp(y, backprojector="adjoint")[0].numpy(), img) > 25
        else:  # the interpolating back-projector beats the Siddon transpose for FBP
            assert psnr[v] > _psnr(op.fbp(y, backprojector="adjoint")[0].numpy(), img) + 0.5
            assert torch.equal(ct.fbp(y, op), op.fbp(y))
    return psnr[full_views], psnr[sparse_views]


def test_fbp_full_vs_sparse_view_shepp_logan_128():
    """128², 180 views: FBP PSNR ≥ 29 dB on the whole image; 23 views ≥ 10 dB worse."""
    full, sparse = _fbp_full_vs_sparse(128, 180, 23)
    assert full >= 29.0 and sparse <= full - 10.0, (full, sparse)


@pytest.mark.slow
def test_fbp_full_vs_sparse_view_shepp_logan_256():
    """256², 360 views: FBP PSNR ≥ 30 dB (whole image, data_range = max of reference = 1)."""
    full, sparse = _fbp_full_vs_sparse(256, 360, 23)
    assert full >= 30.0 and sparse <= full - 10.0, (full, sparse)


def test_fbp_limited_angle_worse_and_scaled():
    n = 96
    e = P.random_ellipses(6, 4)
    img = P.rasterize_ellipses(e, n, supersample=4)
    x = torch.from_numpy(img)[None]
    full = ParallelBeamCT(n, num_views=180)
    la = ParallelBeamCT(n, num_views=90, angle_range=90.0)
    p_full = _psnr(full.fbp(full(x))[0].numpy(), img)
    p_la = _psnr(la.fbp(la(x))[0].numpy(), img)
    assert p_full > 30 and p_la < p_full - 5, (p_full, p_la)
    assert math.isclose(la.fbp_scale, math.pi / 2 / 90)
    assert math.isclose(full.fbp_scale, math.pi / 180)


def test_dds_backprojection_and_interp_backprojector():
    op = ParallelBeamCT(32, num_views=10)
    y = torch.rand(2, *op.sinogram_shape, dtype=torch.float64)
    assert torch.allclose(op.dds_backprojection(y, "adjoint"), op.adjoint(y) * math.pi / 20, atol=1e-12)
    assert torch.allclose(op.dds_backprojection(y), op.backproject(y) * math.pi / 20, atol=1e-12)
    assert torch.allclose(ct.dds_backprojection(y, op), op.dds_backprojection(y))
    # linear interpolation: a constant sinogram back-projects to V everywhere (weights sum to 1),
    # and a linear profile s ↦ s back-projects exactly to Σ_v <p, n_v>
    ones = torch.ones(1, *op.sinogram_shape, dtype=torch.float64)
    assert torch.allclose(op.backproject(ones), torch.full((1, 32, 32), 10.0, dtype=torch.float64))
    lin = torch.from_numpy(np.tile(op.detector_pos, (10, 1)))[None]
    c = np.arange(32) - 31 / 2
    th = np.radians(op.angles_deg)
    expect = (c[None, None, :] * np.cos(th)[:, None, None] + c[::-1][None, :, None] * np.sin(th)[:, None, None]).sum(0)
    assert np.allclose(op.backproject(lin)[0].numpy(), expect, atol=1e-10)
    with pytest.raises(ValueError, match="backprojector"):
        op.fbp(y, backprojector="nearest")
    # gradients flow through the interpolating FBP (its transpose, built once and kept)
    yy = y.clone().requires_grad_(True)
    w = torch.rand(2, 32, 32, dtype=torch.float64)
    (op.backproject(yy) * w).sum().backward()
    lhs = (op.backproject(y) * w).sum()
    assert torch.allclose((yy.grad * y).sum(), lhs, rtol=1e-10)
    assert op.bp_matrix_t is not None            # kept for the next backward pass


# --------------------------------------------------------------------------------------------
# dtype / batch / device / autograd / caching
# --------------------------------------------------------------------------------------------
def test_float32_matches_float64():
    op = ParallelBeamCT(64, num_views=33)
    x64 = torch.from_numpy(P.rasterize_ellipses(P.random_ellipses(5, 7), 64, 2))[None]
    y64 = op(x64)
    y32 = op(x64.float())
    assert y32.dtype == torch.float32 and op.adjoint(y32).dtype == torch.float32
    rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()
    assert rel(y32, y64) < 1e-5
    assert rel(op.adjoint(y32), op.adjoint(y64)) < 1e-5
    assert rel(op.fbp(y32), op.fbp(y64)) < 1e-4


def test_batch_consistency():
    op = ParallelBeamCT(40, num_views=17, angle_range=120.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 40, 40, generator=g, dtype=torch.float64)
    y = op(x)
    single = torch.cat([op(x[i : i + 1]) for i in range(5)])
    assert torch.allclose(y, single, rtol=0, atol=1e-12)
    adj = op.adjoint(y)
    assert torch.allclose(adj, torch.cat([op.adjoint(y[i : i + 1]) for i in range(5)]), rtol=0, atol=1e-12)
    f = op.fbp(y)
    assert torch.allclose(f, torch.cat([op.fbp(y[i : i + 1]) for i in range(5)]), rtol=0, atol=1e-12)


def test_autograd_gives_adjoint():
    op = ParallelBeamCT(24, num_views=11)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 24, 24, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, *op.sinogram_shape, generator=g, dtype=torch.float64)
    loss = 0.5 * ((op(x) - y) ** 2).sum()
    loss.backward()
    assert torch.allclose(x.grad, op.adjoint(op(x.detach()) - y), atol=1e-10)
    yy = y.clone().requires_grad_(True)
    (op.adjoint(yy) * x.detach()).sum().backward()
    assert torch.allclose(yy.grad, op(x.detach()), atol=1e-10)


def test_cache_and_module_to():
    op1 = ParallelBeamCT(30, num_views=7)
    op2 = ParallelBeamCT(30, num_views=7)
    assert op1.matrix is op2.matrix  # built once per geometry
    op3 = ParallelBeamCT(30, num_views=7, angle_range=90.0)
    assert op3.matrix is not op1.matrix
    x = torch.rand(1, 30, 30, dtype=torch.float64)
    ref = op1(x)
    op1.to(torch.float32)
    assert op1.matrix.dtype == torch.float32
    assert torch.allclose(op1(x.float()).double(), ref, rtol=1e-5)
    assert torch.allclose(op1(x), ref, rtol=1e-6)  # float64 input still works after .to()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    op = ParallelBeamCT(64, num_views=20)
    x = torch.rand(3, 64, 64, dtype=torch.float32)
    y_cpu, b_cpu = op(x), op.fbp(op(x))
    y_gpu = op(x.cuda())
    assert y_gpu.is_cuda
    assert torch.allclose(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    assert torch.allclose(op.fbp(y_gpu).cpu(), b_cpu, rtol=1e-4, atol=1e-4)
    opg = ParallelBeamCT(64, num_views=20).cuda()
    xg = torch.rand(2, 64, 64, dtype=torch.float64, device="cuda")
    yg = torch.rand(2, 20, opg.num_detectors, dtype=torch.float64, device="cuda")
    lhs, rhs = (opg(xg) * yg).sum(), (xg * opg.adjoint(yg)).sum()
    assert abs(lhs - rhs).item() / abs(lhs).item() < 1e-10


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_error():
    op = ParallelBeamCT(16, num_views=5)
    good = torch.zeros(1, 16, 16)
    cases = [
        (lambda: op(torch.zeros(16, 16)), "shape"),
        (lambda: op(torch.zeros(1, 16, 15)), "shape"),
        (lambda: op(torch.zeros(1, 16, 16, dtype=torch.complex64)), "complex"),
        (lambda: op(torch.full((1, 16, 16), float("nan"))), "nan"),
        (lambda: op(good.clone().index_fill_(1, torch.tensor([3]), float("inf"))), "inf"),
        (lambda: op(torch.zeros(1, 16, 16, dtype=torch.int64)), "dtype"),
        (lambda: op.adjoint(torch.zeros(1, 5, 7)), "sinogram"),
        (lambda: op.adjoint(torch.zeros(5, op.num_detectors)), "sinogram"),
        (lambda: op.fbp(op(good), filter="butterworth"), "filter"),
        (lambda: op.fbp(torch.zeros(1, 5, op.num_detectors, dtype=torch.complex64)), "complex"),
        (lambda: ParallelBeamCT(16, num_views=0), "num_views"),
        (lambda: ParallelBeamCT(16, num_views=2.5), "num_views"),
        (lambda: ParallelBeamCT(1, num_views=3), "image_size"),
        (lambda: ParallelBeamCT(16, num_views=3, angle_range=-10), "angle_range"),
        (lambda: ParallelBeamCT(16, num_views=3, num_detectors=0), "num_detectors"),
        (lambda: ParallelBeamCT(16, angles=[0.0, float("nan")]), "nan"),
        (lambda: ParallelBeamCT(16, angles=[]), "angles"),
        (lambda: ct.fbp(op(good), "not an operator"), "ParallelBeamCT"),
        (lambda: P.rasterize_ellipses(np.zeros((2, 5)), 16), "ellipses"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError) as exc:
            fn()
        assert word.lower() in str(exc.value).lower(), (word, str(exc.value))


def test_default_geometry():
    op = ParallelBeamCT(256, num_views=4, angle_range=90)
    assert op.num_detectors == 364 and op.num_detectors >= math.sqrt(2) * 256
    assert ParallelBeamCT(255, num_views=1).num_detectors == 361  # odd N → odd D (≥ 360.6)
    assert np.allclose(op.angles_deg, [0, 22.5, 45, 67.5])
    assert op.image_shape == (256, 256) and op.is_complex is False
    assert op.detector_pos[0] == -op.detector_pos[-1]
