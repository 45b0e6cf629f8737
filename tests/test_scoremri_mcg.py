"""Score-MRI and MCG (``solvers/scoremri.py``, ``solvers/mcg.py``, their samplers in
``solvers/sampling.py``) against analytic answers, and with the reference ADM models on the real
operators.

Analytic answers use the Gaussian prior of ``tests/gaussian_prior.py`` (exact ε-network inside the
real ``Denoiser``, float64) and operators with orthonormal rows (``A Aᴴ = I``): a single-coil masked
unitary FFT (MRI) and rows of an orthogonal matrix (CT stand-in). The posterior given noiseless
``y = A x`` is then ``N(μ + Aᴴ(y − Aμ), s²(I − AᴴA))``.

* Score-MRI without corrector and MCG are affine in ``x_T`` and the injected noise (the predictor,
  the DDPM step, the DC step and the noised measurement are; MCG's gradient is not, but for this
  isotropic prior it lies in ``range(Aᴴ)`` and the exact projection removes it), so their expected
  output is one deterministic run from ``E[x_T]`` with zero noise: it must be the posterior mean.
* The Langevin corrector's step size depends on the noise draw, so Score-MRI with corrector is
  checked by Monte Carlo over a batch of seeded slices (tolerances next to the asserts).
"""
from __future__ import annotations

import math

import pytest
import torch

import solvers
from solvers.dm_common import prepare
from solvers.mcg import MCG
from solvers.mcg import default_config as mcg_config
from solvers.sampling import ancestral_step, dds_timesteps, langevin_step, sample_mcg, sample_scoremri
from solvers.scoremri import ScoreMRI
from solvers.scoremri import default_config as scoremri_config
from tests.dm_standins import MaskedFFT, MatrixOp, reference_prior
from tests.gaussian_prior import ZeroNoise, gaussian_denoiser, mean_start, posterior_mean_noiseless
from tests.test_sampling import _problem, _randn, _rel
from utils.rng import NoiseStreams

H = W = 16
S = 0.5          # prior standard deviation (tests/test_sampling.py's problems)

pytestmark = pytest.mark.usefixtures("one_thread")


def _quiet(**kw):
    return {"progress": False, **kw}


def _scoremri_dc(schedule, op, y, lam=1.0):
    """Score-MRI's DC step ``x + λAᴴ(√ᾱ_t y − A x)`` (what ScoreMRI.data_consistency computes)."""
    def dc(v, t):
        return v + lam * op.adjoint(schedule.alpha_bar(t, v).sqrt() * y - op(v))
    return dc


# ----------------------------------------------------------------------------- Score-MRI, analytic
def _expected_run(solver, op, y, mu):
    """The solver's own sampler (its DC / loss / projection closures) from E[x_T] with zero noise."""
    den = solver.denoiser
    pairs = solver.timesteps()
    noise = ZeroNoise()
    x_T = mean_start(den.schedule, pairs[0][0], mu, y.shape[0])
    return solver.sample(prepare(y, op, den), x_T, pairs, noise, lambda step: None), noise


@pytest.mark.parametrize("cplx", [True, False])
def test_scoremri_predictor_expected_output_is_the_posterior_mean(cplx):
    """Predictor + exact DC (λ = 1 with A Aᴴ = I), no corrector: E[output] = μ + Aᴴ(y − Aμ) to float64
    rounding (the ancestral step keeps E[x_t] = √ᾱ_t μ exactly; at 0 → −1 its mean is Tweedie's x̂₀).
    The real (CT-like) case runs the sampler function with the same DC (the solver is MRI-only)."""
    op, y, mu, _ = _problem(cplx)
    den = gaussian_denoiser(mu, S)
    expected = posterior_mean_noiseless(op, y, mu)
    if cplx:
        solver = ScoreMRI(_quiet(num_steps=20, n_corrector=0), den)
        out, noise = _expected_run(solver, op, y, mu)
        relaxed, _ = _expected_run(ScoreMRI(_quiet(num_steps=20, n_corrector=0, lam=0.5), den), op, y, mu)
    else:
        pairs = dds_timesteps(1000, 20)
        noise = ZeroNoise()
        out = sample_scoremri(den, mean_start(den.schedule, pairs[0][0], mu, 2), pairs,
                              _scoremri_dc(den.schedule, op, y), noise, n_corrector=0)
        relaxed = sample_scoremri(den, mean_start(den.schedule, pairs[0][0], mu, 2), pairs,
                                  _scoremri_dc(den.schedule, op, y, lam=0.5), ZeroNoise(), n_corrector=0)
    assert _rel(out, expected) < 1e-12, _rel(out, expected)
    assert _rel(op(out), y) < 1e-12
    assert noise.draws == 20 - 1                          # one predictor draw per step, none at the end
    assert _rel(mu.expand_as(expected), expected) > 0.1   # ignoring the data would fail
    # a relaxed DC step (λ = 0.5) leaves part of the data unused at the end: not the posterior mean
    assert _rel(relaxed, expected) > 1e-3


def test_scoremri_dc_targets_the_scaled_data():
    """Score-MRI's DC at level t: λ = 1 with orthonormal rows writes √ᾱ_t·y into the sampled part and
    keeps the rest (the VP form of the paper's "replace the sampled k-space by y"); y itself at t = −1."""
    op, y, mu, _ = _problem(True)
    den = gaussian_denoiser(mu, S)
    x = _randn(tuple(y.shape[:1]) + (H, W), True, torch.Generator().manual_seed(3))
    for t in (700, 0, -1):
        a = float(den.schedule.alphas_cumprod64[t]) if t >= 0 else 1.0
        out = ScoreMRI(_quiet(), den).data_consistency(x, y, op, t)
        assert _rel(op(out), math.sqrt(a) * y) < 1e-12
        assert _rel(out - op.adjoint(op(out)), x - op.adjoint(op(x))) < 1e-12
    half = ScoreMRI(_quiet(lam=0.5), den).data_consistency(x, y, op, 700)
    torch.testing.assert_close(half, x + 0.5 * op.adjoint(math.sqrt(float(den.schedule.alphas_cumprod64[700])) * y - op(x)))


def test_ancestral_step_last_mean_is_tweedie_and_noise_scale():
    """From t = 0 to −1 (β = 1 − ᾱ₀) the predictor mean is Tweedie's x̂₀; at t' ≥ 0 the noise is η√β z."""
    mu = torch.full((1, H, W), 0.3, dtype=torch.float64)
    den = gaussian_denoiser(mu, S)
    sch = den.schedule
    x = mean_start(sch, 0, mu) + 0.1 * _randn((1, H, W), False, torch.Generator().manual_seed(0))
    eps = den.eps(x, 0)
    assert _rel(ancestral_step(sch, x, eps, 0, -1, 1.0, ZeroNoise()), sch.tweedie_x0(x, eps, 0)) < 1e-14
    t, tn = 600, 550
    ones = type("Ones", (), {"like": staticmethod(torch.ones_like)})
    a, an = (float(sch.alphas_cumprod64[k]) for k in (t, tn))
    beta = 1 - a / an
    mean = ancestral_step(sch, x, eps, t, tn, 1.0, ZeroNoise())
    torch.testing.assert_close(mean, (x - beta / math.sqrt(1 - a) * eps) / math.sqrt(1 - beta))
    torch.testing.assert_close(ancestral_step(sch, x, eps, t, tn, 0.5, ones) - mean,
                               torch.full_like(x, 0.5 * math.sqrt(beta)))


def test_langevin_corrector_step_size_and_invariance():
    """The corrector's step size is score-SDE's 2α(r‖z‖/‖s‖)² per slice (α = 1 − β_t), and corrector
    steps alone keep the Gaussian marginal of x_t: mean √ᾱμ, variance ᾱs² + 1 − ᾱ per pixel. A flipped
    score sign would inflate the variance by ≈ 20 % per step, a missing score by ≈ 10 %."""
    mu = torch.complex(torch.full((1, 32, 32), 0.3, dtype=torch.float64), torch.zeros(1, 32, 32, dtype=torch.float64))
    den = gaussian_denoiser(mu, S)
    sch, t, r = den.schedule, 300, 0.16
    a = float(sch.alphas_cumprod64[t])
    v = a * S ** 2 + 1 - a
    B = 8
    streams = NoiseStreams.per_slice(list(range(B)))
    x = mean_start(sch, t, mu, B) + math.sqrt(v) * streams.randn((B, 32, 32), torch.complex128)
    # the step size of one step, recomputed from the same draw (same generators, same order)
    replay = NoiseStreams.per_slice(list(range(B)))
    replay.randn((B, 32, 32), torch.complex128)
    x1, step = langevin_step(den, x, t, r, streams)
    z = replay.like(x)
    s = -den.eps(x, t) / math.sqrt(1 - a)
    sq = lambda u: (u.abs() ** 2).reshape(B, -1).sum(1)  # noqa: E731
    expected = 2 * (1 - float(sch.betas64[t])) * r ** 2 * sq(z) / sq(s)
    torch.testing.assert_close(step, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(x1, x + step.reshape(B, 1, 1) * s + (2 * step.reshape(B, 1, 1)).sqrt() * z)
    for _ in range(4):
        x1, _ = langevin_step(den, x1, t, r, streams)
    d = torch.view_as_real(x1 - mean_start(sch, t, mu, B))
    n = d.numel()
    # Monte Carlo over n = 16384 values: sd of the mean √(v/n) ≈ 0.008, of the variance ratio 1.1 %;
    # the chain's own drift after 5 steps is ≈ +1.2 % (stationary variance v/(1 − αr²))
    assert abs(d.mean().item()) < 4 * math.sqrt(v / n)
    assert abs((d ** 2).mean().item() / v - 1.012) < 0.04


def test_scoremri_with_corrector_samples_the_posterior():
    """Monte Carlo over 64 seeded slices (one batched solve, 50 steps, one corrector step each): the
    output fits y exactly and its unmeasured part is unbiased with the posterior variance s².

    Tolerances: the unbiasedness statistic ``B‖mean_b d‖²/Σ_b‖d_b − mean‖²·(B−1)`` is ≈ χ²(dof)/dof
    (dof = 332 real unmeasured coordinates: sd 0.08) — a bias of 0.05 per pixel would give ≈ 1.6; the
    variance ratio has a Monte Carlo sd of 1 %, and the 50-step ancestral chain ("fixed large"
    variance β) overshoots it by a few per cent (measured: +4 %; predictor only: +7 %)."""
    op, y, mu, _ = _problem(True, B=1)
    B = 64
    y = y.expand(B, *y.shape[1:]).clone()
    den = gaussian_denoiser(mu, S)
    r = ScoreMRI(_quiet(num_steps=50, n_corrector=1), den, seeds=list(range(B)))(y, op)
    pm = posterior_mean_noiseless(op, y, mu)
    assert _rel(op(r.x_hat), y) < 1e-12
    d = torch.view_as_real(r.x_hat - pm)                   # unmeasured part only (A d = 0)
    dof = 2 * (H * W - int(op.mask.sum()))
    mean = d.mean(dim=0)
    spread = ((d - mean) ** 2).sum() / (B - 1)
    assert 0.7 < (B * (mean ** 2).sum() / spread).item() < 1.3
    assert abs((d ** 2).sum().item() / (B * dof) / S ** 2 - 1) < 0.1


@pytest.mark.parametrize("name", ["scoremri", "mcg"])
def test_fully_sampled_noiseless_multicoil_returns_x(name):
    """Fully sampled multi-coil data (Σ|S_c|² = 1, so AᴴA = I): the posterior is a point mass at x;
    a run from random x_T returns x (Score-MRI: λ = 1 DC; MCG: one CG iteration is the projection)."""
    from physics.mri import MultiCoilMRI

    g = torch.Generator().manual_seed(4)
    mu = torch.full((1, H, W), 0.2 + 0.1j, dtype=torch.complex128)
    x = mu + S * _randn((1, H, W), True, g)
    maps = _randn((4, H, W), True, g)
    op = MultiCoilMRI(torch.ones(H, W, dtype=torch.float64), maps / (maps.abs() ** 2).sum(0).sqrt())
    cfg = _quiet(num_steps=6) if name == "scoremri" else _quiet(num_steps=6, num_cg=1)
    r = solvers.make_solver(name, cfg, gaussian_denoiser(mu, S), seed=3)(op(x), op)
    assert _rel(r.x_hat, x) < 1e-12


# ----------------------------------------------------------------------------- MCG, analytic
@pytest.mark.parametrize("cplx", [True, False])
@pytest.mark.parametrize("measurement_noise", [True, False])
def test_mcg_expected_output_is_the_posterior_mean(cplx, measurement_noise):
    """Exact projection (one CG iteration, A Aᴴ = I): E[MCG output] = μ + Aᴴ(y − Aμ) for any α — the
    gradient of ‖W(y − A x̂₀)‖ is c_t·Aᴴ(…) here, removed by the projection. With a partial step
    ("kaczmarz" for MRI; "proximal" for the signed CT stand-in) it is not removed, so α changes the
    result (the gradient is live)."""
    op, y, mu, _ = _problem(cplx)
    den = gaussian_denoiser(mu, S)
    expected = posterior_mean_noiseless(op, y, mu)
    outs = {}
    partial = "kaczmarz" if cplx else "proximal"
    for mode, alpha in [("projection", 0.0), ("projection", 1.0), (partial, 0.0), (partial, 1.0)]:
        mcg = MCG(_quiet(num_steps=20, num_cg=1, dc_mode=mode, alpha=alpha, measurement_noise=measurement_noise),
                  den)
        outs[mode, alpha], noise = _expected_run(mcg, op, y, mu)
        assert noise.draws == (20 - 1) * (2 if measurement_noise else 1)
    for alpha in (0.0, 1.0):
        assert _rel(outs["projection", alpha], expected) < 1e-12
    assert _rel(outs[partial, 1.0], outs[partial, 0.0]) > 1e-4
    assert _rel(mu.expand_as(expected), expected) > 0.1


@pytest.mark.parametrize("cplx", [True, False])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mcg_without_measurement_step_is_dps(cplx, eta):
    """Steps 1–3 of MCG are DPS's guided step (checked against the analytic Gaussian answer in
    tests/test_sampling.py): with the identity as measurement step, MCG(α) = DPS(ζ = α) step for
    step, same noise draws. W = Aᴴ gives the same loss here (‖Aᴴr‖ = ‖r‖ for orthonormal rows)."""
    from solvers.mcg import weighted_residual_norm
    from solvers.sampling import sample_dps

    op, y, mu, _ = _problem(cplx)
    den = gaussian_denoiser(mu, S)
    pairs = dds_timesteps(1000, 5)
    x_T = mean_start(den.schedule, pairs[0][0], mu, 2) + 0.3 * _randn((2, H, W), cplx, torch.Generator().manual_seed(2))
    ref, seen_ref = [], []
    dps = sample_dps(den, x_T, pairs, lambda v: weighted_residual_norm(op, v, y, "none"),
                     NoiseStreams.per_slice([1, 2]), zeta=0.7, eta=eta, callback=seen_ref.append)
    for weighting in ("none", "input_image"):
        seen = []
        out = sample_mcg(den, x_T, pairs, lambda v: weighted_residual_norm(op, v, y, weighting),
                         lambda v, _t: v, NoiseStreams.per_slice([1, 2]), alpha=0.7, eta=eta, callback=seen.append)
        assert _rel(out, dps) < 1e-12
        for a, b in zip(seen, seen_ref):
            torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-12, atol=0)
    assert _rel(dps, sample_mcg(den, x_T, pairs, lambda v: weighted_residual_norm(op, v, y, "none"),
                                lambda v, _t: v, NoiseStreams.per_slice([1, 2]), alpha=0.0, eta=eta)) > 1e-3


def test_mcg_measurement_steps():
    """"projection" = x + A⁺(ỹ − Ax) (30 CG steps, a general real operator, against pinv);
    "proximal" = (I + γAᴴA)⁻¹(x + γAᴴỹ) (closed form for a masked FFT: 2 CG steps), → projection
    as γ → ∞; "kaczmarz" on CT = x + λ Aᵀ(ỹ − Ax)/(AᵀA·1) with λ from lam_start (t = T−1) to lam_end
    (t = −1); ỹ_t = √ᾱ_t y (+ noise), y itself at the end."""
    from physics.ct import ParallelBeamCT

    g = torch.Generator().manual_seed(0)
    mu = torch.zeros(1, H, W, dtype=torch.float64)
    den = gaussian_denoiser(mu, S)
    op = MatrixOp(torch.randn(60, H * W, generator=g, dtype=torch.float64), (H, W))
    x = torch.randn(2, H, W, generator=g, dtype=torch.float64)
    y_t = torch.randn(2, 60, generator=g, dtype=torch.float64)
    proj = MCG(_quiet(num_cg=30), den).project(x, y_t, op, 10)
    pinv = torch.linalg.pinv(op.A)
    exact = x + ((y_t - op(x)) @ pinv.T).reshape(2, H, W)
    assert _rel(proj, exact) < 1e-8 and _rel(op(proj), y_t) < 1e-8
    assert _rel(MCG(_quiet(num_cg=2), den).project(x, y_t, op, 10), exact) > 1e-3   # partial projection

    mask = (torch.rand(H, W, generator=g) < 0.4).double()
    fft_op = MaskedFFT(mask)
    xc = _randn((2, H, W), True, g)
    yc = fft_op(_randn((2, H, W), True, g))
    for gamma, tol in ((2.0, 1e-12), (1e8, 1e-6)):      # γ = 1e8: the right-hand side loses 8 digits
        prox = MCG(_quiet(dc_mode="proximal", gamma=gamma, num_cg=2), gaussian_denoiser(xc[:1], S)).project(xc, yc, fft_op, 10)
        closed = torch.fft.ifft2(torch.fft.fft2(xc + gamma * fft_op.adjoint(yc), norm="ortho") / (1 + gamma * mask), norm="ortho")
        assert _rel(prox, closed) < tol
    hard = MCG(_quiet(num_cg=1), gaussian_denoiser(xc[:1], S)).project(xc, yc, fft_op, 10)
    assert _rel(hard, xc + fft_op.adjoint(yc - fft_op(xc))) < 1e-12 and _rel(prox, hard) < 1e-6

    ct = ParallelBeamCT(H, num_views=6)
    xr = torch.rand(1, H, W, generator=g, dtype=torch.float64)
    yr = ct(torch.rand(1, H, W, generator=g, dtype=torch.float64))
    kz = MCG(_quiet(dc_mode="kaczmarz", lam_start=1.0, lam_end=0.6), den)
    assert kz.lam(999) == pytest.approx(1.0) and kz.lam(-1) == pytest.approx(0.6)
    norm = ct.normal(torch.ones(1, H, W, dtype=torch.float64))
    torch.testing.assert_close(kz.project(xr, yr, ct, -1, norm), xr + 0.6 * ct.adjoint(yr - ct(xr)) / norm)
    assert torch.equal(kz.noised_measurement(yr, ct, -1, xr, ZeroNoise()), yr)
    a = float(den.schedule.alphas_cumprod64[500])
    ones = type("Ones", (), {"like": staticmethod(torch.ones_like)})
    torch.testing.assert_close(kz.noised_measurement(yr, ct, 500, xr, ones),
                               math.sqrt(a) * yr + math.sqrt(1 - a) * ct(torch.ones_like(xr)))


# ----------------------------------------------------------------------------- solver interface
@pytest.mark.parametrize("name", ["scoremri", "mcg"])
def test_bit_identical_with_and_without_x_gt_and_seeded(name):
    op, y, mu, x = _problem(True, B=1)
    den = gaussian_denoiser(mu, S)
    cfg = _quiet(num_steps=5, log_every=2)
    seen = []
    r1 = solvers.make_solver(name, cfg, den, seed=3)(y, op)
    r2 = solvers.make_solver(name, cfg, den, seed=3)(y, op, x_gt=x,
                                                     callback=lambda k, xk, info: seen.append((k, info["x_gt"])))
    assert torch.equal(r1.x_hat, r2.x_hat) and r1.history == r2.history
    assert [k for k, _ in seen] == [1, 3, 4] and all(xg is x for _, xg in seen)
    solver = solvers.make_solver(name, cfg, den, seed=3)
    assert torch.equal(solver(y, op).x_hat, solver(y, op).x_hat)
    assert not torch.equal(r1.x_hat, solvers.make_solver(name, cfg, den, seed=4)(y, op).x_hat)
    assert r1.info["method"] == {"scoremri": "ScoreMRI", "mcg": "MCG"}[name] and len(r1.info["slices"]) == 1


@pytest.mark.parametrize("name,cfg,nfe", [("scoremri", {"n_corrector": 2}, 5 + 2 * 4), ("scoremri", {"n_corrector": 0}, 5),
                                          ("mcg", {}, 5)])
def test_info_nfe_counts_network_calls(name, cfg, nfe):
    op, y, mu, _ = _problem(True)
    den = gaussian_denoiser(mu, S)
    calls = []
    eps = den.eps
    den.eps = lambda x, t: calls.append(t) or eps(x, t)
    r = solvers.make_solver(name, _quiet(num_steps=5, **cfg), den, seeds=[0, 1])(y, op)
    assert r.info["nfe"] == len(calls) == nfe and r.info["slices"][1].info["nfe"] == nfe


def test_configs_are_validated():
    den_c = gaussian_denoiser(torch.zeros(1, H, W, dtype=torch.complex128), S)
    den_r = gaussian_denoiser(torch.zeros(1, H, W, dtype=torch.float64), S)
    bad = {"scoremri": [("num_steps", 0), ("num_steps", 2.5), ("num_steps", 1001), ("n_corrector", -1),
                        ("snr", 0.0), ("snr", float("nan")), ("lam", 2.0), ("lam", -0.1), ("eta", 1.5),
                        ("log_every", 0)],
           "mcg": [("num_steps", 0), ("num_steps", 2000), ("alpha", -1.0), ("num_cg", 0), ("lam_start", 0.0),
                   ("lam_end", 2.0), ("gamma", 0.0), ("gamma", float("inf")), ("eta", -0.1), ("dc_mode", "exact"),
                   ("weighting", "fbp"), ("gamma_scale", "x"), ("measurement_noise", 1), ("alpha", True)]}
    for name, cases in bad.items():
        for field, value in cases:
            with pytest.raises(ValueError, match=field):
                solvers.make_solver(name, {field: value}, den_c)
    with pytest.raises(ValueError, match="unknown config field"):
        ScoreMRI({"n_correctors": 2}, den_c)
    with pytest.raises(ValueError, match="for CT use mcg or dds"):
        ScoreMRI(None, den_r)
    assert MCG(None, den_r).cfg.dc_mode == "projection"
    assert isinstance(solvers.make_solver("Score-MRI", None, den_c), ScoreMRI)
    # sourced defaults (see the config comments)
    c = scoremri_config()
    assert (c.num_steps, c.n_corrector, c.snr, c.lam) == (500, 1, 0.16, 1.0)
    c = mcg_config()
    assert (c.num_steps, c.alpha, c.lam_start, c.lam_end, c.measurement_noise) == (1000, 1.0, 1.0, 0.6, True)


def test_kaczmarz_refuses_a_signed_ct_matrix():
    g = torch.Generator().manual_seed(1)
    op = MatrixOp(torch.randn(50, H * W, generator=g, dtype=torch.float64), (H, W))
    den = gaussian_denoiser(torch.zeros(1, H, W, dtype=torch.float64), S)
    with pytest.raises(ValueError, match="dc_mode='projection'"):
        MCG(_quiet(num_steps=2, dc_mode="kaczmarz"), den)(op(torch.rand(1, H, W, generator=g, dtype=torch.float64)), op)


# ----------------------------------------------------------------------------- reference ADM + real operators
def _multicoil(n, seed=0):
    from physics.mri import MultiCoilMRI

    g = torch.Generator().manual_seed(seed)
    maps = torch.view_as_complex(torch.randn(4, n, n, 2, generator=g))
    maps = maps / (maps.abs() ** 2).sum(0).sqrt()
    mask = torch.zeros(n, n)
    mask[:, ::4] = 1
    mask[:, n // 2 - 4:n // 2 + 4] = 1
    x = 0.5 * torch.complex(torch.rand(1, n, n, generator=g), torch.zeros(1, n, n))
    return MultiCoilMRI(mask, maps), x


@pytest.mark.parametrize("name", ["scoremri", "mcg"])
def test_real_adm_with_multicoil_mri(name):
    """Reference ADM (random weights, 32²) + MultiCoilMRI, 4 steps: shape, dtype, finiteness; the data
    step pulls x̂₀ towards y (its residual falls over the run)."""
    den = reference_prior("mri")
    op, x = _multicoil(den.unet.image_size)
    r = solvers.make_solver(name, _quiet(num_steps=4, log_every=1), den, seed=0)(op(x), op)
    n = den.unet.image_size
    assert r.x_hat.shape == (1, n, n) and r.x_hat.dtype == torch.complex64
    assert torch.isfinite(torch.view_as_real(r.x_hat)).all()
    h = r.history["residual"]
    assert len(h) == 4 and all(b < a for a, b in zip(h, h[1:])) and h[-1] < 0.5 * h[0], h


@pytest.mark.parametrize("mode", ["projection", "kaczmarz"])
def test_real_adm_mcg_with_ct(mode):
    from physics.ct import ParallelBeamCT

    den = reference_prior("ct")
    n = den.unet.image_size
    op = ParallelBeamCT(n, num_views=12)
    x = torch.rand(1, n, n, generator=torch.Generator().manual_seed(0))
    y = op(x)
    r = MCG(_quiet(num_steps=4, log_every=1, dc_mode=mode, alpha=0.1), den, seed=0)(y, op)
    assert r.x_hat.shape == (1, n, n) and torch.isfinite(r.x_hat).all()
    h = r.history["residual"]
    assert len(h) == 4 and all(b < a for a, b in zip(h, h[1:])), h
    if mode == "projection":      # the relaxed SIRT-type step moves less per step
        assert h[-1] < 0.5 * h[0], h
    r2 = MCG(_quiet(num_steps=4, log_every=1, dc_mode=mode, alpha=0.1), den, seed=0)(y, op, x_gt=x)
    assert torch.equal(r.x_hat, r2.x_hat)
