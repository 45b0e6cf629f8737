"""Classical baselines (solvers/cgsense.py, tv.py, l1wavelet.py): each against an independent
solution of its problem on a small instance, plus the solver interface (seeds, batches, x_gt,
support, config checks).

Tolerances: the direct solves are float64 LAPACK (≈1e-13); CG in float64 reaches them to ~1e-9 in
as many iterations as unknowns on the well-conditioned problems used here; PDHG converges linearly
on the strongly convex problems (injective A) and is run until its change per iteration is far
below the tolerance; the scipy SLSQP reference solves the exact (non-smoothed) epigraph form of
the dual of the TV problem (a smooth QP over disks) with ftol 1e-14, the two agreeing to ~1e-9.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import solvers
from physics import MultiCoilMRI, ParallelBeamCT, stack_physics
from physics.coils import synthetic_coil_maps
from physics.masks import get_mask
from solvers.cgsense import CGSense
from solvers.classical import operator_norm
from solvers.l1wavelet import L1Wavelet, sigpy_problem
from solvers.tv import TV, gradient, gradient_adjoint, tv_norm
from tests.dm_standins import MaskedFFT, MatrixOp

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ("cgsense", "tv", "l1wavelet")


def quiet(**kw):
    return {"progress": False, **kw}


def dense(op, shape, dtype):
    """The matrix of ``op`` ``[B=1,H,W] → [1,...]`` column by column (float64 / complex128)."""
    n = shape[0] * shape[1]
    eye = torch.eye(n, dtype=dtype).reshape(n, *shape)
    return torch.stack([op(eye[i:i + 1]).reshape(-1) for i in range(n)], dim=1)


def complex_image(B, H, W, seed=0):
    g = torch.Generator().manual_seed(seed)
    mag = torch.rand(B, H, W, generator=g, dtype=torch.float64)
    return (mag * torch.exp(1j * torch.rand(B, H, W, generator=g, dtype=torch.float64))).to(torch.complex128)


def small_mri(H=8, W=8, C=4, acc=2, seed=0):
    """Random (rough) coil maps: a well-conditioned SENSE problem, unlike smooth maps at 8×8."""
    mask = get_mask("uniform1d", (H, W), acc, 0.25, seed=seed)
    return MultiCoilMRI(mask, complex_image(C, H, W, seed=seed + 10) + 0.5)


class ComplexMatrixOp(MatrixOp):
    """Complex A ∈ C^{M×HW} with the MRI modality (test stand-in)."""

    modality, is_complex = "MRI", True

    def adjoint(self, y):
        return (y @ self.A.conj()).reshape(y.shape[0], *self.image_shape)


def random_op(M, H, W, complex_=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(M, H * W, generator=g, dtype=torch.float64)
    if complex_:
        return ComplexMatrixOp(torch.complex(A, torch.randn(M, H * W, generator=g, dtype=torch.float64)) / math.sqrt(2), (H, W))
    return MatrixOp(A, (H, W))


# ------------------------------------------------------------------------------- CG-SENSE / CGLS
def test_cgsense_equals_direct_solve_of_the_normal_equations():
    A = small_mri()
    x = complex_image(1, 8, 8)
    y = A(x)
    N = dense(A.normal, (8, 8), torch.complex128)
    evals = torch.linalg.eigvalsh(N)
    assert float(evals.min()) > 1e-3                       # invertible: the solution is unique
    direct = torch.linalg.solve(N, A.adjoint(y).reshape(-1)).reshape(1, 8, 8)
    assert torch.allclose(direct, x, atol=1e-10)           # noiseless and invertible → x itself
    res = solvers.make_solver("cgsense", quiet(num_iters=150))(y, A)   # 64 unknowns; extra
    assert res.info["algorithm"] == "CG-SENSE"                           # iterations absorb rounding
    assert float((res.x_hat - direct).norm() / direct.norm()) < 1e-9
    # noisy data: still the normal-equation solution, no longer x
    g = torch.Generator().manual_seed(1)
    yn = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64) * A.measurement_mask(y)
    direct_n = torch.linalg.solve(N, A.adjoint(yn).reshape(-1)).reshape(1, 8, 8)
    x_n = solvers.make_solver("cgsense", quiet(num_iters=150))(yn, A).x_hat
    assert float((x_n - direct_n).norm() / direct_n.norm()) < 1e-9
    # the iteration count matters: 3 iterations are far from the solution (the test can fail)
    assert (solvers.make_solver("cgsense", quiet(num_iters=3))(y, A).x_hat - direct).abs().max() > 1e-3


def test_cgls_ct_reaches_the_minimum_norm_least_squares_solution():
    """Underdetermined CT (fewer rays than pixels): CG from 0 stays in range(Aᵀ), so it converges
    to the minimum-norm least-squares solution pinv(A) y."""
    A = ParallelBeamCT(8, num_views=4)
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = A(x)
    M = dense(A, (8, 8), torch.float64)
    assert M.shape[0] < M.shape[1]
    pinv = (torch.linalg.pinv(M) @ y.reshape(-1)).reshape(1, 8, 8)
    res = solvers.make_solver("cgsense", quiet(num_iters=200))(y, A)
    assert res.info["algorithm"] == "CGLS"
    assert float((res.x_hat - pinv).norm() / pinv.norm()) < 1e-6
    assert float((res.x_hat - x).norm() / x.norm()) > 0.05   # not x: the null space is not seen


def test_sirt_converges_to_the_weighted_least_squares_solution():
    """SIRT's fixed point solves Aᵀ R (y − A x) = 0 (R: inverse ray sums) with C > 0.  Here the
    smallest eigenvalue of C^½AᵀRAC^½ is 0.004, so 4000 steps of ω = 1.5 contract the error by
    (1 − 0.006)^4000 ≈ 1e-10."""
    A = ParallelBeamCT(5, num_views=30)
    x = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    y = A(x) + 0.05 * torch.randn(A(x).shape, generator=g, dtype=torch.float64)
    M = dense(A, (5, 5), torch.float64)
    rows = M.sum(dim=1)
    R = torch.where(rows > 0, 1 / rows, torch.zeros_like(rows))
    assert torch.linalg.matrix_rank(M) == 25
    wls = torch.linalg.solve(M.T @ (R[:, None] * M), M.T @ (R * y.reshape(-1))).reshape(1, 5, 5)
    res = solvers.make_solver("cgsense", quiet(method="sirt", num_iters=4000, relax=1.5))(y, A)
    assert res.info["algorithm"] == "SIRT"
    assert float((res.x_hat - wls).norm() / wls.norm()) < 1e-7
    short = solvers.make_solver("cgsense", quiet(method="sirt", num_iters=20))(y, A)
    assert float((short.x_hat - wls).norm() / wls.norm()) > 1e-3


def test_sirt_is_ct_only():
    A = small_mri()
    with pytest.raises(ValueError, match="sirt.*CT method"):
        solvers.make_solver("cgsense", quiet(method="sirt"))(A(complex_image(1, 8, 8)), A)


# ------------------------------------------------------------------------------------- TV
def test_gradient_adjoint_is_exact():
    g = torch.Generator().manual_seed(0)
    x = complex_image(2, 5, 7)
    q = torch.complex(torch.randn(2, 2, 5, 7, generator=g, dtype=torch.float64),
                      torch.randn(2, 2, 5, 7, generator=g, dtype=torch.float64))
    lhs = torch.sum(gradient(x).conj() * q)
    rhs = torch.sum(x.conj() * gradient_adjoint(q))
    assert abs(complex(lhs - rhs)) < 1e-12 * abs(complex(lhs))
    n = dense(lambda v: gradient(v), (5, 7), torch.float64)
    assert float(torch.linalg.matrix_norm(n, 2)) ** 2 <= 8.0                 # ‖D‖² ≤ 8 (step sizes)


@pytest.mark.parametrize("complex_", [False, True])
def test_tv_with_zero_lambda_is_least_squares(complex_):
    A = random_op(60, 6, 6, complex_=complex_, seed=1)                 # injective: unique minimiser
    x = complex_image(1, 6, 6) if complex_ else torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = A(x) + 0.1 * A(torch.ones_like(x))                             # inconsistent data
    M = dense(A, (6, 6), x.dtype)
    ls = torch.linalg.lstsq(M, y.reshape(-1, 1)).solution.reshape(1, 6, 6)
    res = TV(quiet(lam=0.0, num_iters=3000))(y, A)
    assert float((res.x_hat - ls).norm() / ls.norm()) < 1e-8


@pytest.mark.parametrize("complex_", [False, True])
def test_tv_denoising_a_step_has_the_analytic_solution(complex_):
    """A unitary (full-mask FFT / identity), u = a on the left m columns, b on the rest: TV moves
    each plateau towards the other by λ/(its width) along b − a (the 1-D ROF solution; rows are
    identical, so the vertical differences vanish)."""
    H, W, m, lam = 6, 10, 4, 0.05
    a, b = (0.2 + 0.1j, 0.9 - 0.3j) if complex_ else (0.2, 0.9)
    u = torch.full((1, H, W), b, dtype=torch.complex128 if complex_ else torch.float64)
    u[..., :m] = a
    if complex_:
        A = MaskedFFT(torch.ones(H, W, dtype=torch.float64))
    else:
        A = MatrixOp(torch.eye(H * W, dtype=torch.float64), (H, W))
    unit = (b - a) / abs(b - a)
    expected = u.clone()
    expected[..., :m] += lam / m * unit
    expected[..., m:] -= lam / (W - m) * unit
    res = TV(quiet(lam=lam, num_iters=3000))(A(u), A)
    assert (res.x_hat - expected).abs().max() < 1e-7
    obj = res.history["objective"]
    assert obj[-1] == pytest.approx(lam * H * (abs(b - a) - lam / m - lam / (W - m)) + 0.5 * H * lam ** 2 * (1 / m + 1 / (W - m)), rel=1e-6)


def test_tv_matches_an_independent_scipy_solve():
    """Generic injective A: PDHG against scipy's SLSQP on the dual problem
    max_{|q_i| ≤ λ} −½ bᵀ(AᵀA)⁻¹b, b = Aᵀy − Dᵀq, whose maximiser gives x = (AᵀA)⁻¹ b
    (a different formulation and a different algorithm)."""
    from scipy.optimize import minimize

    H = W = 5
    n, lam = H * W, 0.3
    A = random_op(40, H, W, seed=4)
    x0 = torch.zeros(1, H, W, dtype=torch.float64)
    x0[:, 1:4, 1:3] = 1.0
    y = A(x0) + 0.2 * torch.randn(1, 40, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    Am, yv = A.A.numpy(), y.reshape(-1).numpy()
    D = dense(lambda v: gradient(v), (H, W), torch.float64).numpy()          # [2n, n]
    Ninv = np.linalg.inv(Am.T @ Am)
    Aty = Am.T @ yv

    def neg_dual(q):
        b = Aty - D.T @ q
        return 0.5 * b @ Ninv @ b

    def grad(q):
        return -D @ (Ninv @ (Aty - D.T @ q))

    ref = minimize(neg_dual, np.zeros(2 * n), jac=grad, method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda q: lam ** 2 - q[:n] ** 2 - q[n:] ** 2,
                                 "jac": lambda q: np.hstack([np.diag(-2 * q[:n]), np.diag(-2 * q[n:])])}],
                   options={"maxiter": 3000, "ftol": 1e-14})
    assert ref.success, ref.message
    x_ref = torch.from_numpy(Ninv @ (Aty - D.T @ ref.x)).reshape(1, H, W)
    res = TV(quiet(lam=lam, num_iters=4000))(y, A)
    assert float((res.x_hat - x_ref).norm() / x_ref.norm()) < 1e-6
    obj_ref = 0.5 * float(((A(x_ref) - y) ** 2).sum()) + lam * float(tv_norm(x_ref))
    assert res.history["objective"][-1] <= obj_ref * (1 + 1e-10)
    # strong duality: the dual optimum equals the primal one (the reference is a solution)
    assert 0.5 * float(yv @ yv) - ref.fun == pytest.approx(res.history["objective"][-1], rel=1e-9)
    # the regulariser acts: the λ = 0 solution is far from it
    ls = TV(quiet(lam=0.0, num_iters=2000))(y, A).x_hat
    assert float((ls - x_ref).norm() / x_ref.norm()) > 0.01          # ≫ the 1e-6 agreement above


def test_operator_norm_power_iteration():
    A = random_op(30, 4, 4, seed=6)
    s_max = float(torch.linalg.matrix_norm(A.A, 2))
    est = operator_norm(A, torch.zeros(3, 4, 4, dtype=torch.float64), 200)
    assert est.shape == (3,) and torch.allclose(est, torch.full((3,), s_max, dtype=torch.float64), rtol=1e-6)
    assert bool(torch.all(est <= s_max * (1 + 1e-12)))


# ------------------------------------------------------------------------------ L1-wavelet
def test_sigpy_sense_operator_equals_ours():
    """sigpy's Sense(mps, weights=M²) applied to x equals A x, for a 0/1 and a weighting mask."""
    import sigpy.mri

    H, W, C = 16, 12, 4
    maps = synthetic_coil_maps(C, H, W, seed=1).to(torch.complex128)
    x = complex_image(1, H, W)
    binary = get_mask("gaussian1d", (H, W), 3, 0.2, seed=0).double()
    weighted = binary * torch.linspace(0.5, 1.5, W, dtype=torch.float64)
    for mask in (binary, weighted):
        A = MultiCoilMRI(mask, maps)
        y = A(x)
        y_s, mps, weights = sigpy_problem(y[0], A)
        S = sigpy.mri.linop.Sense(mps, weights=weights)
        assert np.allclose(S(x[0].numpy()), y[0].numpy(), atol=1e-12)
        assert np.allclose(weights ** 0.5 * y_s, y[0].numpy(), atol=1e-12)     # sigpy's data term is ours
        assert np.allclose(S.H(y[0].numpy()), A.adjoint(y)[0].numpy(), atol=1e-12)


def _shipped_mri_slice():
    from physics import make_physics
    from utils.data import load_dataset
    import configs.demo_mri

    sample = load_dataset("indist_samples", "MRI")[0]
    A = make_physics("MRI-multi", configs.demo_mri.get_config().physics, sample)
    return A, sample.x_ref[None]


def test_l1wavelet_objective_decreases_and_beats_zero_filled():
    from utils.metrics import psnr

    A, x = _shipped_mri_slice()
    y = A(x)
    res = L1Wavelet(quiet(lam=1e-3, num_iters=60, log_every=5))(y, A)
    obj = res.history["objective"]
    zero = 0.5 * float((y.abs() ** 2).sum())                              # objective at x₀ = 0
    assert obj[-1] < 0.2 * zero
    assert obj[-1] <= min(obj) + 1e-6 * abs(obj[-1])                      # the last logged is the lowest
    assert all(b <= a * (1 + 1e-3) for a, b in zip(obj, obj[1:]))         # FISTA: (almost) monotone here
    zf, out = psnr(A.input_image(y), x), psnr(res.x_hat, x)
    assert out > zf + 2.0, (out, zf)
    assert res.history["residual"][-1] < res.history["residual"][0]


def test_l1wavelet_is_mri_only():
    A = ParallelBeamCT(8, num_views=4)
    with pytest.raises(ValueError, match="L1-wavelet reconstructs MRI only"):
        L1Wavelet(quiet())(A(torch.rand(1, 8, 8)), A)


# ------------------------------------------------------------------------------- interface
def _problem(name, B=2, dtype=torch.float64):
    """A batch of B slices with per-slice operators (MRI) or a shared geometry (CT); float64 by
    default, so that batched and one-slice kernels agree to ~1e-12.  Both problems are
    overdetermined: on a rank-deficient one CG's late iterates amplify rounding differences
    exponentially (1e-16 → 1e-3 in 15 iterations for 6 views of 12×12)."""
    if name == "ct":
        A = ParallelBeamCT(12, num_views=24)
        x = torch.rand(B, 12, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
        return [A] * B, x, A(x)
    ops = [MultiCoilMRI(get_mask("uniform1d", (12, 10), 2, 0.2, seed=b), synthetic_coil_maps(3, 12, 10, seed=b))
           for b in range(B)]
    x = complex_image(B, 12, 10).to(torch.complex128 if dtype == torch.float64 else torch.complex64)
    A = stack_physics(ops)
    return ops, x, A(x)


# CG on CT stops at 7 iterations: from there on its iterates amplify rounding differences ~10× per
# iteration (a batched and a one-slice product differ by 1e-16 at first, 1e-5 after 15 iterations).
CASES = [("cgsense", "mri", {}), ("cgsense", "ct", {"num_iters": 7}), ("cgsense", "ct", {"method": "sirt"}),
         ("tv", "mri", {"lam": 1e-3}), ("tv", "ct", {"lam": 0.05}), ("l1wavelet", "mri", {})]


@pytest.mark.parametrize("name,kind,cfg", CASES)
def test_batch_equals_one_slice_runs_and_x_gt_is_not_used(name, kind, cfg):
    ops, x, y = _problem(kind)
    A = stack_physics(ops)
    cfg = quiet(**{"num_iters": 15, "log_every": 4, **cfg})
    K = cfg["num_iters"]
    logged = [k for k in range(K) if (k + 1) % 4 == 0 or k == K - 1]
    calls = [[], []]
    cbs = [lambda k, xb, info, b=b: calls[b].append((k, xb.shape, info["x_gt"] is not None)) for b in range(2)]
    batched = solvers.make_solver(name, cfg, seeds=[5, 6])(y, A, x_gt=x, callback=cbs)
    blind = solvers.make_solver(name, cfg, seeds=[5, 6])(y, A)
    assert torch.equal(batched.x_hat, blind.x_hat)                       # x_gt never reaches the solve
    assert batched.history["objective"] == blind.history["objective"]
    assert [c[0] for c in calls[0]] == logged and all(c[1] == (1, *x.shape[1:]) and c[2] for c in calls[0])
    slices = solvers.base.split_result(batched)
    assert [s.info["seed"] for s in slices] == [5, 6]
    for b in range(2):
        one = solvers.make_solver(name, cfg, seed=5 + b)(y[b:b + 1], ops[b])
        assert torch.allclose(slices[b].x_hat, one.x_hat, rtol=0, atol=1e-9 * float(one.x_hat.abs().max()))
        assert slices[b].history["objective"] == pytest.approx(one.history["objective"], rel=1e-9)
        assert slices[b].history["step"] == one.history["step"] == logged
    assert batched.x_hat.dtype == (torch.complex128 if kind == "mri" else torch.float64)
    # float32 measurements give a float32 image, close to the float64 one
    ops32, _, y32 = _problem(kind, dtype=torch.float32)
    r32 = solvers.make_solver(name, cfg)(y32, stack_physics(ops32))
    assert r32.x_hat.dtype == (torch.complex64 if kind == "mri" else torch.float32)
    assert float((r32.x_hat - blind.x_hat).norm() / blind.x_hat.norm()) < 1e-2
    assert batched.info["iterations"] == K and batched.info["seeds"] == [5, 6]


@pytest.mark.parametrize("name", NAMES)
def test_result_restricted_to_the_support(name):
    H, W = 12, 10
    maps = synthetic_coil_maps(3, H, W, seed=0)
    maps[:, :3] = 0                                           # the object does not reach the top rows
    A = MultiCoilMRI(get_mask("uniform1d", (H, W), 2, 0.2, seed=0), maps)
    assert float(A.image_support()[0, :3].sum()) == 0
    x = complex_image(1, H, W).to(torch.complex64)
    out = solvers.make_solver(name, quiet(num_iters=5))(A(x), A).x_hat
    assert torch.all(out[:, :3] == 0) and bool(out[:, 3:].abs().sum() > 0)


@pytest.mark.parametrize("name", NAMES)
def test_config_ranges_are_checked(name):
    for bad in ({"num_iters": 0}, {"num_iters": -3}, {"num_iters": 2.5}, {"num_iters": 10 ** 9},
                {"log_every": 0}, {"progress": "yes"}, {"no_such_field": 1}):
        with pytest.raises(ValueError):
            solvers.make_solver(name, bad)
    if name != "cgsense":
        for lam in (-1e-3, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="lam"):
                solvers.make_solver(name, {"lam": lam})
    ops, x, y = _problem("mri", B=2)
    with pytest.raises(ValueError, match="seeds"):
        solvers.make_solver(name, quiet(num_iters=2), seeds=[1, 2, 3])(y, stack_physics(ops))
    with pytest.raises(ValueError, match="NaN or Inf"):
        solvers.make_solver(name, quiet(num_iters=2))(y * float("nan"), stack_physics(ops))


def test_registry_and_configs():
    from configs.base import get_base_config

    for alias, name in (("CG-SENSE", "cgsense"), ("cgls", "cgsense"), ("l1-wavelet", "l1wavelet"), ("TV", "tv")):
        assert solvers.canonical(alias) == name
    c = get_base_config()
    for name in NAMES:
        assert not solvers.needs_prior(name) and not solvers.takes_perf(name)
        assert c.solver_cfg[name].num_iters == solvers.default_config(name).num_iters
    with pytest.raises(ValueError, match="method"):
        CGSense({"method": "lsqr"})
    with pytest.raises(ValueError, match="relax"):
        CGSense({"relax": 2.0})
    with pytest.raises(ValueError, match="wave_name"):
        L1Wavelet({"wave_name": "nope"})
