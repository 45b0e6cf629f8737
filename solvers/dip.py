"""Vanilla deep image prior (Ulyanov, Vedaldi, Lempitsky 2018) for linear inverse problems.

    z ~ U(0, input_scale)  or  N(0, input_scale²)   fixed, ``[B, input_channels, H, W]`` (seeded)
    θ ← num_steps Adam steps on ‖A f_θ(z) − y‖²
    return f_θ(z)                                   (final iterate, no early stopping)

``num_steps`` defaults to K·N of the sequential solvers (500·4 = 2000) so budgets are comparable.
Optional ``input_noise_std`` (σ_p of the DIP paper's input perturbation) adds fresh N(0, σ_p²) to
``z`` at each step (off by default).
"""
from __future__ import annotations

from typing import Optional

import torch

from models.dip_unet import build_dip_net
from solvers.base import Callback, Result, notify
from solvers.common import (DIPSolverBase, deterministic_mode, dip_common_defaults, fit_dip, make_generator,
                            make_optimizer, net_output, progress_bar)

INPUT_KINDS = ("uniform", "normal")


def default_config():
    """Vanilla DIP defaults (``ml_collections.ConfigDict``)."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_steps=2000,        # total Adam steps; = K·N of the aSeqDIP/uDiG-DIP defaults. Our choice.
        input_kind="uniform",  # z ~ U(0, input_scale) ("uniform") or N(0, input_scale²) ("normal"). DIP paper: U(0, 0.1).
        input_scale=0.1,       # see input_kind. DIP paper (0.1).
        input_channels=32,     # channels of the noise input. DIP paper (32).
        input_noise_std=0.0,   # σ_p per-step input perturbation (0 = off). Our choice.
    )
    return ml_collections.ConfigDict(cfg)


def validate_config(cfg) -> None:
    """Raise ``ValueError`` for an invalid vanilla-DIP config."""
    if cfg.input_kind not in INPUT_KINDS:
        raise ValueError(f"unknown input_kind {cfg.input_kind!r}; choose one of {INPUT_KINDS}")


class VanillaDIP(DIPSolverBase):
    """``VanillaDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None) -> Result``."""

    name = "dip"
    default_config = staticmethod(default_config)

    def _validate(self) -> None:
        validate_config(self.cfg)

    def __call__(self, y: torch.Tensor, physics: torch.nn.Module, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback] = None) -> Result:
        device, y, is_complex = self._prepare(y, physics)
        c = self.cfg
        B = y.shape[0]
        H, W = physics.image_shape
        history: dict = {}
        with deterministic_mode(c.deterministic), progress_bar(c.num_steps, self.name, c.disable_progress) as pbar:
            gen = make_generator(self.seed + 1, device)
            shape = (B, int(c.input_channels), int(H), int(W))
            if c.input_kind == "uniform":
                z = torch.rand(shape, generator=gen, device=device) * float(c.input_scale)
            else:
                z = torch.randn(shape, generator=gen, device=device) * float(c.input_scale)
            net = build_dip_net(c.net, is_complex, self.seed, in_channels=int(c.input_channels), device=device)
            optimizer = make_optimizer(net, c)
            forward = None
            if float(c.input_noise_std) > 0:
                sigma = float(c.input_noise_std)
                forward = lambda: net_output(  # noqa: E731
                    net, z + sigma * torch.randn(z.shape, generator=gen, device=device), is_complex)
            log = None
            if callback is not None:
                log = lambda step, x, info: notify(callback, step, x.clone(), {**info, "phase": "fit"}, x_gt)  # noqa: E731
            fit_dip(net, z, y, physics, int(c.num_steps), optimizer, lam=0.0, is_complex=is_complex,
                    forward=forward, reduction=c.reduction, log_every=c.log_every, history=history,
                    pbar=pbar, callback=log, max_nan_events=int(c.max_nan_events))
            with torch.no_grad():
                x = net_output(net, z, is_complex).detach()   # final iterate, unperturbed input
        info = {"seed": self.seed, "config": c.to_dict(), "num_params": sum(p.numel() for p in net.parameters())}
        return Result(x_hat=x, history=history, info=info)
