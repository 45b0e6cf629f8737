"""Diffusion-model samplers for inverse problems, as plain functions (k-diffusion style).

Each sampler is one loop over the reverse steps ``(t, t')`` of a time grid (:func:`dds_timesteps`),
and nothing else: the prior, the start ``x_T``, the noise source and the measurement step are
injected, and ``callback`` (if given) receives one dict per step. The solver classes
(``solvers/dds.py``, ``solvers/dps.py``) only build these pieces from a config and ``y``, and turn
the callback dicts into histories, callbacks and a :class:`solvers.base.Result`
(``solvers/scoremri.py`` and ``solvers/mcg.py`` likewise for :func:`sample_scoremri` and
:func:`sample_mcg`).

Shared arguments

* ``denoiser``: a :class:`models.denoiser.Denoiser` (``eps(x_t, t)`` on ``[B,H,W]`` images and
  ``.schedule``, a :class:`models.diffusion.DiffusionSchedule`); the network gets raw step indices.
* ``x``: the start ``x_T`` ``[B,H,W]`` (complex for MRI, real for CT).
* ``timesteps``: an iterable of ``(t, t')`` pairs in reverse order, ``t' = −1`` after the last step
  (``ᾱ_{−1} = 1``): :func:`dds_timesteps`, possibly wrapped in a progress bar.
* ``noise``: a :class:`utils.rng.NoiseStreams`; every draw is ``noise.like(x)`` (per-slice
  generators make slice ``b`` of a batch equal its one-slice run).
* ``callback(info)``: ``info`` holds at least ``step`` (0-based), ``t``, ``t_next``, ``x`` (= x_t),
  ``eps`` (ε̂), ``x0`` (Tweedie x̂₀) and ``x_next`` (x_{t'}); tensors are ``[B,H,W]``, detached.

Every reverse step starts with :func:`tweedie` (one network call; :func:`tweedie_grad` when the
measurement step needs a gradient through the network) and ends with :func:`ddim_next` or, for the
score-SDE-type samplers, :func:`ancestral_step` (+ :func:`langevin_step` correctors); a new sampler
adds its own measurement step between (or around) them.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch

from models.diffusion import respaced_timesteps
from utils.rng import NoiseStreams

__all__ = ["dds_timesteps", "tweedie", "tweedie_grad", "ddim_next", "ancestral_step", "langevin_step",
           "sample_dds", "sample_dps", "sample_scoremri", "sample_mcg"]

StepCallback = Callable[[dict], None]


def dds_timesteps(num_train_steps: int, num_steps: int) -> list[tuple[int, int]]:
    """DDS's respaced ``(t, t')`` pairs, descending: ``skip = T // num_steps``, steps
    ``range(0, T, skip)`` reversed, each paired with the next one and the last with ``−1``; e.g.
    ``T = 1000, num_steps = 50`` → ``(980, 960), …, (20, 0), (0, −1)`` (DDS's ``main.py`` /
    ``solver_2d.py`` grid; ``ceil(T / skip)`` steps when ``T`` is not a multiple)."""
    if num_steps < 1 or num_steps > num_train_steps:
        raise ValueError(f"the number of steps must be in [1, {num_train_steps}], got {num_steps}")
    steps = respaced_timesteps(int(num_steps), int(num_train_steps))
    return list(zip(steps, steps[1:] + [-1]))


def tweedie(denoiser, x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One network call: ``(ε̂, x̂₀)`` with ``ε̂ = ε_θ(x_t, t)`` and the Tweedie estimate
    ``x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t`` (differentiable w.r.t. ``x`` when autograd is on)."""
    eps = denoiser.eps(x, t).to(x.dtype)
    return eps, denoiser.schedule.tweedie_x0(x, eps, t)


def tweedie_grad(denoiser, x: torch.Tensor, t: int, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 guided: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """:func:`tweedie` plus a measurement loss and its gradient through the network:
    ``(ε̂, x̂₀, L, ∇_{x_t} Σ_b L_b)`` with ``L = loss_fn(x̂₀)`` ``[B]`` (all detached); without
    ``guided`` no graph is built and the gradient is ``None``. For complex images the gradient is
    w.r.t. (real, imag) (PyTorch's convention); slice ``b``'s gradient is that of its own ``L_b``."""
    x_in = x.detach().requires_grad_(guided)
    with torch.enable_grad() if guided else torch.no_grad():
        eps, x0 = tweedie(denoiser, x_in, t)
        loss = loss_fn(x0)
        grad = torch.autograd.grad(loss.sum(), x_in)[0] if guided else None
    return eps.detach(), x0.detach(), loss.detach(), grad


def ddim_next(schedule, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: int, t_next: int,
              eta: float, noise: NoiseStreams, variant: str) -> torch.Tensor:
    """``x_{t'}`` from ``x̂₀`` and ``ε̂`` (:meth:`DiffusionSchedule.ddim_step`, ``variant`` "dds" or
    "ddim"); ``x̂₀`` itself after the last step (``t' < 0``). Draws ``z = noise.like(x̂₀)`` only
    when ``η > 0`` and ``t' ≥ 0``."""
    if t_next < 0:
        return x0
    z = noise.like(x0) if eta > 0 else None
    return schedule.ddim_step(x, x0, eps, t, t_next, eta=eta, noise=z, variant=variant)


def ancestral_step(schedule, x: torch.Tensor, eps: torch.Tensor, t: int, t_next: int, eta: float,
                   noise: NoiseStreams) -> torch.Tensor:
    """Score-SDE's ancestral-sampling predictor of the VP SDE, on the respaced chain ``t → t'``:
    with ``β = 1 − ᾱ_t/ᾱ_{t'}`` and the score ``s = −ε̂/√(1−ᾱ_t)``,
    ``x_{t'} = (x_t + β·s)/√(1−β) + η·√β·z`` (the DDPM step with the "fixed large" variance
    ``β``; ``η = 1`` as score-SDE, ``η = 0`` its mean). No noise after the last step (``t' < 0``,
    score-SDE's ``denoise``): from ``t = 0`` (``β = 1 − ᾱ₀``) the mean is Tweedie's x̂₀."""
    a_t, a_next = schedule.alpha_bar(t, x), schedule.alpha_bar(t_next, x)
    beta = 1.0 - a_t / a_next
    mean = (x - beta / (1.0 - a_t).sqrt() * eps) * (a_next / a_t).sqrt()
    if t_next < 0 or eta <= 0:
        return mean
    return mean + eta * beta.sqrt() * noise.like(x)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """``‖x_b‖²`` per slice (``[B]`` real; complex: over real and imaginary parts)."""
    return (x.abs() ** 2).reshape(x.shape[0], -1).sum(dim=1)


def langevin_step(denoiser, x: torch.Tensor, t: int, snr: float,
                  noise: NoiseStreams) -> tuple[torch.Tensor, torch.Tensor]:
    """One Langevin corrector step of score-SDE at level ``t`` (one network call): score
    ``s = −ε̂/√(1−ᾱ_t)``, ``z = noise.like(x)``, step size ``ε = 2α(r‖z‖/‖s‖)²`` per slice (``r`` =
    ``snr``; ``α = 1 − β_t`` of the training schedule, score-SDE's VP rule), then
    ``x ← x + ε s + √(2ε) z``. Returns ``(x, ε [B])``; a slice with ``s = 0`` is left unchanged."""
    sched = denoiser.schedule
    eps = denoiser.eps(x, t).to(x.dtype)
    z = noise.like(x)
    a = sched.alpha_bar(t, x)
    score = -eps / (1.0 - a).sqrt()
    alpha = 1.0 - float(sched.betas64[int(t)])
    s2 = _sq_norms(score)
    moving = s2 > 0
    step = torch.where(moving, 2.0 * alpha * snr ** 2 * _sq_norms(z) / torch.where(moving, s2, torch.ones_like(s2)),
                       torch.zeros_like(s2))
    e = step.reshape(-1, *([1] * (x.ndim - 1)))
    return x + e * score + (2.0 * e).sqrt() * z, step


@torch.no_grad()
def sample_dds(denoiser, x: torch.Tensor, timesteps: Iterable[tuple[int, int]],
               data_consistency: Callable[[torch.Tensor], torch.Tensor], noise: NoiseStreams,
               eta: float = 0.85, eps_source: str = "network",
               callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Decomposed Diffusion Sampling (Chung, Lee & Ye, ICLR 2024). Per step ``(t, t')``:

    1. ``ε̂, x̂₀ = tweedie(x_t, t)`` (one NFE);
    2. ``x̂₀' = data_consistency(x̂₀)`` (e.g. a few CG steps on the proximal system);
    3. ``x_{t'} = √ᾱ_{t'}·x̂₀' + η√(1−ᾱ_{t'})·z + √(1−ᾱ_{t'})√(1−η²)·ε̂`` (DDS's own η
       coefficients; ``ε̂`` the network's, or with ``eps_source="dc"`` the one recomputed from
       ``x̂₀'``, ``(x_t − √ᾱ_t x̂₀')/√(1−ᾱ_t)``, an ablation). At ``t' ≤ 0`` the step returns
       ``x̂₀'`` itself, as DDS does (its ``solver_2d.py``: ``xt_next = x0_t_hat`` when
       ``next_t == 0``, and ᾱ = 1 at ``t' = −1``): the step to ``t' = 0`` adds no noise, and the
       last step ``(0, −1)`` denoises that clean estimate once more.

    Returns the final ``x̂₀'`` ``[B,H,W]``. ``callback`` gets the shared keys plus ``x0_dc`` (x̂₀').
    """
    if eps_source not in ("network", "dc"):
        raise ValueError(f"eps_source must be 'network' or 'dc', got {eps_source!r}")
    sched = denoiser.schedule
    for step, (t, t_next) in enumerate(timesteps):
        eps, x0 = tweedie(denoiser, x, t)
        x0_dc = data_consistency(x0)
        if t_next <= 0:
            x_next = x0_dc
        else:
            if eps_source == "dc":
                eps = sched.eps_from_x0(x, x0_dc, t)
            x_next = ddim_next(sched, x, x0_dc, eps, t, t_next, eta, noise, "dds")
        if callback is not None:
            callback({"step": step, "t": t, "t_next": t_next, "x": x, "eps": eps, "x0": x0,
                      "x0_dc": x0_dc, "x_next": x_next})
        x = x_next
    return x


def sample_dps(denoiser, x: torch.Tensor, timesteps: Iterable[tuple[int, int]],
               measurement_loss: Callable[[torch.Tensor], torch.Tensor], noise: NoiseStreams,
               zeta: float = 1.0, eta: float = 1.0,
               callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023). Per step:

    1. ``ε̂, x̂₀ = tweedie(x_t, t)`` with autograd through the network;
    2. the unconditional DDIM step of Song et al. (``variant="ddim"``; η = 1 is the DDPM
       ancestral step with the "fixed small" variance), ``x̂₀`` after the last step;
    3. guidance ``x_{t'} ← x_{t'} − ζ·∇_{x_t} L(x̂₀(x_t))`` with ``L = measurement_loss``, a
       ``[B]`` loss per slice (DPS: ``‖y − A x̂₀‖``); the gradient of ``Σ_b L_b`` gives each slice
       its own. For complex images it is the gradient w.r.t. (real, imag) (PyTorch's convention).

    ``zeta = 0`` skips the backward pass (plain DDIM/DDPM sampling). Returns the final sample.
    ``callback`` gets the shared keys plus ``loss`` (``[B]``, ``L`` at this step's x̂₀).
    """
    sched = denoiser.schedule
    guided = zeta > 0
    for step, (t, t_next) in enumerate(timesteps):
        eps, x0, loss, grad = tweedie_grad(denoiser, x, t, measurement_loss, guided)
        with torch.no_grad():
            x_next = ddim_next(sched, x, x0, eps, t, t_next, eta, noise, "ddim")
            if guided:
                x_next = x_next - zeta * grad
        if callback is not None:
            callback({"step": step, "t": t, "t_next": t_next, "x": x, "eps": eps, "x0": x0,
                      "loss": loss, "x_next": x_next})
        x = x_next
    return x


@torch.no_grad()
def sample_scoremri(denoiser, x: torch.Tensor, timesteps: Iterable[tuple[int, int]],
                    data_consistency: Callable[[torch.Tensor, int], torch.Tensor], noise: NoiseStreams,
                    snr: float = 0.16, n_corrector: int = 1, eta: float = 1.0,
                    callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Score-MRI's predictor–corrector sampler with data consistency (Chung & Ye, MedIA 2022),
    on a VP/DDPM ε-prior. Per step ``(t, t')``:

    1. predictor: ``ε̂, x̂₀ = tweedie(x_t, t)`` (one NFE) and :func:`ancestral_step` to ``t'``;
       then ``x ← data_consistency(x, t')``;
    2. corrector (``t' ≥ 0`` only): ``n_corrector`` Langevin steps (:func:`langevin_step`) at
       level ``t'`` (one NFE each, step size from ``snr``), then ``x ← data_consistency(x, t')``.

    ``data_consistency(x, t)`` acts on an iterate at noise level ``t`` (``t = −1``: the clean end).
    The last step (``0 → −1``) returns the predictor mean, i.e. the DC'd Tweedie x̂₀ (score-SDE's
    ``denoise``). NFEs: ``len(timesteps) + n_corrector·(len(timesteps) − 1)``. ``callback`` gets the
    shared keys (``x0`` = the predictor's x̂₀) plus ``step_size`` (``[B]``, the last corrector
    step's ε; 0 without corrector).
    """
    if int(n_corrector) < 0:
        raise ValueError(f"n_corrector must be >= 0, got {n_corrector}")
    sched = denoiser.schedule
    for step, (t, t_next) in enumerate(timesteps):
        eps, x0 = tweedie(denoiser, x, t)
        x_next = data_consistency(ancestral_step(sched, x, eps, t, t_next, eta, noise), t_next)
        step_size = torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
        if t_next >= 0 and n_corrector > 0:
            for _ in range(int(n_corrector)):
                x_next, step_size = langevin_step(denoiser, x_next, t_next, snr, noise)
            x_next = data_consistency(x_next, t_next)
        if callback is not None:
            callback({"step": step, "t": t, "t_next": t_next, "x": x, "eps": eps, "x0": x0,
                      "step_size": step_size, "x_next": x_next})
        x = x_next
    return x


def sample_mcg(denoiser, x: torch.Tensor, timesteps: Iterable[tuple[int, int]],
               measurement_loss: Callable[[torch.Tensor], torch.Tensor],
               projection: Callable[[torch.Tensor, int], torch.Tensor], noise: NoiseStreams,
               alpha: float = 1.0, eta: float = 1.0,
               callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Manifold-constrained gradient (MCG; Chung, Sim, Ryu & Ye, NeurIPS 2022). Per step ``(t, t')``:

    1. ``ε̂, x̂₀ = tweedie(x_t, t)`` with autograd through the network, ``L = measurement_loss(x̂₀)``
       (``[B]``; MCG: ``‖W(y − A x̂₀)‖``) and ``∇_{x_t} L`` (:func:`tweedie_grad`);
    2. the unconditional step ``x'_{t'}`` (:func:`ddim_next`, ``variant="ddim"``; η = 1 is the DDPM
       ancestral step), ``x̂₀`` after the last step;
    3. the MCG step ``x''_{t'} = x'_{t'} − α·∇_{x_t} L`` (``alpha = 0`` skips the backward pass);
    4. ``x_{t'} = projection(x''_{t'}, t')``: the measurement step at noise level ``t'``.

    Returns the final ``x_{−1}``. ``callback`` gets the shared keys plus ``loss`` (``[B]``).
    """
    sched = denoiser.schedule
    guided = alpha > 0
    for step, (t, t_next) in enumerate(timesteps):
        eps, x0, loss, grad = tweedie_grad(denoiser, x, t, measurement_loss, guided)
        with torch.no_grad():
            x_next = ddim_next(sched, x, x0, eps, t, t_next, eta, noise, "ddim")
            if guided:
                x_next = x_next - alpha * grad
            x_next = projection(x_next, t_next)
        if callback is not None:
            callback({"step": step, "t": t, "t_next": t_next, "x": x, "eps": eps, "x0": x0,
                      "loss": loss, "x_next": x_next})
        x = x_next
    return x
