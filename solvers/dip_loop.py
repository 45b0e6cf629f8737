"""THE deep-image-prior loop, shared by every DIP variant (uDiG-DIP, aSeqDIP, vanilla DIP, self-guided DIP).

For ``B ≥ 1`` slices at once, one network ``f_θ_b`` per slice (the uDiG-DIP paper's Fig. 2)::

    z₀ ← the variant's initial input                                      (initial_input)
    for k = 1..K:
      (1) θ ← N warm-started optimiser steps on
              L(θ) = ‖A x − y‖² + λ ‖x − z‖²,   x = f_θ(z)   (z frozen)   (estimate, loss)
      (2) z ← the variant's input update                                  (update_input)
              uDiG-DIP: diffusion purification of f_θ(z) inside its window, else f_θ(z);
              aSeqDIP: f_θ(z); vanilla DIP: z stays the fixed noise
    return f_θ(z_K)  (or the variant's alternative)                       (output)

A variant is a :class:`DIPSolver` subclass that defines only those hooks (and its config).  How
one optimiser step executes — ``B`` stacked networks, eager or replayed from a CUDA graph — is
the engine's business (``solvers/engines.py``, chosen by ``solvers/perf.py``).

Loss (:func:`dip_loss`, per slice ``[B]``; the step minimises the sum over slices, whose gradient
w.r.t. ``θ_b`` is that of slice ``b``'s loss alone), reduction (config ``reduction``, our choice):

* ``"mean"`` (default): ``mean_i |(A x − y)_i|² + λ · mean_j |x_j − z_j|²`` — each term is a
  per-element mean squared error, so the learning rate and λ do not depend on the image size /
  number of coils / views.  (The papers write plain squared norms; with ``"sum"`` you get exactly
  ``‖A x − y‖² + λ‖x − z‖²``, which is the same objective up to a rescaling of λ and of Adam's
  effective step — Adam is invariant to a global loss scale apart from its ε.)
* ``"sum"``: plain squared norms.

Seeds and noise: slice ``b``'s network is ``build_dip_net(cfg.net, is_complex, seeds[b])`` and every
random draw of slice ``b`` (purification noise, DIP input noise, perturbations) comes from its own
generator seeded ``seeds[b] + 1`` (``utils.rng.NoiseStreams``), in the order of a one-slice run;
``seeds=None`` means every slice uses ``seed``.  So slice ``b`` of a batch equals the one-slice solve
of slice ``b`` up to float rounding of the batched kernels, and ``x_gt`` only reaches callbacks.

Logging and the NaN guard, every ``log_every``-th step and at the last step (the only host syncs
besides one finiteness check per outer iteration): per slice, a finite loss is appended to that
slice's history (``step``, ``loss``, ``data_loss``, ``reg_loss``, ``lr``) and remembered as the
slice's last good state; a non-finite one rolls THAT slice back to its last good state, halves its
learning rate and appends ``{"step", "lr"}`` to its ``history["nan_events"]``; more than
``max_nan_events`` events of a slice raise ``RuntimeError``.  ``callback`` is one callable
``(step, x [B,H,W], info)`` (``info``: batch means over the logged slices) or a list of ``B``
callables, each called exactly as in a one-slice run ``(step, x_b [1,H,W], info_b)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from physics import finite_checks
from solvers import perf as perf_policy
from solvers.base import (Callback, Result, SolverBase, check_measurements, image_support, notify, per_slice_callbacks,
                          restrict_to_support, slice_results)
from solvers.common import DIP_COMMON_RANGES, deterministic_mode, finite_per_slice, progress_bar
from solvers.engines import StepEngine, StepResult, make_engine
from utils.complex import from_channels, to_channels
from utils.rng import NoiseStreams

__all__ = ["REDUCTIONS", "sq_norm", "dip_loss", "DIPProblem", "DIPSolver"]

REDUCTIONS = ("mean", "sum")


def sq_norm(t: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-slice ``|t|²`` of ``t`` ``[B, ...]`` (real or complex) → ``[B]``: mean or sum."""
    a = t.abs().square() if torch.is_complex(t) else t.square()
    a = a.reshape(a.shape[0], -1)
    if reduction == "mean":
        return a.mean(dim=1)
    if reduction == "sum":
        return a.sum(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def dip_loss(x: torch.Tensor, y: torch.Tensor, physics: nn.Module, lam: float = 0.0,
             z: Optional[torch.Tensor] = None, reduction: str = "mean"):
    """Per-slice ``(total, data, reg)``, each ``[B]``: data = ‖A x − y‖², reg = ‖x − z‖² (zeros if
    λ = 0 or no ``z``), total = data + λ·reg (reductions: module docstring)."""
    data = sq_norm(physics(x) - y, reduction)
    if lam and z is not None:
        reg = sq_norm(x - z, reduction)
        return data + lam * reg, data, reg
    return data, data, torch.zeros_like(data)


@dataclass
class DIPProblem:
    """What the variant hooks know about the current solve."""

    y: torch.Tensor            # measurements [B, ...]
    physics: nn.Module
    is_complex: bool           # complex (MRI) images
    dtype: torch.dtype         # the networks' real dtype (float64 for float64 / complex128 data)
    noise: NoiseStreams        # per-slice generators seeded seeds[b] + 1
    support: Optional[torch.Tensor] = None   # the operator's image support (None: every pixel)
    histories: Optional[list] = None         # the slices' own histories (variants may add entries)
    state: dict = field(default_factory=dict)  # a variant's state over one solve

    def restrict(self, x: torch.Tensor) -> torch.Tensor:
        """An image ``[B,H,W]`` set to 0 outside the operator's image support."""
        return restrict_to_support(x, self.support)

    @property
    def batch(self) -> int:
        return int(self.y.shape[0])


class DIPSolver(SolverBase):
    """The DIP loop (:meth:`__call__`) and the hooks a variant overrides.

    ``Solver(cfg=None, denoiser=None, seed=0, device=None, seeds=None, perf=None)``: ``cfg``
    overrides the class's ``default_config()`` (unknown fields raise); ``perf`` holds the speed
    settings (``solvers/perf.py``; they change how steps execute, not what is computed).
    ``solver(y [B,...], physics, x_gt=None, callback=None) -> Result``.
    """

    name = "dip-base"
    #: ``solvers.make_solver`` hands ``perf`` to solvers that take it
    takes_perf = True
    #: the fields every DIP variant shares (a variant's ``RANGES`` adds its own)
    RANGES = DIP_COMMON_RANGES

    def __init__(self, cfg: Any = None, denoiser: Any = None, seed: int = 0,
                 device: Optional[torch.device | str] = None, seeds: Optional[Sequence[int]] = None,
                 perf: Any = None):
        self.keep_settings(self.checked_config(cfg), seed, seeds,
                           None if device is None else torch.device(device))
        self.denoiser = denoiser
        self.perf = perf_policy.validate(perf)
        self._validate()

    def check_config(self, cfg) -> None:
        if cfg.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {cfg.reduction!r}; choose one of {REDUCTIONS}")

    # ------------------------------------------------------------------ the variant's hooks
    def _validate(self) -> None:
        """Raise ``ValueError`` for an invalid ``self.cfg`` beyond the ranges of ``RANGES``."""

    def iterations(self) -> tuple[int, int]:
        """``(K, N)``: outer iterations and optimiser steps per outer iteration."""
        raise NotImplementedError

    def lam(self) -> float:
        """λ, the weight of ``‖x − z‖²``."""
        return float(self.cfg.lam)

    def input_channels(self) -> Optional[int]:
        """The networks' input channels when ``z`` is not an image (``None``: image channels)."""
        return None

    def input_lr(self) -> Optional[float]:
        """The learning rate of ``z`` when the input is itself optimised (``None``: frozen)."""
        return None

    def initial_input(self, p: DIPProblem) -> torch.Tensor:
        """``z₀``: an image ``[B,H,W]`` or a channel tensor ``[B,C,H,W]``."""
        raise NotImplementedError

    def step_noise(self, p: DIPProblem, z: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fresh random inputs of one optimiser step (drawn outside the step, per slice)."""
        return ()

    def estimate(self, p: DIPProblem, net: Callable, z: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        """The image ``x`` ``[B,H,W]`` the loss is computed on: ``f_θ(z)``."""
        return from_channels(net(to_channels(z) if z.ndim == 3 else z), p.is_complex)

    def update_input(self, p: DIPProblem, k: int, x: torch.Tensor, z: torch.Tensor, history: dict) -> torch.Tensor:
        """(2) the input after outer iteration ``k`` (0-based) from ``x = f_θ(z)``; entries added to
        ``history`` are shared by all slices."""
        return z

    def output(self, p: DIPProblem, net: Callable, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The returned image (no gradients): ``f_θ(z_K)``."""
        return self.estimate(p, net, z)

    def extra_info(self) -> dict:
        return {}

    # ------------------------------------------------------------------------------ THE loop
    def __call__(self, y: torch.Tensor, physics: nn.Module, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback | Sequence[Optional[Callback]]] = None) -> Result:
        c = self.cfg
        check_measurements(y)
        device = self.device or y.device
        y = y.to(device)
        B = y.shape[0]
        cbs = per_slice_callbacks(callback, B, self.seeds)
        seeds = self.seeds or [self.seed] * B
        dtype = torch.float64 if y.dtype in (torch.complex128, torch.float64) else torch.float32
        p = DIPProblem(y, physics, bool(physics.is_complex), dtype,
                       NoiseStreams.per_slice([s + 1 for s in seeds], device), image_support(physics, device))
        plan = perf_policy.plan(self.perf, device, B)
        K, N = self.iterations()
        if K < 1 or N < 1:
            raise ValueError(f"{self.name}: need at least one outer iteration and one step, got K={K}, N={N}")
        lam = self.lam()
        log = _Log(B, c.log_every, callback, cbs, x_gt)
        p.histories = log.histories

        with deterministic_mode(c.deterministic), progress_bar(K * N, self.name, c.disable_progress) as pbar, \
                finite_checks(physics, False):     # y was checked; non-finite losses are caught below
            z = self.initial_input(p)                                                       # z₀
            if self.input_lr() is not None:
                z.requires_grad_(True)
            engine = make_engine(
                plan, net_cfg=c.net, is_complex=p.is_complex, seeds=seeds, device=device, dtype=dtype,
                estimate=lambda net, zz, *n: p.restrict(self.estimate(p, net, zz, *n)),   # fit inside the support
                loss=lambda x, zz, *n: dip_loss(x, y, physics, lam, zz, c.reduction),
                lr=c.lr, betas=c.betas, weight_decay=c.weight_decay, in_channels=self.input_channels(),
                trainable_input=z if self.input_lr() is not None else None, input_lr=self.input_lr())
            guard = _NaNGuard(engine, log.histories, int(c.max_nan_events))
            for k in range(K):
                snap = engine.snapshot()
                # (1) N optimiser steps on ‖A f_θ(z) − y‖² + λ‖f_θ(z) − z‖² (z frozen unless trained)
                for i in range(1, N + 1):
                    step = k * N + i
                    check = log.due(step) or (k == K - 1 and i == N)
                    before = engine.snapshot() if check else None   # the loss is read after the update
                    s = engine.step(z, *self.step_noise(p, z))
                    bad = s.bad or [False] * B
                    if check:
                        good = log.record(step, k, s, engine.lr, bad, pbar)
                        engine.update_snapshot(snap, good, source=before)
                        bad = [not g for g in good]
                    guard.roll_back(bad, step, snap)
                    pbar.update(1)
                x = self._fitted(p, engine, z, guard, snap, (k + 1) * N)
                # (2) input update
                z = self.update_input(p, k, x, z, log.common)
            with torch.no_grad():
                x = p.restrict(self.output(p, engine.net, z, x)).detach()

        info = {"seed": self.seed, "config": c.to_dict(), "num_params": engine.num_params, **self.extra_info(),
                "perf": plan.to_dict(), "cuda_graph": engine.graph_used, "cuda_graph_error": engine.graph_error}
        if self.seeds is not None:
            info["seeds"] = list(self.seeds)
        return log.result(x, info, self.seeds, {"z": z.detach()} if self.input_lr() is not None else {})

    def _fitted(self, p: DIPProblem, engine: StepEngine, z: torch.Tensor, guard: "_NaNGuard", snap,
                step: int) -> torch.Tensor:
        """``x = f_θ(z)`` after the steps of an outer iteration; slices with a non-finite ``x`` are
        rolled back (NaN guard) and ``x`` recomputed."""
        with torch.no_grad():
            x = p.restrict(self.estimate(p, engine.net, z, *self.step_noise(p, z))).detach()
            fin = finite_per_slice(x)
            if not bool(fin.all()):
                guard.roll_back((~fin).tolist(), step, snap)
                x = p.restrict(self.estimate(p, engine.net, z, *self.step_noise(p, z))).detach()
        return x


class _NaNGuard:
    """Per-slice roll-back: restore the slice's last good state, halve its learning rate, record
    ``{"step", "lr"}`` in its ``history["nan_events"]``; too many events raise."""

    def __init__(self, engine: StepEngine, histories: list[dict], max_events: int):
        self.engine, self.histories, self.max_events = engine, histories, max_events

    def roll_back(self, bad: Sequence[bool], step: int, snap) -> None:
        if not any(bad):
            return
        self.engine.restore(snap, bad)
        for b in (i for i, v in enumerate(bad) if v):
            events = self.histories[b].setdefault("nan_events", [])
            events.append({"step": step, "lr": self.engine.scale_lr(b, 0.5)})
            if len(events) > self.max_events:
                raise RuntimeError(f"DIP optimisation of slice {b} diverged {len(events)} times (non-finite "
                                   "loss); lower the learning rate or check the measurement scaling")


class _Log:
    """Per-slice histories, callbacks and the progress-bar text of one solve."""

    KEYS = ("step", "loss", "data_loss", "reg_loss", "lr")

    def __init__(self, B: int, log_every: int, callback, cbs: Optional[list], x_gt: Optional[torch.Tensor]):
        self.B, self.every = B, max(1, int(log_every))
        self.callback, self.cbs, self.x_gt = callback, cbs, x_gt
        self.histories: list[dict] = [{} for _ in range(B)]
        self.common: dict = {}          # entries shared by all slices (e.g. purification steps t_k)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, k: int, s: StepResult, lrs: list[float], bad: Sequence[bool], pbar) -> list[bool]:
        """Log step ``step`` (host sync); returns per slice whether its loss was finite (and kept)."""
        vals = torch.stack((s.total, s.data, s.reg)).tolist()
        good = [math.isfinite(vals[0][b]) and not bad[b] for b in range(self.B)]
        rows = [dict(zip(self.KEYS, (step, vals[0][b], vals[1][b], vals[2][b], lrs[b]))) for b in range(self.B)]
        for b in (b for b in range(self.B) if good[b]):
            for key, v in rows[b].items():
                self.histories[b].setdefault(key, []).append(v)
        if self.cbs is not None:
            for b, cb in enumerate(self.cbs):
                if good[b]:
                    notify(cb, step, s.x[b:b + 1].clone(), {**self._info(rows[b]), "outer": k, "phase": "fit"},
                           None if self.x_gt is None else self.x_gt[b:b + 1])
        kept = [rows[b] for b in range(self.B) if good[b]]
        if kept:
            mean = {key: sum(r[key] for r in kept) / len(kept) for key in self.KEYS[1:]}
            if self.cbs is None:
                notify(self.callback, step, s.x.clone(), {**mean, "outer": k, "phase": "fit"}, self.x_gt)
            pbar.set_postfix(loss=f"{mean['loss']:.3e}", refresh=False)
        return good

    @staticmethod
    def _info(row: dict) -> dict:
        return {key: v for key, v in row.items() if key != "step"}

    def result(self, x: torch.Tensor, info: dict, seeds: Optional[list[int]], per_slice: dict) -> Result:
        """The solve's :class:`Result`: for one slice its history; for ``B`` slices
        ``{"per_slice": [...], **common}``; ``info["slices"]``: one one-slice-style Result per slice
        (tensors in ``per_slice`` are sliced, ``[b:b+1]``)."""
        histories = [{**h, **{k: list(v) for k, v in self.common.items()}} for h in self.histories]
        info = {**info, **per_slice}
        slices = slice_results(x, histories, info, seeds)
        for b, r in enumerate(slices):
            r.info.update({k: v[b:b + 1] for k, v in per_slice.items()})
        info["slices"] = slices
        history = histories[0] if self.B == 1 else {"per_slice": histories, **self.common}
        return Result(x_hat=x, history=history, info=info)
