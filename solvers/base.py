"""The one solver interface shared by every reconstruction method.

``solver(y, physics, x_gt=None, callback=None) -> Result``

* ``y``: measurements, ``[B, C, H, W]`` complex k-space (MRI) or ``[B, V, D]`` sinogram (CT).
* ``physics``: an operator module (``physics/``) with ``forward``/``adjoint``/``normal``/``input_image``.
* ``x_gt``: optional reference image ``[B, H, W]``; it is handed **only** to ``callback`` for
  metrics and never influences the reconstruction (tests check bit-identity with and without it).
* ``callback(step, x_hat, info)``: called every ``log_every`` iterations with the current image
  estimate ``[B, H, W]`` and a dict ``info`` (loss values, phase name, ``x_gt``); returns nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

Callback = Callable[[int, torch.Tensor, dict], None]


@dataclass
class Result:
    """Output of a solver: the final iterate ``x_hat`` ``[B,H,W]`` and a history.

    ``history`` maps a name (e.g. ``"loss"``, ``"step"``) to a list of per-log-step values; it is
    filled by the solver from quantities it computes from ``y`` alone.
    """

    x_hat: torch.Tensor
    history: dict[str, list[Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def check_measurements(y: torch.Tensor) -> None:
    """Raise a clear ``ValueError`` when the measurements contain NaN or Inf."""
    if not torch.isfinite(torch.view_as_real(y) if torch.is_complex(y) else y).all():
        raise ValueError(
            "measurements y contain NaN or Inf values; check the data file / noise level "
            "before reconstructing"
        )


def notify(callback: Optional[Callback], step: int, x_hat: torch.Tensor, info: dict,
           x_gt: Optional[torch.Tensor]) -> None:
    """Call ``callback`` (if any) with a detached copy of the estimate and ``x_gt`` in ``info``."""
    if callback is not None:
        callback(step, x_hat.detach(), {**info, "x_gt": x_gt})
