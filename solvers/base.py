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
from typing import Any, Callable, Optional, Sequence

import torch

from solvers.common import check_ranges, resolve_config

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
    """Raise a clear ``ValueError`` when the measurements are not a float/complex torch tensor
    (e.g. a numpy array) or contain NaN or Inf."""
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"measurements y must be a torch.Tensor, got {type(y).__module__}.{type(y).__name__}; "
                         "convert with torch.from_numpy(y) (or torch.as_tensor(y))")
    if not (y.is_floating_point() or y.is_complex()):
        raise ValueError(f"measurements y must be a float or complex tensor, got dtype {y.dtype}")
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


class SolverBase:
    """What every solver class declares besides its call: the modalities it reconstructs, the
    valid ranges of its numeric config fields and, for a configuration that assumes exact
    measurements, why (checked before a run starts)."""

    #: modalities the method reconstructs (``physics.modality``)
    modalities: tuple[str, ...] = ("MRI", "CT")
    #: ``{field: solvers.common.Range}`` of the class's own numeric config fields; a solver's full
    #: table (:meth:`config_ranges`) merges those of its base classes, checked on construction
    RANGES: dict = {}

    @classmethod
    def config_ranges(cls) -> dict:
        """Every numeric field's valid range: the ``RANGES`` of the class and its bases."""
        table: dict = {}
        for k in reversed(cls.__mro__):
            table.update(vars(k).get("RANGES", {}))
        return table

    def noiseless_assumption(self) -> Optional[str]:
        """Why the configured method assumes noiseless data (``None``: it does not)."""
        return None

    @staticmethod
    def default_config():
        raise NotImplementedError

    def check_config(self, cfg) -> None:
        """Validate the method's own config fields (``ValueError``)."""

    def checked_config(self, cfg):
        """``default_config()`` overridden by ``cfg`` (unknown fields → ``ValueError``), every
        numeric field in its range (:meth:`config_ranges`) and :meth:`check_config` passed."""
        cfg = resolve_config(self.default_config(), cfg)
        check_ranges(cfg, type(self).config_ranges())
        self.check_config(cfg)
        return cfg

    def keep_settings(self, cfg, seed: int, seeds: Optional[Sequence[int]], device) -> None:
        """Store the checked config, the run seed, the per-slice seeds and the device."""
        self.cfg = cfg
        self.seed = int(seed)
        self.seeds = check_seeds(seeds)
        self.device = device


# ------------------------------------------------------------------ batches of slices
def check_seeds(seeds: Optional[Sequence[int]]) -> Optional[list[int]]:
    """``seeds`` as a non-empty list of ints (``None`` stays ``None``)."""
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold one seed per slice (got an empty list)")
    return seeds


def per_slice_callbacks(callback, B: int, seeds: Optional[list[int]] = None) -> Optional[list]:
    """The per-slice callback list (``callback`` a list/tuple of ``B``), else ``None``; also checks
    that ``seeds`` (if given) holds one seed per slice."""
    if seeds is not None and len(seeds) != B:
        raise ValueError(f"y has batch {B} but {len(seeds)} seeds were given (one per slice)")
    if not isinstance(callback, (list, tuple)):
        return None
    if len(callback) != B:
        raise ValueError(f"got {len(callback)} callbacks for {B} slices")
    return list(callback)


def slice_results(x: torch.Tensor, histories: list[dict], info: dict,
                  seeds: Optional[list[int]]) -> list[Result]:
    """One single-run-style :class:`Result` per slice (``x_hat`` ``[1,H,W]``)."""
    base = {k: v for k, v in info.items() if k not in ("seeds", "slices")}
    return [Result(x_hat=x[b:b + 1], history=histories[b],
                   info={**base, "seed": seeds[b] if seeds is not None else info["seed"]})
            for b in range(x.shape[0])]


def notify_slices(callback, cbs: Optional[list], k: int, x: torch.Tensor, info: dict, per_info,
                  x_gt: Optional[torch.Tensor]) -> None:
    """Report step ``k``: the one ``callback`` with the whole batch and ``info`` (batch means), or,
    with per-slice callbacks ``cbs``, callback ``b`` with slice ``b`` and ``per_info(b)``."""
    if cbs is None:
        notify(callback, k, x, info, x_gt)
        return
    for b, cb in enumerate(cbs):
        notify(cb, k, x[b:b + 1].clone(), per_info(b), None if x_gt is None else x_gt[b:b + 1])


def record_step(history: dict, histories: list[dict], keys: Sequence[str], values: dict,
                **fixed) -> tuple[dict, list[dict]]:
    """Append one logged step of a batch: to ``history`` the batch means and to ``histories[b]``
    slice ``b``'s values of ``values[key]`` (``[B]`` tensors, one host sync for all), with the
    ``fixed`` entries (e.g. ``step``) as they are.  Returns ``(means, per-slice dicts)``."""
    per = torch.stack([values[k].reshape(-1) for k in keys])                       # [K, B]
    flat = torch.cat([per.mean(dim=1), per.reshape(-1)]).tolist()
    K, B = len(keys), len(histories)
    means = dict(zip(keys, flat[:K]))
    slices = [{k: flat[K + i * B + b] for i, k in enumerate(keys)} for b in range(B)]
    for h, vals in [(history, means)] + list(zip(histories, slices)):
        for k, v in fixed.items():
            h[k].append(v)
        for k in keys:
            h[k].append(vals[k])
    return means, slices


def batch_result(x: torch.Tensor, history: dict, histories: list[dict], info: dict,
                 seeds: Optional[list[int]]) -> Result:
    """The :class:`Result` of a logged batch solve: ``info["slices"]`` = :func:`slice_results`;
    ``history`` is slice 0's for one slice, else the batch means plus ``per_slice``."""
    slices = slice_results(x, histories, info, seeds)
    info["slices"] = slices
    hist = slices[0].history if len(histories) == 1 else {**history, "per_slice": histories}
    return Result(x_hat=x, history=hist, info=info)


def image_support(physics, device) -> torch.Tensor:
    """The operator's image support ``[B|1,H,W]`` (real 0/1, ``physics.image_support()``) on
    ``device``.  With real coil maps (ESPIRiT, zero outside the object) the operator cannot see the
    pixels outside it: every solver returns its image restricted to the support, and the DIP solvers
    fit inside it.  (Where the support is every pixel, multiplying by it is exact, so no host-side
    check is made.)"""
    return physics.image_support().to(device)


def restrict_to_support(x: torch.Tensor, support: Optional[torch.Tensor]) -> torch.Tensor:
    """``x`` ``[B,H,W]`` set to 0 outside ``support`` (0/1; ``None``: unchanged)."""
    return x if support is None else x * support.to(device=x.device, dtype=x.real.dtype)


def split_result(result: Result) -> list[Result]:
    """Per-slice :class:`Result` s (``x_hat [1,H,W]``, one-slice-style ``history``/``info``) of a
    solve over a batch of slices (every solver records them in ``info["slices"]``)."""
    return list(result.info["slices"])
