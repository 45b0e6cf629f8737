"""Adam on stacked ``[B, ...]`` parameters: ``B`` independent Adams with a per-slice learning rate,
step count and roll-back (the optimiser of the DIP step engines, ``solvers/engines.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["StackedAdam"]


def _real(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor as its real view ``[..., 2]`` (as ``torch.optim.Adam`` treats complex
    parameters); a real tensor unchanged."""
    return torch.view_as_real(t) if torch.is_complex(t) else t


class StackedAdam:
    """Adam on stacked ``[B, ...]`` parameters = ``B`` independent Adams (PyTorch's formula).

    Adam is elementwise, so slice ``b`` of every parameter follows exactly the update a
    ``torch.optim.Adam`` on slice ``b`` alone would make.  ``lr`` and the step count are per slice
    (lists of length ``B``); when they agree across the batch (the normal case) the update is
    literally ``torch.optim.Adam``'s single-tensor update, op for op (bit-identical on CPU).
    Complex parameters are updated through their real views, as ``torch.optim.Adam`` does.
    ``snapshot`` / ``restore(snap, mask)`` / ``update_snapshot`` copy or roll back the state of the
    slices in ``mask``.

    ``capturable=True`` keeps the per-slice step counts and learning rates on the parameters'
    device (``[B]`` float64 tensors) and computes the bias corrections there, so that one
    :meth:`step` issues the same kernels every time and reads no host value: a CUDA graph can
    capture it.  Same formula; the bias corrections are rounded once to the parameter dtype (vs
    Python doubles), so it agrees with the default mode to float rounding.
    """

    def __init__(self, params: Sequence[torch.Tensor], batch: int, lr: float = 1e-4,
                 betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0, capturable: bool = False):
        self.params = list(params)
        self.B = int(batch)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.capturable = bool(capturable)
        dev = self.params[0].device if self.params else None
        self._lr_t = torch.full((self.B,), float(lr), dtype=torch.float64, device=dev) if capturable else None
        self._step_t = torch.zeros(self.B, dtype=torch.float64, device=dev) if capturable else None
        self._lr = [float(lr)] * self.B
        self._step_count = [0] * self.B
        self._rp = [_real(p.detach()) for p in self.params]
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self._rp]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self._rp]

    # per-slice learning rates / step counts (host lists; device tensors too when capturable)
    @property
    def lr(self) -> list[float]:
        return list(self._lr)

    @lr.setter
    def lr(self, values: Sequence[float]) -> None:
        values = [float(v) for v in values]
        if len(values) != self.B:
            raise ValueError(f"need {self.B} learning rates, got {len(values)}")
        self._lr = values
        if self._lr_t is not None:
            self._lr_t.copy_(torch.tensor(values, dtype=torch.float64))

    def scale_lr(self, b: int, factor: float) -> float:
        """Multiply slice ``b``'s learning rate by ``factor``; returns the new value."""
        lrs = self.lr
        lrs[b] *= float(factor)
        self.lr = lrs
        return lrs[b]

    @property
    def step_count(self) -> list[int]:
        if self._step_t is not None:
            return [int(v) for v in self._step_t.tolist()]        # host sync (tests / reports only)
        return list(self._step_count)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _per_slice(self, values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).reshape(
            (self.B,) + (1,) * (like.ndim - 1))

    def _views(self, t: torch.Tensor, likes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [t.view((self.B,) + (1,) * (x.ndim - 1)) for x in likes]

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.beta1, self.beta2
        live = [(rp, _real(p.grad), m, v) for p, rp, m, v in zip(self.params, self._rp, self.exp_avg, self.exp_avg_sq)
                if p.grad is not None]
        if not self.capturable:
            self._step_count = [s + 1 for s in self._step_count]
        if not live:
            if self.capturable:
                self._step_t.add_(1)
            return
        ps, gs, ms, vs = (list(t) for t in zip(*live))
        # multi-tensor (foreach) ops: a handful of kernel launches per step for all tensors
        if self.weight_decay:
            gs = torch._foreach_add(gs, ps, alpha=self.weight_decay)
        torch._foreach_lerp_(ms, gs, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, gs, gs, value=1 - b2)
        denom = torch._foreach_sqrt(vs)
        if self.capturable:
            self._step_t.add_(1)
            dt = ps[0].dtype
            bc2s = (1 - torch.pow(b2, self._step_t)).sqrt().to(dt)
            neg_step = (-self._lr_t / (1 - torch.pow(b1, self._step_t))).to(dt)
            torch._foreach_div_(denom, self._views(bc2s, denom))
            torch._foreach_add_(denom, self.eps)
            upd = torch._foreach_div(ms, denom)
            torch._foreach_mul_(upd, self._views(neg_step, upd))
            torch._foreach_add_(ps, upd)
            return
        bc1 = [1 - b1 ** s for s in self._step_count]
        bc2s = [(1 - b2 ** s) ** 0.5 for s in self._step_count]
        if len(set(self._step_count)) == 1 and len(set(self._lr)) == 1:
            torch._foreach_div_(denom, bc2s[0])
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(ps, ms, denom, value=-(self._lr[0] / bc1[0]))
        else:
            for p, m, v, d in zip(ps, ms, vs, denom):
                d.div_(self._per_slice(bc2s, v)).add_(self.eps)
                step_size = self._per_slice([lr / c for lr, c in zip(self._lr, bc1)], p)
                p.sub_(step_size * m / d)

    # ------------------------------------------------------------------ per-slice roll-back
    def snapshot(self) -> dict:
        """A copy of the parameters, moments and step counts (not the learning rates)."""
        step = self._step_t.clone() if self.capturable else list(self._step_count)
        return {"p": [p.clone() for p in self._rp], "m": [m.clone() for m in self.exp_avg],
                "v": [v.clone() for v in self.exp_avg_sq], "step": step}

    @torch.no_grad()
    def _copy_slices(self, dst: dict | None, src: dict | None, idx: list[int]) -> None:
        """Copy the state of slices ``idx`` from ``src`` to ``dst`` (``None`` = this optimiser)."""
        cur = {"p": self._rp, "m": self.exp_avg, "v": self.exp_avg_sq}
        d, s = dst or cur, src or cur
        ii = torch.tensor(idx, device=self.params[0].device) if self.params else None
        for key in ("p", "m", "v"):
            for dt, st in zip(d[key], s[key]):
                dt.index_copy_(0, ii, st.index_select(0, ii))
        if self.capturable:
            d_step = dst["step"] if dst is not None else self._step_t
            s_step = src["step"] if src is not None else self._step_t
            d_step.index_copy_(0, ii, s_step.index_select(0, ii))
        else:
            d_step = dst["step"] if dst is not None else self._step_count
            s_step = src["step"] if src is not None else self._step_count
            for b in idx:
                d_step[b] = s_step[b]

    def update_snapshot(self, snap: dict, mask: Sequence[bool], source: Optional[dict] = None) -> None:
        """Copy the state of the slices where ``mask`` is True into ``snap``: the current state, or
        that of the snapshot ``source``."""
        idx = [b for b, ok in enumerate(mask) if ok]
        if not idx:
            return
        if len(idx) == self.B:
            snap.update(self.snapshot() if source is None else source)
            return
        self._copy_slices(snap, source, idx)

    def restore(self, snap: dict, mask: Sequence[bool]) -> None:
        """Roll the slices where ``mask`` is True back to ``snap``."""
        idx = [b for b, bad in enumerate(mask) if bad]
        if idx:
            self._copy_slices(None, snap, idx)
