"""Self-guided DIP (Liang, Bell, Qu, Wang, Ravishankar, "Analysis of deep image prior and exploiting
self-guidance for image reconstruction", IEEE TCI 2025), on the DIP loop of ``solvers/dip_loop.py``
(one outer iteration of ``num_steps`` steps).

The network input ``z`` is a trainable variable optimised jointly with θ::

    x̄(θ, z) = E_η[f_θ(z + η)],   η ~ N(0, σ²)  (per real channel)
    min_{θ, z}  ‖A x̄ − y‖² + λ ‖x̄ − z‖²        (Adam on θ with lr, on z with z_lr)
    return x̄ at the final (θ, z)

Simplifications (ours): the expectation is a Monte-Carlo mean over ``num_samples`` fresh noise
draws per step (all samples of a slice in one network batch, so BatchNorm statistics are shared
across them) and over ``eval_samples`` draws for the returned image; σ is a fixed absolute value
(images are normalised to magnitude ≲ 1); ``z`` starts at the measurement-based image ``z₀``
(Aᴴy / FBP); no early stopping, no schedule on σ or λ.  The final ``z`` is ``Result.info["z"]``.
"""
from __future__ import annotations

import torch

from solvers.common import Range, dip_common_defaults, initial_input
from solvers.dip_loop import DIPProblem, DIPSolver
from utils.complex import from_channels, to_channels


def default_config():
    """Self-guided DIP defaults (``ml_collections.ConfigDict``)."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_steps=2000,    # total joint Adam steps, >= 1; = K·N of the aSeqDIP/uDiG-DIP defaults. Our choice.
        lam=1.0,           # λ >= 0 of ‖x̄ − z‖² (reduction="mean"). Our choice.
        z_lr=1e-4,         # Adam learning rate of the input z, in (0, 10]. Our choice.
        noise_std=0.05,    # σ >= 0 of the input perturbation η. Our choice.
        num_samples=2,     # Monte-Carlo samples of η per step, in [1, 1024]. Our choice.
        eval_samples=8,    # samples for the returned E_η[f_θ(z+η)], in [1, 1024]. Our choice.
        z0="input_image",  # initial z: "input_image" | "adjoint" | "fbp" | "zeros". Our choice.
    )
    return ml_collections.ConfigDict(cfg)


#: valid ranges of self-guided DIP's own numeric fields
RANGES = {"num_steps": Range(1, integer=True), "lam": Range(0), "z_lr": Range(0, 10, lo_open=True),
          "noise_std": Range(0), "num_samples": Range(1, 1024, integer=True),
          "eval_samples": Range(1, 1024, integer=True)}


class SelfGuidedDIP(DIPSolver):
    """``SelfGuidedDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None) -> Result``."""

    name = "sgdip"
    default_config = staticmethod(default_config)
    RANGES = RANGES

    def iterations(self) -> tuple[int, int]:
        return 1, int(self.cfg.num_steps)

    def input_lr(self) -> float:
        return float(self.cfg.z_lr)

    def initial_input(self, p: DIPProblem) -> torch.Tensor:
        return initial_input(p.y, p.physics, self.cfg.z0)

    def _eta(self, p: DIPProblem, z: torch.Tensor, num: int) -> torch.Tensor:
        """``num`` draws of η per slice, ``[B, num, C, H, W]`` (C = 2 complex, 1 real)."""
        return p.noise.randn((p.batch, int(num), 2 if p.is_complex else 1, *z.shape[-2:]), p.dtype)

    def step_noise(self, p: DIPProblem, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self._eta(p, z, self.cfg.num_samples),)

    def estimate(self, p: DIPProblem, net, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """``x̄ = mean_m f_θ(z + σ η_m)`` ``[B,H,W]``."""
        out = net(to_channels(z).unsqueeze(1) + float(self.cfg.noise_std) * eta)     # [B, M, C, H, W]
        return from_channels(out.mean(1), p.is_complex)

    def output(self, p, net, z, x) -> torch.Tensor:
        return self.estimate(p, net, z, self._eta(p, z, self.cfg.eval_samples))
