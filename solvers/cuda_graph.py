"""Replay one optimiser step from a captured CUDA graph (``torch.cuda.CUDAGraph``)."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch

__all__ = ["CUDAGraphStep"]


class CUDAGraphStep:
    """``step(*inputs)`` = ``fn(*inputs)``, replayed from one captured CUDA graph after ``warmup``
    eager calls.

    ``fn`` must issue the same kernels on every call and read no host value (e.g. forward, loss,
    backward and a capturable :class:`solvers.optim.StackedAdam` step).  The first ``warmup`` calls
    run eagerly on a side stream (PyTorch's recipe for capturing backward passes; they are real
    steps), the next call captures ``fn`` and every later call is one replay: the inputs are copied
    into static buffers (except the tensors in ``passthrough``, e.g. trainable inputs, which are used
    as they are) and the returned tensors are static outputs, overwritten by the next call (clone
    what you keep).  If capturing fails (an operation that syncs with the host, say), a warning is
    issued, ``error`` records why, and this and every later call run ``fallback(*inputs)`` eagerly.
    """

    def __init__(self, fn: Callable, fallback: Callable, warmup: int = 3,
                 passthrough: Sequence[torch.Tensor] = ()):
        self.fn, self.fallback = fn, fallback
        self.warmup = max(1, int(warmup))
        self.passthrough = list(passthrough)
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.error: Optional[str] = None
        self._static_in: Optional[list[torch.Tensor]] = None
        self._static_out = None

    def _is_passthrough(self, t: torch.Tensor) -> bool:
        return any(t is p for p in self.passthrough)

    def __call__(self, *inputs: torch.Tensor):
        self.calls += 1
        if self.error is not None:
            return self.fallback(*inputs)
        if self._static_in is None:
            self._static_in = [t if self._is_passthrough(t) else t.detach().clone() for t in inputs]
        for s, t in zip(self._static_in, inputs):
            if s is not t:
                s.copy_(t)
        static = self._static_in
        device = static[0].device
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                out = self.fn(*static)
            torch.cuda.current_stream(device).wait_stream(side)
            return out
        if self.graph is None:
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g):
                    out = self.fn(*static)
            except Exception as e:  # capture failed: nothing was executed, continue eagerly
                # the first error (e.g. a host sync inside the step) is the context of the one
                # that ending the capture raises
                chain = [e] + ([e.__context__] if e.__context__ is not None else [])
                self.error = " <- ".join(f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}"
                                         for x in reversed(chain))
                warnings.warn(f"CUDA-graph capture of the DIP step failed ({self.error}); running eagerly",
                              stacklevel=3)
                torch.cuda.synchronize(device)
                return self.fallback(*inputs)
            self.graph, self._static_out = g, out
        self.graph.replay()
        return self._static_out
