"""A Gaussian prior with an exact ε-network: analytic answers for testing DM samplers.

Prior ``x₀ ~ N(μ, s² I)`` (complex images: real and imaginary parts independent, each with variance
``s²``, as the 2-channel networks see them). With ``x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε`` the MMSE
predictions are affine in ``x_t``::

    x̂₀(x_t) = μ + c_t (x_t − √ᾱ_t μ),            c_t = √ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t)
    ε̂(x_t)  = √(1−ᾱ_t) (x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t)

:class:`GaussianEpsNet` is that ε̂ as a network (channels in, channels out, raw float ``t``), so
:func:`gaussian_denoiser` wraps it in the real :class:`models.denoiser.Denoiser`.

How to test a sampler with it: with this prior every quantity a sampler forms (Tweedie, DDIM
updates, an *exact* linear data-consistency step) is affine in ``x_T`` and the injected noise
``z``, so the sampler's **expected** output equals its output for ``x_T = E[x_T] = √ᾱ_T μ`` (the
mean of the true marginal at the first step ``T``) and ``z = 0`` (:class:`ZeroNoise`) — one
deterministic run instead of a Monte-Carlo average. Compare it with the posterior mean of a
linear measurement model (:func:`posterior_mean_noiseless` for ``y = A x`` with ``A Aᴴ = I``).
"""
from __future__ import annotations

import torch
from torch import nn

from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule
from utils.complex import to_channels


class GaussianEpsNet(nn.Module):
    """Exact ε̂ of the prior ``N(μ, s² I)``: ``forward(x_t [B,C,H,W], t [B] float) -> ε̂``
    (``μ`` given as an image ``[1,H,W]``; float64 tables, output in the input's dtype)."""

    def __init__(self, mu: torch.Tensor, s: float, schedule: DiffusionSchedule):
        super().__init__()
        self.register_buffer("mu", to_channels(mu).double())
        self.s2 = float(s) ** 2
        self.schedule = schedule
        self.dtype_anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.schedule.alphas_cumprod64[t.long().cpu()].to(x.device).reshape(-1, 1, 1, 1)
        xd = x.double()
        eps = (1 - a).sqrt() * (xd - a.sqrt() * self.mu) / (a * self.s2 + 1 - a)
        return eps.to(x.dtype)


def gaussian_denoiser(mu: torch.Tensor, s: float) -> Denoiser:
    """A :class:`Denoiser` whose ε̂ is exact for the prior ``N(μ, s² I)`` (``μ`` ``[1,H,W]``)."""
    sched = DiffusionSchedule()
    return Denoiser(GaussianEpsNet(mu, s, sched), sched, is_complex=torch.is_complex(mu), learn_sigma=False)


def tweedie_gain(schedule: DiffusionSchedule, t: int, s: float) -> float:
    """``c_t = ∂x̂₀/∂x_t = √ᾱ_t s² / (ᾱ_t s² + 1 − ᾱ_t)``."""
    a = float(schedule.alphas_cumprod64[t])
    return a ** 0.5 * s ** 2 / (a * s ** 2 + 1 - a)


def mean_start(schedule: DiffusionSchedule, t: int, mu: torch.Tensor, batch: int = 1) -> torch.Tensor:
    """``E[x_t] = √ᾱ_t μ`` as a ``[B,H,W]`` start."""
    return (float(schedule.alphas_cumprod64[t]) ** 0.5 * mu).expand(batch, *mu.shape[-2:]).clone()


class ZeroNoise:
    """A noise source whose every draw is 0 (``E[z]``); counts the draws."""

    def __init__(self):
        self.draws = 0

    def like(self, x: torch.Tensor) -> torch.Tensor:
        self.draws += 1
        return torch.zeros_like(x)


def posterior_mean_noiseless(physics, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Posterior mean of ``N(μ, s² I)`` given ``y = A x`` exactly, for ``A`` with orthonormal rows
    (``A Aᴴ = I``, e.g. a 0/1 mask after a unitary FFT): ``μ + Aᴴ(y − Aμ)``, whatever ``s``."""
    mu_b = mu.expand(y.shape[0], *mu.shape[-2:])
    return mu_b + physics.adjoint(y - physics.forward(mu_b))
