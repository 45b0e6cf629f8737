"""The sampler functions (``solvers/sampling.py``) against analytic answers, and DDS as its
authors run it (time grid end, γ scale, the ``compat`` arithmetic, CG variants).

The analytic tests use the Gaussian prior of ``tests/gaussian_prior.py`` (exact ε-network inside
the real ``Denoiser``, float64): a sampler's expected output is then one deterministic run from
``E[x_T]`` with zero noise, and is compared with the posterior mean.
"""
from __future__ import annotations

import math

import pytest
import torch

from solvers.cg import bilinear_dot, conjugate_gradient
from solvers.dds import DDS, DDS_CG_ATOL, gamma_weight
from solvers.sampling import dds_timesteps, sample_dds, sample_dps
from tests.dm_standins import MaskedFFT      # single-coil masked unitary FFT: A Aᴴ = I on the data
from tests.gaussian_prior import (ZeroNoise, gaussian_denoiser, mean_start, posterior_mean_noiseless,
                                  tweedie_gain)
from utils.rng import NoiseStreams
from physics.base import LinearOperator

H = W = 16
S = 0.5  # prior standard deviation


# ----------------------------------------------------------------------------- operators
class OrthoRows(LinearOperator):
    """Real stand-in for CT: the first ``m`` rows of a random orthogonal matrix (``A Aᵀ = I``)."""

    modality, is_complex = "CT", False
    image_shape = (H, W)
    dds_scale = 1.0      # DDS's back-projection equals this operator's adjoint (γ on either scale)

    def __init__(self, m, seed=0):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(H * W, H * W, generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64))
        self.A = q[:m]
        self.measurement_shape = (m,)

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.T

    def adjoint(self, y):
        return (y @ self.A).reshape(y.shape[0], H, W)

    def normal(self, x):
        return self.adjoint(self.forward(x))


def _problem(cplx, B=2):
    """(operator, y, μ, x) with an undersampled noiseless measurement, float64."""
    g = torch.Generator().manual_seed(1)
    if cplx:
        mu = torch.complex(0.3 + 0.1 * torch.randn(1, H, W, generator=g, dtype=torch.float64),
                           0.1 * torch.randn(1, H, W, generator=g, dtype=torch.float64))
        x = mu + S * torch.complex(torch.randn(B, H, W, generator=g, dtype=torch.float64),
                                   torch.randn(B, H, W, generator=g, dtype=torch.float64))
        mask = (torch.rand(H, W, generator=g) < 0.35).double()
        mask[0, 0] = 1.0
        op = MaskedFFT(mask)
    else:
        mu = 0.4 + 0.1 * torch.randn(1, H, W, generator=g, dtype=torch.float64)
        x = mu + S * torch.randn(B, H, W, generator=g, dtype=torch.float64)
        op = OrthoRows(m=H * W // 3)
    return op, op(x), mu, x


def _rel(a, b):
    return ((a - b).abs().norm() / b.abs().norm()).item()


# ----------------------------------------------------------------------------- the oracle
@pytest.mark.parametrize("cplx", [True, False])
def test_gaussian_oracle_is_the_mmse_denoiser(cplx):
    """Monte Carlo: the oracle's x̂₀ error is orthogonal to x_t (MMSE of a Gaussian) and its mean
    squared error is the analytic posterior variance s²(1−ᾱ)/(ᾱs² + 1 − ᾱ)."""
    mu = torch.full((1, H, W), 0.3, dtype=torch.complex128 if cplx else torch.float64)
    den = gaussian_denoiser(mu, S)
    g = torch.Generator().manual_seed(0)
    t, n = 400, 400
    x0 = mu + S * _randn((n, H, W), cplx, g)
    eps = _randn((n, H, W), cplx, g)
    x_t = den.schedule.q_sample(x0, t, eps)
    err = den(x_t, t) - x0
    a = float(den.schedule.alphas_cumprod64[t])
    var = S ** 2 * (1 - a) / (a * S ** 2 + 1 - a)
    parts = 2 if cplx else 1
    assert abs((err.abs() ** 2).mean().item() / parts / var - 1) < 0.02
    assert abs((err.conj() * x_t).real.mean().item()) < 0.02 * math.sqrt(var)


def _randn(shape, cplx, g):
    if cplx:
        return torch.complex(torch.randn(shape, generator=g, dtype=torch.float64),
                             torch.randn(shape, generator=g, dtype=torch.float64))
    return torch.randn(shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- DDS, analytic
#: DDS's last step re-denoises the clean x̂₀' at t = 0 (ᾱ₀ = 1 − 1e-4), which rescales the
#: unmeasured part by 1 + c₀(1 − √ᾱ₀) ≈ 1 + 5e-5: the expected output is the posterior mean to that.
DDS_END_BIAS = 2e-4


@pytest.mark.parametrize("cplx", [True, False])
@pytest.mark.parametrize("mode,eta", [("krylov", 0.85), ("krylov", 0.0), ("proximal", 0.85)])
def test_dds_expected_output_is_the_posterior_mean(cplx, mode, eta):
    """Noiseless undersampled data, Gaussian prior: E[DDS output] = μ + Aᴴ(y − Aμ). The DC step is
    exact and linear here (AᴴA is a projection: CG converges in 1 / 2 iterations; γ′ = 1e6 makes
    the proximal step a projection up to 1e-6), so the sampler is affine in x_T and z."""
    op, y, mu, _ = _problem(cplx)
    den = gaussian_denoiser(mu, S)
    dds = DDS({"dc_mode": mode, "gamma": 1e6, "progress": False}, den)
    pairs = dds_timesteps(1000, 10)
    ATy = op.adjoint(y)
    noise = ZeroNoise()
    out = sample_dds(den, mean_start(den.schedule, pairs[0][0], mu, 2), pairs,
                     lambda x0: dds.data_consistency(x0, y, op, ATy), noise, eta=eta)
    expected = posterior_mean_noiseless(op, y, mu)
    assert _rel(out, expected) < DDS_END_BIAS, _rel(out, expected)
    # the measured part is matched exactly (the last DC step), the rest is the prior mean
    assert _rel(op(out), y) < (1e-10 if mode == "krylov" else 1e-5)
    assert noise.draws == (len(pairs) - 2 if eta > 0 else 0)
    # a sampler that ignored the data would be far off: the test can fail
    assert _rel(mu.expand_as(expected), expected) > 0.1


@pytest.mark.parametrize("cplx", [True, False])
def test_dds_fully_sampled_noiseless_returns_x(cplx):
    """Fully sampled noiseless data: the posterior is a point mass at x; a DDS run from random
    x_T (any seed) returns x (Krylov DC: one CG iteration solves AᴴA x = Aᴴy)."""
    g = torch.Generator().manual_seed(4)
    mu = torch.full((1, H, W), 0.2, dtype=torch.complex128 if cplx else torch.float64)
    x = mu + S * _randn((1, H, W), cplx, g)
    op = MaskedFFT(torch.ones(H, W, dtype=torch.float64)) if cplx else OrthoRows(m=H * W)
    r = DDS({"dc_mode": "krylov", "nfe": 6, "progress": False}, gaussian_denoiser(mu, S), seed=3)(op(x), op)
    assert _rel(r.x_hat, x) < 1e-10


def test_dds_and_dps_without_data_return_the_prior_mean():
    """No measurement step: E[output] is the prior mean μ for DPS (ζ = 0, DDIM and DDPM steps
    preserve E[x_t] = √ᾱ_t μ exactly) and for DDS up to its last-step rescaling."""
    g = torch.Generator().manual_seed(5)
    mu = torch.complex(0.3 + 0.1 * torch.randn(1, H, W, generator=g, dtype=torch.float64),
                       0.1 * torch.randn(1, H, W, generator=g, dtype=torch.float64))
    den = gaussian_denoiser(mu, S)
    pairs = dds_timesteps(1000, 20)
    x_T = mean_start(den.schedule, pairs[0][0], mu)
    for eta in (0.0, 1.0):
        out = sample_dps(den, x_T, pairs, lambda x0: x0.abs().sum((1, 2)), ZeroNoise(), zeta=0.0, eta=eta)
        assert _rel(out, mu) < 1e-12
    out = sample_dds(den, x_T, pairs, lambda x0: x0, ZeroNoise(), eta=0.85)
    assert 1e-7 < _rel(out, mu) < DDS_END_BIAS


# ----------------------------------------------------------------------------- DPS, analytic
@pytest.mark.parametrize("cplx", [True, False])
def test_dps_step_equals_analytic_guided_ddim_step(cplx):
    """One DPS step with the Gaussian oracle: x_{t'} = √ᾱ' x̂₀ + √(1−ᾱ') ε̂ − ζ c_t Aᴴ(A x̂₀ − y)/‖A x̂₀ − y‖
    (η = 0; c_t = ∂x̂₀/∂x_t; for complex images the gradient w.r.t. (real, imag))."""
    op, y, mu, _ = _problem(cplx)
    den = gaussian_denoiser(mu, S)
    t, t_next, zeta = 600, 580, 0.7
    x_t = mean_start(den.schedule, t, mu, 2) + 0.3 * _randn((2, H, W), cplx, torch.Generator().manual_seed(2))
    seen = []

    def loss(x0):
        r = y - op(x0)
        return torch.sqrt((r.abs() ** 2).sum((1, 2, 3) if cplx else (1,)))

    out = sample_dps(den, x_t, [(t, t_next)], loss, ZeroNoise(), zeta=zeta, eta=0.0, callback=seen.append)
    a, an = (float(den.schedule.alphas_cumprod64[k]) for k in (t, t_next))
    c = tweedie_gain(den.schedule, t, S)
    x0 = mu + c * (x_t - math.sqrt(a) * mu)
    eps = math.sqrt(1 - a) * (x_t - math.sqrt(a) * mu) / (a * S ** 2 + 1 - a)
    r = op(x0) - y
    norm = r.abs().flatten(1).norm(dim=1).reshape(-1, 1, 1)
    expected = math.sqrt(an) * x0 + math.sqrt(1 - an) * eps - zeta * c * op.adjoint(r) / norm
    assert _rel(out, expected) < 1e-10
    assert _rel(seen[0]["x0"], x0) < 1e-12 and torch.allclose(seen[0]["loss"], norm.flatten())


# ----------------------------------------------------------------------------- DDS as its authors run it
def test_dds_step_to_t0_returns_dc_estimate_without_noise():
    """DDS's solver_2d.py: the step landing on t' = 0 sets x = x̂₀' (no DDIM noise), the last step
    (0, −1) returns x̂₀'; noise is drawn only for t' > 0."""
    op, y, mu, _ = _problem(True)
    den = gaussian_denoiser(mu, S)
    seen, draws = [], []
    dds = DDS({"nfe": 5, "progress": False, "log_every": 1}, den, seed=0)
    pairs = dds.timesteps()
    assert pairs[-2:] == [(200, 0), (0, -1)]

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def like(self, x):
            draws.append(x.shape)
            return self.inner.like(x)

    streams = NoiseStreams.per_slice([0, 0])          # what DDS(seed=0) draws from for 2 slices
    x_T = streams.randn((2, H, W), torch.complex128)
    out = sample_dds(den, x_T, pairs, lambda x0: dds.data_consistency(x0, y, op), Counting(streams),
                     eta=0.85, callback=seen.append)
    assert len(draws) == len(pairs) - 2
    assert [d["t_next"] for d in seen][-2:] == [0, -1]
    assert torch.equal(seen[-2]["x_next"], seen[-2]["x0_dc"]) and torch.equal(seen[-1]["x"], seen[-2]["x0_dc"])
    assert torch.equal(out, seen[-1]["x0_dc"])
    for d in seen[:-2]:   # earlier steps do add noise: x_{t'} ≠ √ᾱ' x̂₀' + c₂ ε̂
        a = den.schedule.alpha_bar(d["t_next"], d["x"])
        det = a.sqrt() * d["x0_dc"] + (1 - a).sqrt() * math.sqrt(1 - 0.85 ** 2) * d["eps"]
        assert _rel(d["x_next"], det) > 1e-3
    # the solver returns the same as the function with the same streams
    r = DDS({"nfe": 5, "progress": False}, den, seed=0)(y, op)
    assert torch.equal(r.x_hat, out)


def test_dds_gamma_on_dds_scale_for_ct():
    """γ on DDS's scale: for ParallelBeamCT the proximal weight is γ·π/(2V), the factor of DDS's
    back-projection AT (= ``dds_backprojection(…, "adjoint")``) over our exact Aᵀ; MRI: γ."""
    from physics.ct import ParallelBeamCT

    V = 12
    op = ParallelBeamCT(32, num_views=V)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 32, 32, generator=g, dtype=torch.float64)
    y = op(x)
    w = gamma_weight(op)
    assert w == pytest.approx(math.pi / (2 * V))
    torch.testing.assert_close(op.dds_backprojection(y, backprojector="adjoint"), w * op.adjoint(y))
    assert gamma_weight(op, "adjoint") == 1.0 and gamma_weight(MaskedFFT(torch.ones(H, W))) == 1.0
    x0 = torch.rand(1, 32, 32, generator=g, dtype=torch.float64)
    ours = DDS({"gamma": 2.0, "progress": False}, gaussian_denoiser(x0, S)).data_consistency(x0, y, op)
    adj = DDS({"gamma": 2.0 * w, "gamma_scale": "adjoint", "progress": False},
              gaussian_denoiser(x0, S)).data_consistency(x0, y, op)
    torch.testing.assert_close(ours, adj, rtol=1e-12, atol=1e-12)
    big = DDS({"gamma": 2.0, "gamma_scale": "adjoint", "progress": False},
              gaussian_denoiser(x0, S)).data_consistency(x0, y, op)
    assert _rel(big, adj) > 1e-3


def test_dds_compat_reproduces_official_mri_arithmetic():
    """compat: right-hand side x̂₀ + γ(1+i)Aᴴy and unconjugated CG products. One CG iteration
    from x̂₀ is x̂₀ + α r₀ with α = Σ r₀² / Σ r₀·M r₀ (no conjugates), computed here directly."""
    op, y, mu, _ = _problem(True, B=1)
    den = gaussian_denoiser(mu, S)
    x0 = mu + 0.2 * _randn((1, H, W), True, torch.Generator().manual_seed(7))
    gamma = 1.5

    def M(v):
        return v + gamma * op.normal(v)

    r0 = x0 + gamma * (1 + 1j) * op.adjoint(y) - M(x0)
    alpha = (r0 * r0).sum() / (r0 * M(r0)).sum()
    compat = DDS({"gamma": gamma, "compat": True, "num_cg": 1, "progress": False}, den)
    torch.testing.assert_close(compat.data_consistency(x0, y, op), x0 + alpha * r0, rtol=1e-12, atol=1e-12)
    # ours: the proximal step with true CG (converges here in 2 iterations to the exact solution)
    ours = DDS({"gamma": gamma, "num_cg": 2, "progress": False}, den).data_consistency(x0, y, op)
    exact = torch.fft.ifft2(torch.fft.fft2(x0 + gamma * op.adjoint(y), norm="ortho") / (1 + gamma * op.mask), norm="ortho")
    assert _rel(ours, exact) < 1e-12
    assert _rel(DDS({"gamma": gamma, "compat": True, "num_cg": 2, "progress": False}, den)
                .data_consistency(x0, y, op), exact) > 1e-3
    with pytest.raises(ValueError, match="noiseless MRI"):
        DDS({"compat": True, "dc_mode": "krylov", "progress": False}, den).data_consistency(x0, y, op)


# ----------------------------------------------------------------------------- CG variants
def test_bilinear_cg_solves_complex_symmetric_systems():
    """conjugate=False (DDS's products) is COCG: it solves complex *symmetric* M x = b; for real
    systems it is ordinary CG (bit for bit)."""
    g = torch.Generator().manual_seed(0)
    n, B = 6, 2
    R = torch.complex(torch.randn(B, n, n, generator=g, dtype=torch.float64),
                      torch.randn(B, n, n, generator=g, dtype=torch.float64))
    Msym = R @ R.transpose(1, 2) + 4 * torch.eye(n, dtype=torch.complex128)   # Mᵀ = M, not Hermitian
    x_true = torch.complex(torch.randn(B, n, generator=g, dtype=torch.float64),
                           torch.randn(B, n, generator=g, dtype=torch.float64))
    b = (Msym @ x_true[..., None])[..., 0]

    def apply(v):
        return (Msym @ v[..., None])[..., 0]

    x = conjugate_gradient(apply, b, torch.zeros_like(b), num_iters=3 * n, conjugate=False)
    assert (x - x_true).abs().max() < 1e-8
    assert bilinear_dot(x_true, x_true).is_complex()
    Mr = R.real @ R.real.transpose(1, 2) + torch.eye(n, dtype=torch.float64)
    br = b.real

    def apply_r(v):
        return (Mr @ v[..., None])[..., 0]

    assert torch.equal(conjugate_gradient(apply_r, br, num_iters=4, conjugate=False),
                       conjugate_gradient(apply_r, br, num_iters=4))


def test_cg_absolute_tolerance_freezes_small_residuals():
    A = torch.diag(torch.tensor([1.0, 3.0, 9.0], dtype=torch.float64))
    b = torch.tensor([[1.0, 1.0, 1.0], [1e-7, 0.0, 0.0]], dtype=torch.float64)
    x = conjugate_gradient(lambda v: v @ A, b, num_iters=3, atol=DDS_CG_ATOL)
    assert torch.equal(x[1], torch.zeros(3, dtype=torch.float64))       # ‖b‖ < atol: left at x0
    torch.testing.assert_close(x[0], torch.tensor([1.0, 1 / 3, 1 / 9], dtype=torch.float64))
    with pytest.raises(ValueError, match="atol"):
        conjugate_gradient(lambda v: v, b, atol=-1.0)
