"""Vanilla deep image prior (Ulyanov, Vedaldi, Lempitsky 2018) for linear inverse problems, on the DIP
loop of ``solvers/dip_loop.py`` (one outer iteration, λ = 0)::

    z ~ U(0, input_scale)  or  N(0, input_scale²)   fixed, ``[B, input_channels, H, W]`` (seeded)
    θ ← num_steps Adam steps on ‖A f_θ(z) − y‖²
    return f_θ(z)                                   (final iterate, no early stopping)

``num_steps`` defaults to K·N of the sequential solvers (500·4 = 2000) so budgets are comparable.
Optional ``input_noise_std`` (σ_p of the DIP paper's input perturbation) feeds ``z + σ_p·n`` with
fresh ``n ~ N(0, I)`` to each step (off by default); the returned image uses ``z`` itself.
"""
from __future__ import annotations

import torch

from solvers.common import Range, dip_common_defaults
from solvers.dip_loop import DIPProblem, DIPSolver

INPUT_KINDS = ("uniform", "normal")


def default_config():
    """Vanilla DIP defaults (``ml_collections.ConfigDict``)."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_steps=2000,        # total Adam steps, >= 1; = K·N of the aSeqDIP/uDiG-DIP defaults. Our choice.
        input_kind="uniform",  # z ~ U(0, input_scale) ("uniform") or N(0, input_scale²) ("normal"). DIP paper: U(0, 0.1).
        input_scale=0.1,       # see input_kind, > 0. DIP paper (0.1).
        input_channels=32,     # channels of the noise input, in [1, 4096]. DIP paper (32).
        input_noise_std=0.0,   # σ_p >= 0, per-step input perturbation (0 = off). Our choice.
    )
    return ml_collections.ConfigDict(cfg)


#: valid ranges of vanilla DIP's own numeric fields
RANGES = {"num_steps": Range(1, integer=True), "input_scale": Range(0, lo_open=True),
          "input_channels": Range(1, 4096, integer=True), "input_noise_std": Range(0)}


class VanillaDIP(DIPSolver):
    """``VanillaDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None) -> Result``."""

    name = "dip"
    default_config = staticmethod(default_config)
    RANGES = RANGES

    def _validate(self) -> None:
        if self.cfg.input_kind not in INPUT_KINDS:
            raise ValueError(f"unknown input_kind {self.cfg.input_kind!r}; choose one of {INPUT_KINDS}")

    def iterations(self) -> tuple[int, int]:
        return 1, int(self.cfg.num_steps)

    def lam(self) -> float:
        return 0.0

    def input_channels(self) -> int:
        return int(self.cfg.input_channels)

    def initial_input(self, p: DIPProblem) -> torch.Tensor:
        """The fixed noise ``z`` ``[B, input_channels, H, W]`` (drawn in float32)."""
        H, W = p.physics.image_shape
        draw = p.noise.rand if self.cfg.input_kind == "uniform" else p.noise.randn
        z = draw((p.batch, int(self.cfg.input_channels), int(H), int(W))) * float(self.cfg.input_scale)
        return z.to(p.dtype)

    def step_noise(self, p: DIPProblem, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sigma = float(self.cfg.input_noise_std)
        return (sigma * p.noise.randn(z.shape).to(z.dtype),) if sigma > 0 else ()

    def estimate(self, p: DIPProblem, net, z: torch.Tensor, *perturbation: torch.Tensor) -> torch.Tensor:
        """``f_θ(z + σ_p·n)`` (``f_θ(z)`` without a perturbation)."""
        return super().estimate(p, net, z + perturbation[0] if perturbation else z)
