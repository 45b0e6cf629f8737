"""How one optimiser step of the DIP loop executes (``solvers/dip_loop.py`` calls it; it is not a loop).

The loop sees a :class:`StepEngine`: ``B`` networks ``f_θ_b`` (one per slice) with their optimiser,

* ``step(*inputs)`` — one optimiser step on ``Σ_b L_b`` where ``x = estimate(net, *inputs)`` and
  ``(L, data, reg) = loss(x, *inputs)`` are per-slice ``[B]`` losses (so ``∂/∂θ_b`` sees slice
  ``b``'s loss only); returns the pre-update ``StepResult(x, total, data, reg, bad)``, detached;
* ``net(zc)`` — the networks on a channel-packed input ``[B, (M,) C, H, W]`` (for estimates outside
  the step, under ``torch.no_grad``);
* ``snapshot()`` / ``update_snapshot(snap, mask, source)`` / ``restore(snap, mask)`` — per-slice
  roll-back of parameters and optimiser state (not learning rates);
* ``lr`` (per slice) and ``scale_lr(b, factor)``; ``num_params`` (of one network);
  ``graph_used`` / ``graph_error``.

:class:`DIPEngine` is the engine: the ``B`` networks are :class:`models.stacked_dip.StackedDIPNets`
(``vmap`` / grouped / grouped channels-last), the optimiser :class:`solvers.optim.StackedAdam`
(plus one for a trainable input with its own learning rate, e.g. self-guided DIP's ``z``), and each
step runs eagerly or is replayed from a CUDA graph (:class:`solvers.cuda_graph.CUDAGraphStep`).
For one slice with the grouped network its arithmetic is that of one :class:`DIPUNet` with
``torch.optim.Adam``, op for op.  :func:`make_engine` builds it from a :class:`solvers.perf.Plan`.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import torch

from models.stacked_dip import StackedDIPNets
from solvers.common import finite_per_slice
from solvers.cuda_graph import CUDAGraphStep
from solvers.optim import StackedAdam

__all__ = ["StepResult", "StepEngine", "DIPEngine", "make_engine"]


class StepResult(NamedTuple):
    """One step's pre-update estimate ``x [B,H,W]`` and per-slice losses ``[B]`` (detached);
    ``bad``: ``None``, or per slice whether ``x`` was non-finite and rejected by the operator."""

    x: torch.Tensor
    total: torch.Tensor
    data: torch.Tensor
    reg: torch.Tensor
    bad: Optional[list[bool]]


class StepEngine(Protocol):
    """What the DIP loop needs from an engine (see the module docstring)."""

    batch: int
    num_params: int
    graph_used: bool
    graph_error: Optional[str]

    def net(self, zc: torch.Tensor) -> torch.Tensor: ...
    def step(self, *inputs: torch.Tensor) -> StepResult: ...
    def snapshot(self) -> Any: ...
    def update_snapshot(self, snap: Any, mask: Sequence[bool], source: Any = None) -> None: ...
    def restore(self, snap: Any, mask: Sequence[bool]) -> None: ...
    @property
    def lr(self) -> list[float]: ...
    def scale_lr(self, b: int, factor: float) -> float: ...


class DIPEngine:
    """``B`` stacked DIP networks + :class:`StackedAdam`; eager steps or CUDA-graph replay.

    Args:
        nets: the networks.
        estimate: ``(net, *inputs) -> x [B,H,W]`` — the image the loss is computed on.
        loss: ``(x, *inputs) -> (total, data, reg)``, each ``[B]``.
        lr, betas, weight_decay: Adam settings of the networks (every slice starts at ``lr``).
        trainable_input, input_lr: an extra trainable tensor ``[B, ...]`` optimised with its own
            Adam (learning rate ``input_lr``; it must be passed to :meth:`step` as an input).
        cuda_graph: replay each step from a CUDA graph (CUDA only; capturable Adam).
        bf16: autocast the networks to bfloat16 (outputs cast back).
    """

    def __init__(self, nets: StackedDIPNets, estimate: Callable, loss: Callable, *, lr: float,
                 betas=(0.9, 0.999), weight_decay: float = 0.0, trainable_input: Optional[torch.Tensor] = None,
                 input_lr: Optional[float] = None, cuda_graph: bool = False, bf16: bool = False):
        self.nets, self.estimate, self.loss, self.bf16 = nets, estimate, loss, bool(bf16)
        self.batch = nets.batch
        self.num_params = nets.num_params_per_net
        adam = dict(betas=tuple(betas), weight_decay=float(weight_decay), capturable=bool(cuda_graph))
        self.opts = [StackedAdam(nets.parameters(), self.batch, lr=float(lr), **adam)]
        if trainable_input is not None:
            self.opts.append(StackedAdam([trainable_input], self.batch, lr=float(input_lr), **adam))
        self._graph = None
        if cuda_graph:
            self._graph = CUDAGraphStep(lambda *i: self._step(*i, allow_bad=False), self._step,
                                        passthrough=[] if trainable_input is None else [trainable_input])

    @property
    def graph_used(self) -> bool:
        """Whether a CUDA graph of the step was captured (later steps replay it)."""
        return self._graph is not None and self._graph.graph is not None

    @property
    def graph_error(self) -> Optional[str]:
        return None if self._graph is None else self._graph.error

    def net(self, zc: torch.Tensor) -> torch.Tensor:
        """``f_θ`` on a channel-packed input ``[B, (M,) C, H, W]``."""
        if not self.bf16:
            return self.nets(zc)
        # no autocast weight cache: a CUDA graph cannot capture it (and each weight is used once)
        with torch.autocast(device_type=zc.device.type, dtype=torch.bfloat16, cache_enabled=False):
            out = self.nets(zc)
        return out.to(zc.dtype)

    def _step(self, *inputs: torch.Tensor, allow_bad: bool = True) -> StepResult:
        for opt in self.opts:
            opt.zero_grad()
        x = self.estimate(self.net, *inputs)
        bad = None
        try:
            total, data, reg = self.loss(x, *inputs)
        except ValueError:
            # an operator that rejects non-finite images: the non-finite slices are zeroed for this
            # step and reported in ``bad`` (the loop rolls them back)
            fin = finite_per_slice(x.detach())
            if not allow_bad or bool(fin.all()):
                raise
            bad = (~fin).tolist()
            x = torch.where(fin.view(-1, *[1] * (x.ndim - 1)), x, torch.zeros((), dtype=x.dtype, device=x.device))
            total, data, reg = self.loss(x, *inputs)
        total.sum().backward()
        for opt in self.opts:
            opt.step()
        return StepResult(x.detach(), total.detach(), data.detach(), reg.detach(), bad)

    def step(self, *inputs: torch.Tensor) -> StepResult:
        """One optimiser step (see the module docstring); graph replays return static tensors,
        overwritten by the next step."""
        return self._step(*inputs) if self._graph is None else self._graph(*inputs)

    # ------------------------------------------------------------------ per-slice state
    def snapshot(self) -> list[dict]:
        return [opt.snapshot() for opt in self.opts]

    def update_snapshot(self, snap: list[dict], mask: Sequence[bool], source: Optional[list[dict]] = None) -> None:
        for i, opt in enumerate(self.opts):
            opt.update_snapshot(snap[i], mask, None if source is None else source[i])

    def restore(self, snap: list[dict], mask: Sequence[bool]) -> None:
        for opt, s in zip(self.opts, snap):
            opt.restore(s, mask)

    @property
    def lr(self) -> list[float]:
        """The networks' learning rate per slice."""
        return self.opts[0].lr

    def scale_lr(self, b: int, factor: float) -> float:
        """Scale slice ``b``'s learning rates (networks and trainable input); returns the networks'."""
        for opt in self.opts[1:]:
            opt.scale_lr(b, factor)
        return self.opts[0].scale_lr(b, factor)


def make_engine(plan, *, net_cfg: Any, is_complex: bool, seeds: Sequence[int], device, dtype: torch.dtype,
                estimate: Callable, loss: Callable, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                in_channels: Optional[int] = None, trainable_input: Optional[torch.Tensor] = None,
                input_lr: Optional[float] = None) -> DIPEngine:
    """The engine of ``plan`` (:func:`solvers.perf.plan`) for networks ``build_dip_net(net_cfg,
    is_complex, seeds[b])`` in ``dtype`` on ``device``."""
    nets = StackedDIPNets(net_cfg, is_complex, seeds, device=device, dtype=dtype, in_channels=in_channels,
                          impl=plan.net_impl, compile=plan.compile)
    return DIPEngine(nets, estimate, loss, lr=lr, betas=betas, weight_decay=weight_decay,
                     trainable_input=trainable_input, input_lr=input_lr, cuda_graph=plan.cuda_graph, bf16=plan.bf16)
