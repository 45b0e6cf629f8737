"""Self-guided DIP (Liang, Bell, Qu, Wang, Ravishankar, "Analysis of deep image prior and exploiting
self-guidance for image reconstruction", IEEE TCI 2025).

The network input ``z`` is a trainable variable optimised jointly with θ::

    x̄(θ, z) = E_η[f_θ(z + η)],   η ~ N(0, σ²)  (per real channel)
    min_{θ, z}  ‖A x̄ − y‖² + λ ‖x̄ − z‖²        (Adam on θ with lr, on z with z_lr)
    return x̄ at the final (θ, z)

Simplifications (ours): the expectation is a Monte-Carlo mean over ``num_samples`` fresh noise
draws per step (all samples in one batch, so BatchNorm statistics are shared across them) and over
``eval_samples`` draws for the returned image; σ is a fixed absolute value (images are normalised to
magnitude ≲ 1); ``z`` starts at the measurement-based image ``z₀`` (Aᴴy / FBP); no early stopping,
no schedule on σ or λ.  Reductions as in ``solvers/common.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

from models.dip_unet import build_dip_net
from solvers.base import Callback, Result, notify
from solvers.common import (DIPSolverBase, deterministic_mode, dip_common_defaults, fit_dip, initial_input,
                            make_generator, make_optimizer, progress_bar)
from utils.complex import from_channels, to_channels


def default_config():
    """Self-guided DIP defaults (``ml_collections.ConfigDict``)."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_steps=2000,    # total joint Adam steps; = K·N of the aSeqDIP/uDiG-DIP defaults. Our choice.
        lam=1.0,           # λ of ‖x̄ − z‖² (reduction="mean"). Our choice.
        z_lr=1e-4,         # Adam learning rate of the input z. Our choice.
        noise_std=0.05,    # σ of the input perturbation η. Our choice.
        num_samples=2,     # Monte-Carlo samples of η per step. Our choice.
        eval_samples=8,    # samples for the returned E_η[f_θ(z+η)]. Our choice.
        z0="input_image",  # initial z: "input_image" | "adjoint" | "fbp" | "zeros". Our choice.
    )
    return ml_collections.ConfigDict(cfg)


def smoothed_output(net: torch.nn.Module, z: torch.Tensor, sigma: float, num_samples: int,
                    is_complex: bool, generator: torch.Generator) -> torch.Tensor:
    """Monte-Carlo ``E_η[f_θ(z + η)]`` ``[B,H,W]`` with ``num_samples`` draws of ``η ~ N(0, σ²)``."""
    zc = to_channels(z)                                            # [B, C, H, W]
    M = int(num_samples)
    eta = torch.randn((M, *zc.shape), generator=generator, device=zc.device, dtype=zc.dtype)
    out = net((zc.unsqueeze(0) + sigma * eta).reshape(M * zc.shape[0], *zc.shape[1:]))
    return from_channels(out.reshape(M, *zc.shape[:1], *out.shape[1:]).mean(0), is_complex)


class SelfGuidedDIP(DIPSolverBase):
    """``SelfGuidedDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None) -> Result``."""

    name = "sgdip"
    default_config = staticmethod(default_config)

    def _validate(self) -> None:
        if int(self.cfg.num_samples) < 1 or int(self.cfg.eval_samples) < 1:
            raise ValueError("num_samples and eval_samples must be >= 1")

    def __call__(self, y: torch.Tensor, physics: torch.nn.Module, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback] = None) -> Result:
        device, y, is_complex = self._prepare(y, physics)
        c = self.cfg
        sigma = float(c.noise_std)
        history: dict = {}
        with deterministic_mode(c.deterministic), progress_bar(c.num_steps, self.name, c.disable_progress) as pbar:
            z = initial_input(y, physics, c.z0).requires_grad_(True)        # trainable input
            net = build_dip_net(c.net, is_complex, self.seed, device=device)
            optimizer = make_optimizer(net, c, extra_groups=[{"params": [z], "lr": float(c.z_lr)}])
            gen = make_generator(self.seed + 1, device)
            forward = lambda: smoothed_output(net, z, sigma, c.num_samples, is_complex, gen)  # noqa: E731
            log = None
            if callback is not None:
                log = lambda step, x, info: notify(callback, step, x.clone(), {**info, "phase": "fit"}, x_gt)  # noqa: E731
            fit_dip(net, z, y, physics, int(c.num_steps), optimizer, lam=float(c.lam), z_target=z,
                    is_complex=is_complex, forward=forward, reduction=c.reduction, log_every=c.log_every,
                    history=history, pbar=pbar, callback=log, guard_tensors=[z],
                    max_nan_events=int(c.max_nan_events))
            with torch.no_grad():
                x = smoothed_output(net, z, sigma, c.eval_samples, is_complex, gen).detach()
        info = {"seed": self.seed, "config": c.to_dict(), "z": z.detach(),
                "num_params": sum(p.numel() for p in net.parameters())}
        return Result(x_hat=x, history=history, info=info)
