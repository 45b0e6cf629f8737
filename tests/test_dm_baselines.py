"""Tests of the diffusion-model baselines: batched CG, DDS and DPS.

Uses tiny stand-ins (``tests/dm_standins.py``: masked-FFT and random-matrix operators, analytic
denoisers following the ``models.denoiser.Denoiser`` interface) so the tests are fast and
independent of the U-Net; two tests run a small reference ADM model with the real operators.
"""
from __future__ import annotations

import math

import pytest
import torch

from solvers.cg import batch_dot, conjugate_gradient
from solvers.dds import DDS
from solvers.dds import default_config as dds_config
from solvers.dps import DPS
from solvers.sampling import dds_timesteps
from tests.dm_standins import (ConvDenoiser, GaussianDenoiser, MaskedFFT, MatrixOp, OracleDenoiser,
                               reference_prior)

H = W = 32


def _complex_image(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.complex(torch.rand(B, H, W, generator=g), 0.3 * torch.randn(B, H, W, generator=g))


def _mask(frac=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = (torch.rand(H, W, generator=g) < frac).float()
    m[:4, :4] = 1.0
    return m


def _matrix_op(M=300, seed=2):
    g = torch.Generator().manual_seed(seed)
    return MatrixOp(torch.randn(M, H * W, generator=g) / math.sqrt(H * W), (H, W))


def _quiet(**kw):
    return {"progress": False, **kw}


# ----------------------------------------------------------------------------- CG
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_cg_random_hpd_batched(dtype):
    g = torch.Generator().manual_seed(0)
    B, n = 3, 4
    N = n * n
    Q = torch.randn(B, N, N, generator=g, dtype=torch.float64)
    if dtype.is_complex:
        Q = torch.complex(Q, torch.randn(B, N, N, generator=g, dtype=torch.float64))
    Ms = Q @ Q.mH + 0.5 * torch.eye(N, dtype=dtype)  # different HPD matrix per batch element
    x_true = torch.randn(B, N, generator=g, dtype=torch.float64).to(dtype)
    b = (Ms @ x_true[..., None])[..., 0].reshape(B, n, n)

    def apply(x):
        return (Ms @ x.reshape(B, N, 1)).reshape(B, n, n)

    x = conjugate_gradient(apply, b, torch.zeros_like(b), num_iters=4 * N, tol=0.0)
    err = (x.reshape(B, N) - x_true).abs().max()
    assert err < 1e-6, err
    # Fewer iterations → not solved (the test can fail).
    x2 = conjugate_gradient(apply, b, torch.zeros_like(b), num_iters=2, tol=0.0)
    assert (x2.reshape(B, N) - x_true).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cg_on_singular_normal_equations_stays_put_past_convergence(dtype):
    """CG on AᴴA x = Aᴴy (A wide, so AᴴA is singular) started at x₀ with a null-space component:
    the null-space part of x₀ must stay and the rest converge to pinv(A)y, however many iterations
    run (without the round-off freeze the iterate blew up to 1e8–1e20 past ~50 iterations)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(60, 256, generator=g, dtype=dtype)
    y = torch.randn(60, generator=g, dtype=dtype)
    x0 = torch.randn(1, 256, generator=g, dtype=dtype)
    A64 = A.double()
    pinv = torch.linalg.pinv(A64)
    x0_null = x0.double()[0] - pinv @ (A64 @ x0.double()[0])       # the part CG cannot change
    want = pinv @ y.double() + x0_null
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for n in (40, 60, 300):
        x = conjugate_gradient(lambda v: (v @ A.T) @ A, (A.T @ y)[None], x0=x0, num_iters=n)
        err = float((x[0].double() - want).norm() / want.norm())
        assert err < tol, (n, err)


def test_cg_proximal_mri_system_matches_closed_form():
    """(I + γAᴴA)x = b for masked FFT: two eigenvalues → CG exact in 2 iterations."""
    op, gamma = MaskedFFT(_mask().double()), 5.0
    g = torch.Generator().manual_seed(3)
    b = torch.complex(torch.randn(2, H, W, generator=g, dtype=torch.float64),
                      torch.randn(2, H, W, generator=g, dtype=torch.float64))
    x0 = torch.zeros_like(b)
    closed = torch.fft.ifft2(torch.fft.fft2(b, norm="ortho") / (1 + gamma * op.mask), norm="ortho")
    x = conjugate_gradient(lambda v: v + gamma * op.normal(v), b, x0, num_iters=2)
    assert (x - closed).abs().max() < 1e-10
    x1 = conjugate_gradient(lambda v: v + gamma * op.normal(v), b, x0, num_iters=1)
    assert (x1 - closed).abs().max() > 1e-2


def test_cg_real_proximal_tolerance_and_zero_rhs():
    op, gamma = _matrix_op(), 5.0
    op.A = op.A.double()
    g = torch.Generator().manual_seed(4)
    b = torch.randn(3, H, W, generator=g, dtype=torch.float64)
    b[1] = 0.0  # already solved element: must stay exactly 0, no NaN
    apply = lambda v: v + gamma * op.normal(v)  # noqa: E731
    x = conjugate_gradient(apply, b, torch.zeros_like(b), num_iters=500, tol=1e-8)
    assert torch.isfinite(x).all()
    assert torch.equal(x[1], torch.zeros_like(x[1]))
    r = b - apply(x)
    rel = torch.sqrt(batch_dot(r, r)[[0, 2]] / batch_dot(b, b)[[0, 2]])
    assert (rel < 1e-7).all(), rel


# ----------------------------------------------------------------------------- DDS
def test_dds_timesteps_match_dds_code():
    pairs = dds_timesteps(1000, 50)
    assert len(pairs) == 50 and pairs[0] == (980, 960) and pairs[-1] == (0, -1)
    assert all(t - tn == 20 for t, tn in pairs[:-1])


@pytest.mark.parametrize("mode", ["proximal", "krylov"])
def test_dds_oracle_fully_sampled_recovers_x_complex(mode):
    x_true = _complex_image(B=2)
    op = MaskedFFT(torch.ones(H, W))
    y = op(x_true)
    den = OracleDenoiser(x_true, is_complex=True)
    res = DDS(_quiet(nfe=8, dc_mode=mode), den, seed=0)(y, op)
    assert res.x_hat.shape == (2, H, W) and res.x_hat.is_complex()
    assert (res.x_hat - x_true).abs().max() < 1e-4
    assert den.calls == 8  # one NFE per step
    assert res.history["residual"][-1] < 1e-5


def test_dds_oracle_real_ct_standin():
    g = torch.Generator().manual_seed(5)
    x_true = torch.rand(1, H, W, generator=g)
    op = _matrix_op(M=H * W)  # square, full rank (almost surely)
    y = op(x_true)
    res = DDS(_quiet(nfe=5), OracleDenoiser(x_true, is_complex=False), seed=0)(y, op)
    assert not res.x_hat.is_complex()
    assert (res.x_hat - x_true).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["proximal", "krylov"])
def test_dds_data_consistency_reduces_residual(mode):
    x_true = _complex_image(B=2)
    op = MaskedFFT(_mask())
    y = op(x_true)
    # γ = 5: the proximal step leaves ‖A x − y‖ ≤ ‖A x̂₀ − y‖/(1+γ) on this single-coil mask
    dds = DDS(_quiet(nfe=5, log_every=1, dc_mode=mode, gamma=5.0), GaussianDenoiser(True), seed=0)
    # direct: one DC step on a wrong image
    x0 = torch.zeros_like(x_true)
    r_before = (op(x0) - y).abs().norm()
    r_after = (op(dds.data_consistency(x0, y, op)) - y).abs().norm()
    assert r_after < 0.5 * r_before
    # inside sampling: every logged step has ‖A x̂₀' − y‖ < ‖A x̂₀ − y‖
    res = dds(y, op)
    h = res.history
    assert len(h["residual"]) == 5
    assert all(a < 0.5 * b for a, b in zip(h["residual"], h["residual_tweedie"])), h


def test_dds_bit_identical_with_and_without_x_gt_and_seeded():
    x_true = _complex_image(B=1)
    op = MaskedFFT(_mask())
    y = op(x_true)
    den = GaussianDenoiser(True)
    cfg = _quiet(nfe=5, log_every=2)
    seen = []
    r1 = DDS(cfg, den, seed=3)(y, op)
    r2 = DDS(cfg, den, seed=3)(y, op, x_gt=x_true,
                               callback=lambda k, x, info: seen.append((k, info["x_gt"])))
    assert torch.equal(r1.x_hat, r2.x_hat)
    assert r1.history == r2.history
    assert [k for k, _ in seen] == [1, 3, 4]
    assert all(xg is x_true for _, xg in seen)
    dds = DDS(cfg, den, seed=3)
    assert torch.equal(dds(y, op).x_hat, dds(y, op).x_hat)  # repeated call: same noise
    r3 = DDS(cfg, den, seed=4)(y, op)
    assert not torch.equal(r1.x_hat, r3.x_hat)


def test_nan_measurements_raise():
    op = MaskedFFT(_mask())
    y = op(_complex_image(B=1))
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        DDS(_quiet(nfe=2), GaussianDenoiser(True))(y, op)
    with pytest.raises(ValueError, match="NaN"):
        DPS(_quiet(num_steps=2), GaussianDenoiser(True))(y, op)


def test_bad_config_and_mismatched_prior():
    with pytest.raises(ValueError, match="unknown"):
        DDS({"gama": 1.0}, GaussianDenoiser(True))
    with pytest.raises(ValueError, match="dc_mode"):
        DDS({"dc_mode": "foo"}, GaussianDenoiser(True))
    op = MaskedFFT(_mask())
    with pytest.raises(ValueError, match="is_complex"):
        DDS(_quiet(nfe=2), GaussianDenoiser(False))(op(_complex_image(B=1)), op)
    assert dds_config().nfe == 50 and dds_config().eta == 0.85 and dds_config().num_cg == 5
    # DDS's --gamma default is 1.0, on its own operator scale
    assert dds_config().gamma == 1.0 and dds_config().gamma_scale == "dds"
    with pytest.raises(ValueError, match="gamma_scale"):
        DDS({"gamma_scale": "foo"}, GaussianDenoiser(True))
    with pytest.raises(ValueError, match="needs a denoiser"):
        DPS(_quiet(num_steps=2))


# ----------------------------------------------------------------------------- DPS
@pytest.mark.parametrize("cplx", [True, False])
def test_dps_guidance_reduces_residual_vs_unguided(cplx):
    if cplx:
        x_true, op = _complex_image(B=2), MaskedFFT(_mask())
    else:
        x_true = torch.rand(2, H, W, generator=torch.Generator().manual_seed(6))
        op = _matrix_op()
    y = op(x_true)
    den = GaussianDenoiser(cplx, s=0.5, mean=0.5)

    def rel_res(x):
        r = op(x) - y
        return (torch.sqrt(batch_dot(r, r) / batch_dot(y, y))).max().item()

    guided = DPS(_quiet(num_steps=10, zeta=2.0, log_every=1), den, seed=0)(y, op)
    plain = DPS(_quiet(num_steps=10, zeta=0.0, log_every=1), den, seed=0)(y, op)
    assert torch.isfinite(torch.view_as_real(guided.x_hat) if cplx else guided.x_hat).all()
    assert rel_res(guided.x_hat) < 0.7 * rel_res(plain.x_hat), (rel_res(guided.x_hat),
                                                                 rel_res(plain.x_hat))
    assert len(guided.history["residual"]) == 10


def test_dps_bit_identical_with_and_without_x_gt_and_seeded():
    x_true = _complex_image(B=1)
    op = MaskedFFT(_mask())
    y = op(x_true)
    den = GaussianDenoiser(True)
    cfg = _quiet(num_steps=4, log_every=2)
    seen = []
    r1 = DPS(cfg, den, seed=1)(y, op)
    r2 = DPS(cfg, den, seed=1)(y, op, x_gt=x_true, callback=lambda k, x, i: seen.append(k))
    assert torch.equal(r1.x_hat, r2.x_hat) and r1.history == r2.history
    assert seen == [1, 3]
    assert not torch.equal(r1.x_hat, DPS(cfg, den, seed=2)(y, op).x_hat)


# ----------------------------------------------------------------------------- real modules
def test_dds_dps_with_real_adm_and_ct_operator():
    """Small ADM (reference checkpoint, random weights) + ParallelBeamCT, n² (32 or 64), 2 steps."""
    from physics.ct import ParallelBeamCT
    den = reference_prior("ct")
    n = den.unet.image_size
    op = ParallelBeamCT(n, num_views=12)
    x = torch.rand(1, n, n, generator=torch.Generator().manual_seed(0))
    y = op(x)
    r = DDS(_quiet(nfe=2, log_every=1), den, seed=0)(y, op)
    assert r.x_hat.shape == (1, n, n) and torch.isfinite(r.x_hat).all()
    h = r.history
    assert h["t"] == [500, 0]
    assert all(a < b for a, b in zip(h["residual"], h["residual_tweedie"])), h
    r2 = DDS(_quiet(nfe=2), den, seed=0)(y, op, x_gt=x)
    assert torch.equal(r.x_hat, r2.x_hat)
    d = DPS(_quiet(num_steps=2, zeta=0.5), den, seed=0)(y, op)  # backprop through the U-Net
    assert d.x_hat.shape == (1, n, n) and torch.isfinite(d.x_hat).all()


def test_dds_with_real_adm_and_multicoil_mri():
    from physics.mri import MultiCoilMRI
    den = reference_prior("mri")
    n = den.unet.image_size
    g = torch.Generator().manual_seed(0)
    S = torch.view_as_complex(torch.randn(4, n, n, 2, generator=g))
    S = S / (S.abs() ** 2).sum(0).sqrt()
    mask = torch.zeros(n, n)
    mask[:, ::4] = 1
    mask[:, n // 2 - 4:n // 2 + 4] = 1
    op = MultiCoilMRI(mask, S)
    x = 0.5 * torch.complex(torch.rand(1, n, n, generator=g), torch.zeros(1, n, n))
    r = DDS(_quiet(nfe=2, log_every=1), den, seed=0)(op(x), op)
    assert r.x_hat.shape == (1, n, n) and r.x_hat.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(r.x_hat)).all()
    h = r.history
    assert all(a < b for a, b in zip(h["residual"], h["residual_tweedie"])), h


# ----------------------------------------------------------------------------- batches with seeds
def _batch_problem(cplx, B=3):
    """``B`` different slices: per-slice masks (MRI) or one shared matrix (CT), float64."""
    if cplx:
        x = _complex_image(B=B, seed=7).to(torch.complex128)
        masks = torch.stack([_mask(seed=10 + b) for b in range(B)]).double()
        op = MaskedFFT(masks)
        op.image_shape = (H, W)
        singles = [MaskedFFT(masks[b]) for b in range(B)]
    else:
        x = torch.rand(B, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        op = _matrix_op()
        op.A = op.A.double()
        singles = [op] * B
    return x, op(x), op, singles


def _rel(a, b):
    return ((a - b).abs().norm() / b.abs().norm()).item()


@pytest.mark.parametrize("cplx", [True, False])
@pytest.mark.parametrize("name", ["dds", "dps", "scoremri", "mcg"])
def test_seeded_batch_equals_single_runs(name, cplx):
    """Slice b of a batch with seeds [5, 6, 7] = a single run with seed 5 / 6 / 7 (float64, the
    prior called on the whole batch); per-slice callbacks and Results match the single runs'."""
    import solvers
    from solvers.base import split_result

    if name == "scoremri" and not cplx:
        pytest.skip("Score-MRI reconstructs MRI only")
    x, y, op, singles = _batch_problem(cplx)
    den = ConvDenoiser(cplx)
    cfg = {"dds": _quiet(nfe=3, log_every=1, cg_tol=1e-4 if not cplx else 0.0),
           "dps": _quiet(num_steps=3, log_every=2, zeta=0.5),
           "scoremri": _quiet(num_steps=3, log_every=2, n_corrector=2, lam=0.7),
           "mcg": _quiet(num_steps=3, log_every=2, alpha=0.5, dc_mode="kaczmarz" if cplx else "proximal")}[name]
    cls = solvers.solver_class(name)
    seeds = [5, 6, 7]
    seen = [[] for _ in seeds]
    cbs = [lambda k, xk, info, b=b: seen[b].append((k, xk, info)) for b in range(3)]
    solver = solvers.make_solver(name, cfg, den, seeds=seeds)
    assert isinstance(solver, cls) and solver.seeds == seeds
    res = solver(y, op, x_gt=x, callback=cbs)
    parts = split_result(res)
    assert len(parts) == 3 and res.info["seeds"] == seeds
    for b, s in enumerate(seeds):
        one_seen = []
        one = cls(cfg, den, seed=s)(y[b:b + 1], singles[b], x_gt=x[b:b + 1],
                                    callback=lambda k, xk, info: one_seen.append((k, xk, info)))
        assert _rel(res.x_hat[b:b + 1], one.x_hat) < 1e-10, (b, _rel(res.x_hat[b:b + 1], one.x_hat))
        assert _rel(parts[b].x_hat, one.x_hat) < 1e-10 and parts[b].x_hat.shape == (1, H, W)
        assert parts[b].info["seed"] == s
        h1, hb = one.history, parts[b].history
        assert sorted(h1) == sorted(hb) and h1["step"] == hb["step"] and h1["t"] == hb["t"]
        for key in h1:
            assert hb[key] == pytest.approx(h1[key], rel=1e-10), key
        assert res.history["per_slice"][b] is hb
        # the per-slice callback: the single run's calls, with this slice's x, residual and x_gt
        assert [k for k, _, _ in seen[b]] == [k for k, _, _ in one_seen] and one_seen
        for (_, xb, ib), (_, x1, i1) in zip(seen[b], one_seen):
            assert xb.shape == (1, H, W) and _rel(xb, x1) < 1e-10
            assert sorted(ib) == sorted(i1) and ib["residual"] == pytest.approx(i1["residual"], rel=1e-10)
            assert torch.equal(ib["x_gt"], x[b:b + 1])
    # the batch-mean history is still there, and the per-slice residuals differ between slices
    assert res.history["residual"][-1] == pytest.approx(
        sum(p.history["residual"][-1] for p in parts) / 3, rel=1e-12)
    # without seeds every slice uses `seed`: slice 1 is not the seed-6 single run, but it is the
    # one-slice run of slice 1 with seed 5, whatever its batch mates
    shared = cls(cfg, den, seed=5)(y, op)
    assert torch.equal(shared.x_hat[0:1], cls(cfg, den, seed=5)(y, op).x_hat[0:1])
    assert _rel(shared.x_hat[1:2], res.x_hat[1:2]) > 1e-3
    assert shared.info["seed"] == 5 and "seeds" not in shared.info
    for b in range(3):
        one = cls(cfg, den, seed=5)(y[b:b + 1], singles[b])
        assert _rel(shared.x_hat[b:b + 1], one.x_hat) < 1e-10, b
        assert split_result(shared)[b].info["seed"] == 5


def test_seeded_float32_batch_matches_single_runs():
    x, y, op, singles = _batch_problem(True)
    y, x = y.to(torch.complex64), x.to(torch.complex64)
    op.mask = op.mask.float()
    den = ConvDenoiser(True)
    res = DDS(_quiet(nfe=3), den, seeds=[5, 6, 7])(y, op)
    assert res.x_hat.dtype == torch.complex64
    for b, s in enumerate([5, 6, 7]):
        single = MaskedFFT(singles[b].mask.float())
        one = DDS(_quiet(nfe=3), den, seed=s)(y[b:b + 1], single)
        assert _rel(res.x_hat[b:b + 1], one.x_hat) < 1e-5


def test_seeds_and_callbacks_must_match_batch():
    x, y, op, _ = _batch_problem(True)
    den = GaussianDenoiser(True)
    with pytest.raises(ValueError, match="seeds"):
        DDS(_quiet(nfe=2), den, seeds=[1, 2])(y, op)
    with pytest.raises(ValueError, match="seeds"):
        DPS(_quiet(num_steps=2), den, seeds=[])
    with pytest.raises(ValueError, match="callbacks"):
        DPS(_quiet(num_steps=2), den, seeds=[1, 2, 3])(y, op, callback=[None, None])
    # one callable for the whole batch: batch x and the batch-mean residual, as before
    seen = []
    r = DDS(_quiet(nfe=2, log_every=1), den, seeds=[1, 2, 3])(
        y, op, callback=lambda k, xk, info: seen.append((xk.shape, info["residual"])))
    assert [s for s, _ in seen] == [(3, H, W)] * 2
    assert [v for _, v in seen] == r.history["residual"]


def test_cg_batch_equals_single_runs_with_tolerance():
    """CG is per batch element: with an early-stopping tolerance, a batch mate that needs more
    iterations does not change an element's result (frozen elements never move)."""
    op, gamma = _matrix_op(), 5.0
    op.A = op.A.double()
    g = torch.Generator().manual_seed(8)
    b = torch.randn(3, H, W, generator=g, dtype=torch.float64)
    scale = torch.tensor([1.0, 30.0, 0.1], dtype=torch.float64).reshape(3, 1, 1)

    def apply(v):   # a different HPD operator per element → different convergence speeds
        return v + gamma * scale[: v.shape[0]] * op.normal(v)

    x0 = 0.1 * torch.randn(3, H, W, generator=g, dtype=torch.float64)
    xb = conjugate_gradient(apply, b, x0, num_iters=60, tol=1e-6, check_every=2)
    for i in range(3):
        def apply_i(v, i=i):
            return v + gamma * scale[i:i + 1] * op.normal(v)
        xi = conjugate_gradient(apply_i, b[i:i + 1], x0[i:i + 1], num_iters=60, tol=1e-6,
                                check_every=2)
        assert _rel(xb[i:i + 1], xi) < 1e-12, (i, _rel(xb[i:i + 1], xi))


@pytest.mark.parametrize("name", ["dds", "dps", "mcg"])
def test_demo_ct_settings_end_above_fbp(name):
    """The demo's CT settings of each diffusion solver (shorter chains) on a held-out slice end
    above the FBP input; MCG with the VP inpainting code's α = 1 diverged to about −40 dB here."""
    from configs.base import solver_config_for
    from configs.demo import get_config
    from models.priors import load_prior
    from physics import make_physics, simulate_measurements
    from solvers import make_solver
    from utils.data import load_dataset
    from utils.metrics import psnr

    c = get_config()
    s = load_dataset("indist_samples", "CT")[0]
    A = make_physics("SV-CT", c.physics, s)
    x = s.x_ref[None]
    y = simulate_measurements(A, x, seed=0)
    cfg = solver_config_for(c, name, "CT")
    with cfg.unlocked():
        cfg.progress = False
        if name != "dds":
            cfg.num_steps = 50
    x_hat = make_solver(name, cfg, load_prior(c.prior.ct), seed=0)(y, A).x_hat
    ref = x[0].numpy()
    assert psnr(x_hat[0].numpy(), ref) > psnr(A.input_image(y)[0].numpy(), ref)
