"""Variance-preserving diffusion schedule, Tweedie denoising and DDIM/DDS updates.

Math (DDPM, linear β as in DDS / guided-diffusion)::

    β_t = linspace(β_start, β_end, T)   (float64),      t = 0 … T−1
    ᾱ_t = Π_{s≤t} (1 − β_s)                              (float64, then stored float32)
    q(x_t | x_0):  x_t = √ᾱ_t · x_0 + √(1−ᾱ_t) · ε,  ε ~ N(0, I)
    Tweedie:       x̂_0 = (x_t − √(1−ᾱ_t) · ε̂) / √ᾱ_t
    DDS update (``variant="dds"``, default):
                   x_{t'} = √ᾱ_{t'} · x̂_0 + c₁ · z + c₂ · ε̂,
                   c₁ = η √(1−ᾱ_{t'}),   c₂ = √(1−ᾱ_{t'}) · √(1−η²)
    DDIM (``variant="ddim"``, Song et al.):
                   σ = η √((1−ᾱ_{t'})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}),
                   x_{t'} = √ᾱ_{t'} · x̂_0 + √(1−ᾱ_{t'}−σ²) · ε̂ + σ · z

``t_next = −1`` means ᾱ = 1 (the clean end), so the update returns x̂_0.

Shapes: any ``[B, ...]`` tensor (``[B,H,W]`` complex / real images or ``[B,C,H,W]`` channels).
``t`` is a python int (same step for the whole batch) or a ``[B]`` integer tensor of raw step
indices 0…T−1 (the network also receives these raw indices, as float, no rescaling).
Complex noise has real and imaginary parts each N(0, 1): it is the 2-channel noise the networks
see, *not* ``torch.randn(dtype=complex)`` (whose parts have variance 1/2).
"""
from __future__ import annotations

from typing import Sequence

import torch

from utils.rng import randn_like  # noqa: F401  (re-exported: the diffusion maths draw with it)

__all__ = ["DiffusionSchedule", "respaced_timesteps", "randn_like"]


def respaced_timesteps(num_steps: int, T: int = 1000, t_start: int | None = None) -> list[int]:
    """Decreasing list of raw step indices for a ``num_steps``-step sampler.

    * ``t_start is None`` (DDS sampling from pure noise): ``skip = T // num_steps`` and the steps
      are ``range(0, T, skip)`` reversed, e.g. 50 steps → ``[980, 960, …, 20, 0]``.
    * ``t_start`` given (purification / SDEdit from an image): ``num_steps`` steps evenly spaced
      from ``t_start`` down to 0 inclusive (rounded, duplicates removed), e.g.
      ``(4, t_start=300) → [300, 200, 100, 0]``; ``num_steps=1 → [t_start]``.

    Each step ``t`` is followed by the next element, the last one by ``t_next = −1`` (ᾱ = 1).
    """
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if t_start is None:
        if num_steps > T:
            raise ValueError(f"num_steps={num_steps} exceeds the number of diffusion steps T={T}")
        skip = T // num_steps
        # as DDS: seq = range(0, T, skip) (may hold one extra step when T % num_steps != 0)
        return list(range(0, T, skip))[::-1]
    t_start = int(t_start)
    if not 0 <= t_start < T:
        raise ValueError(f"t_start must lie in [0, {T - 1}], got {t_start}")
    if num_steps == 1:
        return [t_start]
    steps = torch.linspace(float(t_start), 0.0, num_steps, dtype=torch.float64).round().long()
    out: list[int] = []
    for s in steps.tolist():
        if not out or s < out[-1]:
            out.append(int(s))
    return out


class DiffusionSchedule:
    """Linear-β VP schedule.

    Attributes (CPU tensors): ``betas`` / ``alphas_cumprod`` (float32), ``betas64`` /
    ``alphas_cumprod64`` (float64, the exact values). Coefficients are gathered in the real
    dtype of the tensor they multiply (float64 tables for float64/complex128 inputs) and moved
    to its device.
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000):
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.num_steps = int(num_steps)
        self.betas64 = torch.linspace(self.beta_start, self.beta_end, self.num_steps,
                                      dtype=torch.float64)
        self.alphas_cumprod64 = torch.cumprod(1.0 - self.betas64, dim=0)
        self.betas = self.betas64.float()
        self.alphas_cumprod = self.alphas_cumprod64.float()
        # index t+1 so that t = -1 gives ᾱ = 1
        self._abar_ext64 = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod64])
        self._abar_ext32 = self._abar_ext64.float()

    @property
    def T(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        return (f"DiffusionSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, "
                f"num_steps={self.num_steps})")

    # ------------------------------------------------------------------ helpers
    def alpha_bar(self, t, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t broadcastable against ``like`` (shape ``[B,1,…,1]`` or scalar), in ``like``'s
        real dtype and device. ``t`` int or ``[B]`` tensor, −1 allowed (ᾱ = 1)."""
        real = like.real.dtype if torch.is_complex(like) else like.dtype
        if not real.is_floating_point:
            real = torch.float32
        table = self._abar_ext64 if real == torch.float64 else self._abar_ext32
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            idx = t.detach().to("cpu").round().long().reshape(-1)
            if idx.numel() != like.shape[0] and idx.numel() != 1:
                raise ValueError(f"t has {idx.numel()} entries but the batch has {like.shape[0]}")
            self._check_range(idx)
            a = table[idx + 1].to(device=like.device, dtype=real)
            return a.reshape(-1, *([1] * (like.ndim - 1)))
        ti = int(t.item()) if isinstance(t, torch.Tensor) else int(t)
        self._check_range(torch.tensor([ti]))
        return table[ti + 1].to(device=like.device, dtype=real)

    def _check_range(self, idx: torch.Tensor) -> None:
        if idx.numel() and (int(idx.min()) < -1 or int(idx.max()) >= self.num_steps):
            raise ValueError(f"timesteps must lie in [-1, {self.num_steps - 1}], got "
                             f"min {int(idx.min())}, max {int(idx.max())}")

    # ------------------------------------------------------------------ maths
    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (noise drawn with :func:`randn_like` if not given)."""
        if noise is None:
            noise = randn_like(x0, generator)
        a = self.alpha_bar(t, x0)
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise

    def tweedie_x0(self, x_t: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """x̂_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t."""
        a = self.alpha_bar(t, x_t)
        return (x_t - (1.0 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t) -> torch.Tensor:
        """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t) (inverse of Tweedie; t ≥ 0)."""
        a = self.alpha_bar(t, x_t)
        return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt()

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t, t_next,
                  eta: float = 0.0, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, variant: str = "dds") -> torch.Tensor:
        """One DDIM-type update from step ``t`` to ``t_next`` (< t; −1 = clean end).

        ``variant="dds"``: x_{t'} = √ᾱ_{t'} x̂_0 + η√(1−ᾱ_{t'}) z + √(1−ᾱ_{t'})√(1−η²) ε̂;
        ``variant="ddim"``: the η-parameterisation of Song et al. (needs ᾱ_t, hence ``t``).
        ``noise`` z is drawn with :func:`randn_like` (``generator``) when ``eta > 0`` and not given.
        """
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        a_next = self.alpha_bar(t_next, x0)
        if variant == "dds":
            c1 = eta * (1.0 - a_next).sqrt()
            c2 = (1.0 - a_next).sqrt() * (1.0 - eta ** 2) ** 0.5
        elif variant == "ddim":
            a_t = self.alpha_bar(t, x0)
            sigma = eta * ((1.0 - a_next) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_next).sqrt()
            c1 = sigma
            c2 = (1.0 - a_next - sigma ** 2).clamp_min(0.0).sqrt()
        else:
            raise ValueError(f"unknown variant {variant!r}; use 'dds' or 'ddim'")
        out = a_next.sqrt() * x0 + c2 * eps
        if eta > 0:
            if noise is None:
                noise = randn_like(x0, generator)
            out = out + c1 * noise
        return out

    def timesteps(self, num_steps: int, t_start: int | None = None) -> list[int]:
        return respaced_timesteps(num_steps, self.num_steps, t_start)

    @staticmethod
    def next_steps(steps: Sequence[int]) -> list[int]:
        """``t_next`` for each element of a decreasing step list (the last one → −1)."""
        return list(steps[1:]) + [-1]
