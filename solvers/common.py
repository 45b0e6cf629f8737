"""Helpers shared by the DIP-type solvers (the loop itself is ``solvers/dip_loop.py``).

* :func:`resolve_config` — a solver's defaults overridden by a user config (unknown fields raise).
* :class:`Range`, :func:`check_range`, :func:`check_ranges` — the valid range of a numeric config
  field, declared once per solver (``RANGES``, a ``{field: Range}`` table next to its
  ``default_config``) and checked by its constructor, so that the library and ``main.py`` refuse
  the same values with the same message.
* :func:`dip_common_defaults` — the config fields every DIP solver has.
* :func:`initial_input` — ``z₀`` from the measurements; :func:`net_output` — ``f_θ(z)`` as an image.
* :func:`deterministic_mode`, :func:`progress_bar`, :func:`finite_per_slice`.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

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


# -------------------------------------------------------------------------------- value ranges
@dataclass(frozen=True)
class Range:
    """The valid values of a numeric config field: ``lo ≤ v ≤ hi`` (``lo_open`` / ``hi_open``:
    strict), ``integer`` (a whole number; bools are refused), ``none_ok`` (``None`` is valid, e.g.
    "until the end").  Always finite: NaN and ±Inf are refused.  A list/tuple value (``betas``,
    ``net.channels``) is checked element by element."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    none_ok: bool = False

    def text(self) -> str:
        """E.g. ``"an integer >= 1"``, ``"a finite number in (0, 1]"``."""
        kind = "an integer" if self.integer else "a finite number"
        fmt = (lambda v: str(int(v))) if self.integer else (lambda v: f"{v:g}")
        if self.lo is not None and self.hi is not None:
            s = f"{kind} in {'(' if self.lo_open else '['}{fmt(self.lo)}, {fmt(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            s = f"{kind} {'>' if self.lo_open else '>='} {fmt(self.lo)}"
        elif self.hi is not None:
            s = f"{kind} {'<' if self.hi_open else '<='} {fmt(self.hi)}"
        else:
            s = kind
        return s + (" (or None)" if self.none_ok else "")

    def ok(self, v: Any) -> bool:
        """Whether the single value ``v`` is valid."""
        if v is None:
            return self.none_ok
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            return False
        try:
            f = float(v)
        except (TypeError, ValueError):
            return False
        if not math.isfinite(f) or (self.integer and f != int(f)) or (self.integer and isinstance(v, float)):
            return False
        if self.lo is not None and (f <= self.lo if self.lo_open else f < self.lo):
            return False
        return not (self.hi is not None and (f >= self.hi if self.hi_open else f > self.hi))

    def check(self, value: Any, name: str) -> None:
        """``ValueError("<name> must be <text>, got <value>")`` unless ``value`` is valid."""
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or not all(self.ok(v) for v in values):
            each = " (each entry)" if isinstance(value, (list, tuple)) else ""
            raise ValueError(f"{name} must be {self.text()}{each}, got {value!r}")


def _field(cfg: Any, path: str) -> Any:
    node = cfg
    for key in path.split("."):
        node = node[key]
    return node


def check_range(cfg: Any, field: str, lo: Optional[float] = None, hi: Optional[float] = None, *,
                integer: bool = False, lo_open: bool = False, hi_open: bool = False, none_ok: bool = False,
                where: str = "") -> None:
    """Check ``cfg[field]`` (``field`` may be dotted: ``"net.channels"``) against the range
    ``lo..hi`` (see :class:`Range`); ``where`` prefixes the field name in the message."""
    Range(lo, hi, integer, lo_open, hi_open, none_ok).check(_field(cfg, field), f"{where}{field}")


def check_ranges(cfg: Any, table: Mapping[str, Range], where: str = "") -> None:
    """Check every ``{field: Range}`` of ``table`` that ``cfg`` has (fields absent from ``cfg`` are
    skipped, so one table can serve a family of configs)."""
    for field, rng in table.items():
        try:
            value = _field(cfg, field)
        except (KeyError, AttributeError):
            continue
        rng.check(value, f"{where}{field}")


#: Ranges of the fields of :func:`dip_common_defaults` (checked by ``DIPSolver.__init__``).
DIP_COMMON_RANGES = {
    "lr": Range(0, 10, lo_open=True),
    "betas": Range(0, 1, hi_open=True),
    "weight_decay": Range(0),
    "log_every": Range(1, integer=True),
    "max_nan_events": Range(0, integer=True),
    "net.channels": Range(1, 4096, integer=True),
}


def dip_common_defaults() -> dict:
    """Fields shared by the DIP-type solvers (each solver's ``default_config`` extends these)."""
    return dict(
        lr=1e-4,            # Adam learning rate for θ, in (0, 10]. Our choice (typical DIP value).
        betas=(0.9, 0.999),  # Adam betas, each in [0, 1). Our choice (PyTorch default).
        weight_decay=0.0,   # Adam weight decay, >= 0. Our choice.
        reduction="mean",   # data/regulariser reduction, "mean" | "sum" (solvers/dip_loop.py). Our choice.
        log_every=50,       # history / callback / NaN-check period in optimizer steps, >= 1. Our choice.
        max_nan_events=10,  # give up (RuntimeError) after this many roll-backs, >= 0. Our choice.
        deterministic=True,  # cudnn.deterministic inside the call (restored after). Our choice.
        disable_progress=False,  # hide the tqdm bar. Our choice.
        net=dict(           # DIPUNet architecture (models/dip_unet.py).
            channels=(64, 128, 256, 256),  # 3 down levels, each in [1, 4096]. Our choice, not from the paper.
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
