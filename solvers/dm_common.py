"""What every diffusion-model (DM) baseline solver shares; the sampling loops themselves are in
:mod:`solvers.sampling`.

A DM solver is a thin class over one sampler function: :class:`DMSolver` holds the config, the
prior and the seeds, and its ``__call__`` does the rest the same way for every method —

1. :func:`prepare`: check ``y`` (finite), the operator and the prior (both complex or both real),
   move ``y`` to the device and fix the image dtype and shape ``[B,H,W]``;
2. :func:`slice_noise`: one generator per slice, seeded ``seeds[b]`` (or ``seed`` for every slice
   when ``seeds`` is ``None``), so slice ``b``'s result equals a one-slice run of slice ``b`` with
   that seed whatever its batch mates (up to the float rounding of the prior's batched kernels);
3. ``x_T ~ N(0, I)`` from those streams (complex: real and imaginary parts each N(0, 1), the
   2-channel noise the network sees), then the subclass's :meth:`DMSolver.sample` with a step
   callback that feeds a :class:`StepLog`;
4. :meth:`StepLog.result`: the :class:`solvers.base.Result`.

A subclass sets ``method`` (its name), ``steps_field`` (the config field holding the number of
reverse steps) and ``log_keys``, and implements ``default_config``, ``sample`` (call its sampler
function), ``log_values`` (the per-slice ``[B]`` quantities to log from a step's dict) and
``log_image`` (the image handed to callbacks); ``RANGES`` (``{field: solvers.common.Range}``)
states the valid range of each of its numeric fields and ``check_config`` validates the rest.

Logging: every ``log_every`` steps and at the last step, ``history`` gets ``step`` (0-based),
``t`` and the batch mean of each ``log_keys`` value; slice ``b``'s own values go to its history
(``info["slices"][b].history``, and ``history["per_slice"]`` for ``B > 1``; for ``B = 1``
``history`` *is* the slice's history). ``callback`` is one callable ``(step, x [B,H,W], info)``
(batch means) or a list of ``B`` callables, callable ``b`` called exactly as in a one-slice run
(``x [1,H,W]``, its own values, ``x_gt[b:b+1]``). ``x_gt`` only reaches callbacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from models.diffusion import DiffusionSchedule
from solvers.base import (Callback, Result, SolverBase, batch_result, check_measurements, image_support,
                          notify_slices, per_slice_callbacks, record_step, restrict_to_support)
from solvers.cg import batch_dot
from solvers.common import Range
from solvers.sampling import dds_timesteps
from utils.rng import NoiseStreams

__all__ = ["Problem", "prepare", "slice_noise", "relative_residual", "check_steps", "StepLog", "DMSolver"]


@dataclass
class Problem:
    """A validated measurement: ``y`` on the solve's device, its operator, and the image
    ``dtype`` / ``shape`` ``[B,H,W]`` of the reconstruction."""

    y: torch.Tensor
    physics: Any
    dtype: torch.dtype
    shape: tuple[int, int, int]

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def batch(self) -> int:
        return self.shape[0]


def prepare(y: torch.Tensor, physics, denoiser, device=None) -> Problem:
    """Check ``y`` and the operator/prior pairing; ``y`` moved to ``device`` (if given)."""
    check_measurements(y)
    if device is not None:
        y = y.to(device)
    if bool(physics.is_complex) != bool(denoiser.is_complex):
        raise ValueError(f"physics.is_complex={physics.is_complex} but denoiser.is_complex="
                         f"{denoiser.is_complex}: use the MRI prior with MRI operators and the CT prior with CT")
    if physics.is_complex:
        dtype = y.dtype if torch.is_complex(y) else torch.complex64
    elif torch.is_complex(y):
        raise ValueError("real (CT) operator got complex measurements y")
    else:
        dtype = y.dtype
    H, W = physics.image_shape
    return Problem(y, physics, dtype, (int(y.shape[0]), int(H), int(W)))


def slice_noise(seed: int, seeds: Optional[list[int]], batch: int, device) -> NoiseStreams:
    """Per-slice noise streams: slice ``b`` seeded ``seeds[b]``, or ``seed`` for every slice."""
    return NoiseStreams.per_slice(seeds if seeds is not None else [int(seed)] * batch, device)


def relative_residual(physics, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖A x − y‖ / ‖y‖ per batch element (``[B]`` real)."""
    r = physics.forward(x) - y
    return torch.sqrt(batch_dot(r, r) / batch_dot(y, y).clamp_min(torch.finfo(torch.float32).tiny))


def check_steps(solver: "DMSolver") -> None:
    """The solver's number of steps (``cfg[solver.steps_field]``) fits its prior's chain (else a
    ``ValueError`` naming the field)."""
    try:
        solver.timesteps()
    except ValueError as e:
        raise ValueError(f"{solver.steps_field}: {e}") from None


class StepLog:
    """History and callbacks of a DM solve (see the module docstring)."""

    def __init__(self, keys: Sequence[str], batch: int, num_steps: int, log_every: int, phase: str,
                 callback, seeds: Optional[list[int]], x_gt: Optional[torch.Tensor]):
        self.keys, self.batch, self.num_steps = tuple(keys), batch, num_steps
        self.log_every, self.phase, self.x_gt = max(1, int(log_every)), phase, x_gt
        self.callback = callback
        self.cbs = per_slice_callbacks(callback, batch, seeds)
        names = ("step", "t") + self.keys
        self.history: dict[str, list] = {k: [] for k in names}
        self.histories: list[dict[str, list]] = [{k: [] for k in names} for _ in range(batch)]

    def due(self, step: int) -> bool:
        return (step + 1) % self.log_every == 0 or step == self.num_steps - 1

    def record(self, step: int, t: int, x: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        """Log step ``step`` (one host sync): ``values[key]`` is a ``[B]`` tensor per key."""
        means, slices = record_step(self.history, self.histories, self.keys, values, step=step, t=t)
        base = {"phase": self.phase, "t": t}
        notify_slices(self.callback, self.cbs, step, x, {**base, **means},
                      lambda b: {**base, **slices[b]}, self.x_gt)

    def result(self, method: str, x: torch.Tensor, pairs: list, cfg, seed: int,
               seeds: Optional[list[int]], nfe: Optional[int] = None) -> Result:
        """The :class:`Result`: ``x_hat = x`` ``[B,H,W]``, the history, and ``info`` (``method``,
        ``nfe`` (default: one per step), ``timesteps``, ``seed``, ``config``, ``seeds`` if given,
        ``slices``)."""
        info = {"method": method, "nfe": len(pairs) if nfe is None else int(nfe), "seed": int(seed),
                "timesteps": [p[0] for p in pairs], "config": cfg.to_dict()}
        if seeds is not None:
            info["seeds"] = list(seeds)
        return batch_result(x, self.history, self.histories, info, seeds)


class DMSolver(SolverBase):
    """Base of the DM baseline solvers: ``Solver(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``, ``solver(y [B,...], physics, x_gt=None, callback=None) -> Result``.

    ``cfg`` (dict or ConfigDict) overrides ``default_config()`` (unknown fields → ``ValueError``);
    every DM config has ``eta`` (in [0, 1]), ``log_every``, ``progress`` and ``steps_field``.
    ``denoiser`` follows :class:`models.denoiser.Denoiser` (``eps``, ``.schedule`` a
    :class:`models.diffusion.DiffusionSchedule`, ``.is_complex``).
    """

    method = "DM"
    steps_field = "num_steps"
    log_keys: tuple[str, ...] = ("residual",)
    #: valid ranges of the numeric fields every DM config has (a subclass adds its own)
    RANGES = {"eta": Range(0, 1), "log_every": Range(1, integer=True)}

    def __init__(self, cfg=None, denoiser=None, seed: int = 0, device=None,
                 seeds: Optional[Sequence[int]] = None):
        cfg = self.checked_config(cfg)
        if denoiser is None:
            raise ValueError(f"{self.method} needs a denoiser (models.denoiser.Denoiser)")
        if not isinstance(getattr(denoiser, "schedule", None), DiffusionSchedule):
            raise ValueError("denoiser must have a .schedule that is a models.diffusion.DiffusionSchedule")
        T = int(denoiser.schedule.num_steps)
        if int(cfg[self.steps_field]) > T:
            raise ValueError(f"{self.steps_field} must be in [1, {T}] (the prior has T={T} diffusion steps), "
                             f"got {cfg[self.steps_field]}")
        self.keep_settings(cfg, seed, seeds, device)
        self.denoiser = denoiser

    # ------------------------------------------------------------------ per method
    def sample(self, problem: Problem, x: torch.Tensor, timesteps: Iterable[tuple[int, int]],
               noise: NoiseStreams, callback: Callable[[dict], None]) -> torch.Tensor:
        """Run the method's sampler function from ``x = x_T``; return the final image."""
        raise NotImplementedError

    def log_values(self, problem: Problem, step: dict) -> dict[str, torch.Tensor]:
        """``{key: [B] tensor}`` for every key of ``log_keys``, from a sampler step dict."""
        raise NotImplementedError

    def log_image(self, step: dict, last: bool) -> torch.Tensor:
        """The ``[B,H,W]`` image handed to callbacks at a logged step."""
        raise NotImplementedError

    def nfe(self, num_steps: int) -> int:
        """Network evaluations of a run of ``num_steps`` reverse steps (default: one per step)."""
        return num_steps

    # ------------------------------------------------------------------ shared
    def timesteps(self) -> list[tuple[int, int]]:
        return dds_timesteps(self.denoiser.schedule.num_steps, int(self.cfg[self.steps_field]))

    def __call__(self, y: torch.Tensor, physics, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback | Sequence[Optional[Callback]]] = None) -> Result:
        problem = prepare(y, physics, self.denoiser, self.device)
        pairs = self.timesteps()
        log = StepLog(self.log_keys, problem.batch, len(pairs), self.cfg.log_every, self.method.lower(),
                      callback, self.seeds, x_gt)
        noise = slice_noise(self.seed, self.seeds, problem.batch, problem.device)
        x = noise.randn(problem.shape, problem.dtype, problem.device)               # x_T ~ N(0, I)

        def on_step(step: dict) -> None:
            if log.due(step["step"]):
                log.record(step["step"], step["t"], self.log_image(step, step["step"] == len(pairs) - 1),
                           self.log_values(problem, step))

        bar = tqdm(pairs, disable=not self.cfg.progress, desc=self.method, leave=False)
        x = restrict_to_support(self.sample(problem, x, bar, noise, on_step), image_support(physics, problem.device))
        return log.result(self.method, x.detach(), pairs, self.cfg, self.seed, self.seeds, self.nfe(len(pairs)))
