"""Simulated measurements ``y = A x + n``: seeded, device-independent noise models.

:func:`simulate_measurements` applies a :class:`NoiseModel` to the clean measurements ``A x``.
The model used by the experiments is :class:`GaussianNoise` (additive white Gaussian noise of
standard deviation ``σ = noise_sigma``):

* MRI (complex k-space): ``n = σ (a + i b) / √2`` with ``a, b ~ N(0, 1)`` independent, so
  ``E|n|² = σ²`` per sampled entry and the real and imaginary parts are each ``N(0, σ²/2)``;
* CT (real sinogram): ``n ~ N(0, σ²)`` per detector bin;
* ``n = 0`` wherever :meth:`LinearOperator.measurement_mask` is 0 (unsampled k-space stays
  exactly zero);
* the draws come from a CPU ``torch.Generator`` seeded with ``seed``, in ``y``'s real dtype, and
  are then moved to ``y``'s device: one seed gives the same noise on every device.

Another model (e.g. ``σ`` relative to the data, or Poisson photon counts for CT at incident
intensity ``I₀``) is a new :class:`NoiseModel` subclass passed as ``noise=``; nothing else changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import LinearOperator

__all__ = ["NoiseModel", "GaussianNoise", "standard_normal", "simulate_measurements"]


class NoiseModel:
    """How clean measurements become noisy ones: ``apply(y, mask, generator) -> y_noisy``.

    ``mask`` (real 0/1, broadcastable to ``y``) marks the measured entries; ``generator`` is a
    seeded CPU generator, the only source of randomness a model may use.
    """

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(y, mask, generator)")


@dataclass(frozen=True)
class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise ``y + σ n`` with ``E|n|² = 1`` per measured entry (see the
    module docstring); ``sigma = 0`` returns ``y`` unchanged."""

    sigma: float = 0.0

    def __post_init__(self):
        if not math.isfinite(float(self.sigma)) or float(self.sigma) < 0:
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {self.sigma!r}")

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if float(self.sigma) == 0:
            return y
        n = standard_normal(y.shape, y.dtype, generator).to(y.device)
        return y + float(self.sigma) * (n * mask)


def standard_normal(shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``N(0, 1)`` noise on the CPU with ``E|n|² = 1``: real dtypes ``randn``; complex dtypes
    ``(a + i b)/√2`` with all real parts ``a`` drawn before the imaginary parts ``b``."""
    if not dtype.is_complex:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    a = torch.randn(tuple(shape), generator=generator, dtype=real)
    b = torch.randn(tuple(shape), generator=generator, dtype=real)
    return torch.complex(a, b) / 2 ** 0.5


def simulate_measurements(physics: LinearOperator, x: torch.Tensor, noise_sigma: float = 0.0,
                          seed: int = 0, noise: Optional[NoiseModel] = None) -> torch.Tensor:
    """``y = A x + n``: ``GaussianNoise(noise_sigma)`` by default (see the module docstring), or
    the model ``noise`` (then ``noise_sigma`` must be 0); seeded with ``seed`` on the CPU."""
    if noise is not None and noise_sigma:
        raise ValueError("pass either noise_sigma (Gaussian noise) or a noise model, not both")
    model = GaussianNoise(noise_sigma) if noise is None else noise
    y = physics(x)
    return model.apply(y, physics.measurement_mask(y), torch.Generator().manual_seed(int(seed)))
