"""What the classical (non-learned) baselines share: CG-SENSE / CGLS / SIRT (:mod:`solvers.cgsense`),
total variation (:mod:`solvers.tv`) and L1-wavelet compressed sensing (:mod:`solvers.l1wavelet`).

A classical solver follows the one solver interface (``Solver(cfg=None, denoiser=None, seed=0,
device=None, seeds=None)``; ``solver(y [B,...], physics, x_gt=None, callback=None) -> Result``):

* it is deterministic: ``seed`` / ``seeds`` are accepted (one per slice, checked against the
  batch) and recorded, but nothing is drawn at random (power iterations start from one fixed
  vector, the same for every slice), so slice ``b`` of a batch equals a one-slice run of slice
  ``b`` up to the float rounding of batched kernels;
* every inner product / step size is per slice (batch mates never interact);
* ``x_gt`` only reaches callbacks; the image returned is restricted to the operator's image support
  (:func:`solvers.base.restrict_to_support`), and the iterates live inside it where the method
  allows (TV's primal step, SIRT's weights);
* logging (:class:`IterLog`): every ``log_every`` iterations and at the last one, ``history`` gets
  ``step`` (0-based iteration), ``residual`` = ``‖A x − y‖/‖y‖`` and ``objective`` (the method's
  objective), batch means; slice ``b``'s own values go to ``info["slices"][b].history`` (and
  ``history["per_slice"]`` for ``B > 1``); ``callback`` is one callable ``(step, x [B,H,W], info)``
  or a list of ``B`` per-slice callables, as for the other solvers.

A subclass sets ``method``, ``modalities`` and ``default_config``, and implements
``RANGES`` (its numeric fields) and ``check_config`` (its other fields; ``num_iters``, ``log_every``
and ``progress`` are checked here),
``solve(y, physics, support, log) -> (x, extra)`` (calling ``log.tick(k, x, values)`` after
iteration ``k``; ``extra``: method-specific ``Result.info`` entries) and ``objective(x, y, physics)``
(``[B]``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from solvers.base import (Callback, Result, SolverBase, batch_result, check_measurements, image_support,
                          notify_slices, per_slice_callbacks, record_step, restrict_to_support)
from solvers.cg import batch_dot
from solvers.common import Range
from solvers.dm_common import relative_residual

__all__ = ["ClassicalSolver", "IterLog", "operator_norm", "MAX_ITERS"]

#: Upper bound of every iteration-count field (a typo guard: 10⁵ iterations is hours on a CPU).
MAX_ITERS = 100_000


def operator_norm(physics, like: torch.Tensor, num_iters: int = 50) -> torch.Tensor:
    """``‖A_b‖`` per slice (``[B]``, real) by ``num_iters`` power iterations on ``AᴴA``.

    Every slice starts from the same vector (a fixed draw, seed 0, shaped like one slice of
    ``like`` ``[B,H,W]``), so the estimate does not depend on batch mates or seeds.  The estimate
    ``‖AᴴA v‖^½`` with ``‖v‖ = 1`` never exceeds the true norm; callers that need an upper bound
    multiply it by a safety factor.
    """
    g = torch.Generator().manual_seed(0)
    one = torch.randn(like.shape[1:], generator=g, dtype=like.real.dtype)
    if like.is_complex():
        one = torch.complex(one, torch.randn(like.shape[1:], generator=g, dtype=like.real.dtype))
    v = one.to(like.device).expand(like.shape).clone()
    lam = torch.zeros(like.shape[0], dtype=like.real.dtype, device=like.device)
    for _ in range(int(num_iters)):
        v = v / torch.sqrt(batch_dot(v, v)).clamp_min(torch.finfo(lam.dtype).tiny).reshape(-1, 1, 1)
        w = physics.normal(v)
        lam = torch.sqrt(batch_dot(w, w))
        v = w
    return torch.sqrt(lam)


class IterLog:
    """History, callbacks and progress bar of an iterative solve (module docstring)."""

    def __init__(self, keys: Sequence[str], batch: int, num_iters: int, log_every: int, phase: str,
                 callback, seeds: Optional[list[int]], x_gt: Optional[torch.Tensor], progress: bool):
        self.keys, self.batch, self.num_iters = tuple(keys), batch, int(num_iters)
        self.log_every, self.phase, self.x_gt = max(1, int(log_every)), phase, x_gt
        self.callback = callback
        self.cbs = per_slice_callbacks(callback, batch, seeds)
        names = ("step",) + self.keys
        self.history: dict[str, list] = {k: [] for k in names}
        self.histories: list[dict[str, list]] = [{k: [] for k in names} for _ in range(batch)]
        self.bar = tqdm(total=self.num_iters, desc=phase, disable=not progress, leave=False, dynamic_ncols=True)

    def due(self, step: int) -> bool:
        return (step + 1) % self.log_every == 0 or step == self.num_iters - 1

    def tick(self, step: int, x: torch.Tensor, values: Callable[[torch.Tensor], dict]) -> None:
        """After iteration ``step`` with iterate ``x``: advance the bar and, when due, log
        ``values(x)`` (``{key: [B] tensor}``; evaluated only then) and call the callbacks."""
        self.bar.update(1)
        if not self.due(step):
            return
        vals = {k: v.to(torch.float64) for k, v in values(x).items()}
        means, slices = record_step(self.history, self.histories, self.keys, vals, step=step)
        base = {"phase": self.phase}
        notify_slices(self.callback, self.cbs, step, x, {**base, **means}, lambda b: {**base, **slices[b]},
                      self.x_gt)

    def result(self, method: str, x: torch.Tensor, cfg, seed: int, seeds: Optional[list[int]],
               extra: Optional[dict] = None) -> Result:
        """The :class:`Result`: ``x_hat = x`` ``[B,H,W]``, the history and ``info`` (``method``,
        ``iterations``, ``seed``, ``config``, ``seeds`` if given, ``extra``, ``slices``)."""
        self.bar.close()
        info = {"method": method, "iterations": self.num_iters, "seed": int(seed), "config": cfg.to_dict(),
                **(extra or {})}
        if seeds is not None:
            info["seeds"] = list(seeds)
        return batch_result(x, self.history, self.histories, info, seeds)


class ClassicalSolver(SolverBase):
    """Base of the classical baselines (module docstring)."""

    method = "classical"
    log_keys: tuple[str, ...] = ("residual", "objective")
    #: valid ranges of the numeric fields every classical config has (a subclass adds its own)
    RANGES = {"num_iters": Range(1, MAX_ITERS, integer=True), "log_every": Range(1, integer=True)}

    def __init__(self, cfg=None, denoiser=None, seed: int = 0, device=None,
                 seeds: Optional[Sequence[int]] = None):
        cfg = self.checked_config(cfg)
        if not isinstance(cfg.progress, bool):
            raise ValueError(f"progress must be True or False, got {cfg.progress!r}")
        self.keep_settings(cfg, seed, seeds, device)

    # ------------------------------------------------------------------ per method
    def solve(self, y: torch.Tensor, physics, support: torch.Tensor, log: IterLog) -> tuple[torch.Tensor, dict]:
        """Run the method on ``y`` ``[B,...]``; return the image ``[B,H,W]`` and extra ``info``."""
        raise NotImplementedError

    def objective(self, x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
        """The method's objective at ``x`` per slice (``[B]``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def log_values(self, y: torch.Tensor, physics) -> Callable[[torch.Tensor], dict]:
        return lambda x: {"residual": relative_residual(physics, x, y), "objective": self.objective(x, y, physics)}

    def check_problem(self, y: torch.Tensor, physics) -> None:
        check_measurements(y)
        if physics.modality not in self.modalities:
            raise ValueError(f"{self.method} reconstructs {' and '.join(self.modalities)} only, not "
                             f"{physics.modality}; for {physics.modality} use cgsense or tv")
        if bool(physics.is_complex) != torch.is_complex(y):
            raise ValueError(f"{physics.modality} operator (is_complex={physics.is_complex}) got "
                             f"{'complex' if torch.is_complex(y) else 'real'} measurements y")
        if y.ndim < 2:
            raise ValueError(f"y must be a batch [B, ...] of measurements, got shape {tuple(y.shape)}")

    def __call__(self, y: torch.Tensor, physics, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback | Sequence[Optional[Callback]]] = None) -> Result:
        self.check_problem(y, physics)
        if self.device is not None:
            y = y.to(self.device)
        log = IterLog(self.log_keys, int(y.shape[0]), self.cfg.num_iters, self.cfg.log_every, self.method,
                      callback, self.seeds, x_gt, self.cfg.progress)
        support = image_support(physics, y.device)
        with torch.no_grad():
            x, extra = self.solve(y, physics, support, log)
        x = restrict_to_support(x, support)
        return log.result(self.method, x.detach(), self.cfg, self.seed, self.seeds, extra)
