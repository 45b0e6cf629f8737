"""Helpers shared by the DIP-type solvers (the loop itself is ``solvers/dip_loop.py``).

* :func:`resolve_config` — a solver's defaults overridden by a user config (unknown fields raise).
* :func:`dip_common_defaults` — the config fields every DIP solver has.
* :func:`initial_input` — ``z₀`` from the measurements; :func:`net_output` — ``f_θ(z)`` as an image.
* :func:`deterministic_mode`, :func:`progress_bar`, :func:`finite_per_slice`.
"""
from __future__ import annotations

import contextlib
from typing import Any, Mapping

import torch
import torch.nn as nn

from utils.complex import from_channels, to_channels

Z0_CHOICES = ("input_image", "adjoint", "fbp", "zeros")


# --------------------------------------------------------------------------------------- config
def _to_plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: (_to_plain(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v)
                for k, v in cfg.items()}
    raise TypeError(f"config must be a dict or ml_collections.ConfigDict, got {type(cfg).__name__}")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config field {where}{k!r}; valid fields: {sorted(base)}")
        if isinstance(base[k], dict) and isinstance(v, Mapping):
            out[k] = _merge(base[k], dict(v), f"{where}{k}.")
        else:
            out[k] = v
    return out


def resolve_config(defaults: Any, cfg: Any = None):
    """Defaults overridden by ``cfg`` (dict or ConfigDict, nested allowed) → ``ConfigDict``.

    Unknown fields raise ``ValueError`` (typos must not be silently ignored).
    """
    import ml_collections

    merged = _merge(_to_plain(defaults), _to_plain(cfg), "")
    return ml_collections.ConfigDict(merged)


def dip_common_defaults() -> dict:
    """Fields shared by the DIP-type solvers (each solver's ``default_config`` extends these)."""
    return dict(
        lr=1e-4,            # Adam learning rate for θ. Our choice (typical DIP value).
        betas=(0.9, 0.999),  # Adam betas. Our choice (PyTorch default).
        weight_decay=0.0,   # Adam weight decay. Our choice.
        reduction="mean",   # data/regulariser reduction, "mean" | "sum" (solvers/dip_loop.py). Our choice.
        log_every=50,       # history / callback / NaN-check period in optimizer steps. Our choice.
        max_nan_events=10,  # give up (RuntimeError) after this many roll-backs. Our choice.
        deterministic=True,  # cudnn.deterministic inside the call (restored after). Our choice.
        disable_progress=False,  # hide the tqdm bar. Our choice.
        net=dict(           # DIPUNet architecture (models/dip_unet.py).
            channels=(64, 128, 256, 256),  # 3 down levels. Our choice (brief), not from the paper.
            bilinear=True,  # bilinear up-sampling. Our choice.
            norm="batch",   # BatchNorm. Our choice.
        ),
    )


# ------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def deterministic_mode(enabled: bool = True):
    """Temporarily set ``cudnn.deterministic=True, cudnn.benchmark=False`` (restored on exit)."""
    if not enabled:
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def initial_input(y: torch.Tensor, physics: nn.Module, choice: str) -> torch.Tensor:
    """The network input ``z₀`` ``[B,H,W]`` from the measurements: ``"input_image"`` (the physics'
    own choice: zero-filled Aᴴy for MRI, FBP for CT), ``"adjoint"`` (Aᴴy), ``"fbp"``, ``"zeros"``."""
    with torch.no_grad():
        if choice == "input_image":
            z = physics.input_image(y)
        elif choice == "adjoint":
            z = physics.adjoint(y)
        elif choice == "fbp":
            if physics.modality != "CT":
                raise ValueError(f"z0='fbp' needs a CT operator; {type(physics).__name__} has no FBP — "
                                 "use z0='input_image' or 'adjoint'")
            z = physics.fbp(y)
        elif choice == "zeros":
            z = torch.zeros_like(physics.adjoint(y))
        else:
            raise ValueError(f"unknown z0 {choice!r}; choose one of {Z0_CHOICES}")
    return z.detach().clone()


def net_output(net: nn.Module, z: torch.Tensor, is_complex: bool) -> torch.Tensor:
    """``f_θ(z)`` as an image ``[B,H,W]`` (complex if ``is_complex``).

    ``z`` is either an image ``[B,H,W]`` (packed with ``to_channels``) or an already channel-packed
    tensor ``[B,C,H,W]`` (e.g. the noise input of vanilla DIP).
    """
    zc = to_channels(z) if z.ndim == 3 else z
    return from_channels(net(zc), is_complex)


def finite_per_slice(x: torch.Tensor) -> torch.Tensor:
    """``[B]`` bool: whether slice ``b`` of ``x`` ``[B, ...]`` (real or complex) is all finite."""
    r = torch.view_as_real(x) if torch.is_complex(x) else x
    return torch.isfinite(r).reshape(r.shape[0], -1).all(dim=1)


def progress_bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=int(total), desc=desc, disable=bool(disable), leave=False, dynamic_ncols=True)
