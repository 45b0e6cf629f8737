"""Batched uDiG-DIP / aSeqDIP / vanilla DIP: ``B`` slices reconstructed together by ``B`` independent DIP networks.

Each slice ``b`` has its own U-Net ``f_{θ_b}`` initialised with ``build_dip_net(seed_b)`` (exactly
the weights of a one-at-a-time :class:`solvers.udig_dip.UDiGDIP` run with ``seed=seed_b``), its
own Adam state, its own purification noise (``torch.Generator`` seeded ``seed_b + 1``) and its own
NaN guard.  The ``B`` networks are evaluated in ONE call:

* parameters are stacked with ``torch.func.stack_module_state`` (``[B, ...]`` per tensor) and the
  network is run with ``torch.func.vmap(functional_call)`` over a batch of ONE image per network
  (``[B, 1, C, H, W]``), so every BatchNorm normalises with the statistics of its own slice only,
  exactly as a batch-1 single run does.  ``torch.func.replace_all_batch_norm_modules_`` removes
  the BatchNorm running statistics (in-place buffer updates are not allowed under ``vmap``); the
  DIP solvers never use them (the network stays in train mode to the end, so every forward,
  including the final ``f_θ(z_K)``, normalises with batch statistics), so outputs are unchanged.
* the loss is the SUM over slices of the per-slice losses ``L_b = ‖A f_{θ_b}(z_b) − y_b‖² +
  λ‖f_{θ_b}(z_b) − z_b‖²`` (each with the solver's reduction over that slice only), hence
  ``∂L/∂θ_b = ∂L_b/∂θ_b``: gradients do not couple;
* :class:`StackedAdam` is Adam applied elementwise to the stacked tensors (Adam is elementwise,
  so this is ``B`` independent Adams) with a per-slice learning rate and step count (the NaN
  guard halves one slice's learning rate and rolls back only that slice);
* purification is one batched prior call (``Denoiser.eps`` on ``[B,H,W]``), with the forward
  noise drawn per slice from that slice's generator, in the same order as a single run.

Equivalence with one-at-a-time runs: the batched and the single computations are the same
arithmetic except for the summation order inside the convolutions (vmap over stacked weights runs
a grouped convolution; a batch-1 single run a plain one) and inside the prior's batched kernels.
In float64 the per-slice results therefore agree with :class:`UDiGDIP` to ~1e-10 relative; in
float32 the ~1e-7 rounding differences are amplified by Adam (it normalises the gradient, so
tiny gradient components can flip sign) and by the non-linear loop, and the agreement is ~1e-4–1e-3
relative after a few dozen steps (``tests/test_perf.py`` checks both).  Bit-identity is not
possible with different kernels.

Usage::

    physics = stack_physics([A_0, ..., A_{B-1}])          # or one operator shared by the batch
    res = BatchedUDiGDIP(cfg, denoiser, seeds=[s_0, ..., s_{B-1}])(y [B,...], physics)
    for b, r in enumerate(split_result(res)): ...         # per-slice Results like UDiGDIP's

``BatchedSeqDIP`` is the purification-free variant (aSeqDIP); ``BatchedVanillaDIP`` runs vanilla
DIP (noise input, λ = 0, one outer iteration) through the same loop.  The network's parameter dtype
follows the measurements (float64 for complex128 / float64 data, else float32).  Optional
``cfg.perf`` fields: ``bf16`` (autocast the DIP network to bfloat16 on CUDA, or on CPU when
``bf16_cpu``), ``compile`` (``torch.compile`` the vmapped network; CPU only — refused with a
warning on CUDA, where it gave wrong images, see :func:`compile_refusal`), ``cuda_graph``
(``"auto"`` default: on CUDA every optimiser step after the first three is replayed from one
captured CUDA graph, :class:`BatchedDIPStep`; ``"on"`` / ``"off"``), ``net_impl`` (how the B
networks are evaluated, :data:`NET_IMPLS`; ``"auto"`` → :data:`AUTO_NET_IMPL`).
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from models.dip_unet import build_dip_net
from physics import finite_checks, stack_physics  # noqa: F401  (stack_physics re-exported for callers)
from solvers.base import Callback, Result, split_result  # noqa: F401  (re-exported for callers)
from solvers.common import deterministic_mode, initial_input, progress_bar
from solvers.udig_dip import UDiGDIP, default_config as _udig_default_config, scaled_purify
from utils.complex import from_channels, to_channels
from utils.rng import NoiseStreams, make_generator

__all__ = ["BatchedDIPNets", "StackedAdam", "BatchedUDiGDIP", "BatchedSeqDIP", "BatchedVanillaDIP", "split_result",
           "stack_physics"]


def _perf_defaults() -> dict:
    return dict(bf16=False,       # autocast the DIP network to bfloat16 (CUDA). Our choice: off (exactness).
                bf16_cpu=False,   # also autocast on CPU (slow on most CPUs). Our choice.
                compile=False,    # torch.compile the vmapped network (CPU only, see compile_refusal). Our choice: off.
                net_impl="auto",    # how the B nets run: "auto" (see resolve_net_impl), "vmap", "grouped", "grouped_cl"
                cuda_graph="auto")  # replay each DIP step from a CUDA graph: "auto" (= on CUDA), "on", "off".
    #                                   Our choice: auto (10× per slice on the demo, equal quality; README)


def default_config():
    """uDiG-DIP's config (``solvers.udig_dip.default_config``) plus ``perf`` (see module docstring)."""
    cfg = _udig_default_config()
    cfg.perf = _perf_defaults()
    return cfg


def seqdip_default_config():
    from solvers.seqdip import default_config as seq_default

    cfg = seq_default()
    cfg.perf = _perf_defaults()
    return cfg


# ----------------------------------------------------------------------------------- networks
def compile_refusal(device: torch.device) -> Optional[str]:
    """Why ``torch.compile`` of the vmapped DIP networks is refused on ``device`` (``None`` = allowed).

    On CUDA it is refused: on an H200 with torch 2.11 + CUDA 13.0 the compiled networks ran without
    error or warning and returned wrong images in whole solves (demo MRI: PSNR −12 to −33 dB against
    +20 dB eager; the same setting on CPU agreed with eager to rounding).  Single compiled calls on
    the H200 agree with eager as closely as ``aot_eager`` (no code generation) does — forward 9e-4
    relative, 5 in-place SGD steps 2e-3, bf16 9e-3, without BatchNorm 4e-8 (``bench.py
    --compile_check``, exp/recorded/h200_2026-11-26/run1_compile_check.json) — so the failure lies in
    the solve (Adam, the no-grad final forward, recompilation), not in one call; not found.  CUDA
    graphs (``perf.cuda_graph``) remove the host overhead that compile was meant to cut.  Lift this
    only with a GPU test that compares compiled and eager SOLVES.
    """
    if device.type == "cuda":
        return ("torch.compile of the vmapped DIP networks returned wrong images on CUDA (H200, "
                "torch 2.11; see solvers.batched.compile_refusal)")
    return None


#: How the B networks are evaluated: ``vmap`` over ``functional_call``, or
#: :func:`models.dip_unet.grouped_forward` (one network with B·C channels and grouped
#: convolutions; ``grouped_cl`` = the same in channels-last layout).  Same arithmetic.
NET_IMPLS = ("vmap", "grouped", "grouped_cl")


#: ``perf.net_impl="auto"`` per device type.  CPU: ``grouped_cl`` (float32 step 17 % faster than
#: vmap at B=3, 64², 2 threads; equal to vmap to 1e-15 in float64).  CUDA: ``vmap`` — on an H200
#: ``grouped_cl`` made the graph-replayed step 1.6× (CT 256²) / 2.0× (MRI 320²) faster at B=1, but
#: a CUDA-vs-CPU check failed its 1e-2 tolerance with it and the demo PSNRs came out 0.2–1.0 dB
#: below the vmap runs; not resolved (no device time left), so it is opt-in there, with a warning.
AUTO_NET_IMPL = {"cpu": "grouped_cl", "cuda": "vmap"}


def resolve_net_impl(value: Any, device: torch.device) -> str:
    """``perf.net_impl`` → one of :data:`NET_IMPLS` (``"auto"`` → :data:`AUTO_NET_IMPL`)."""
    v = str(value).strip().lower()
    if v == "auto":
        return AUTO_NET_IMPL.get(torch.device(device).type, "vmap")
    if v not in NET_IMPLS:
        raise ValueError(f"perf.net_impl must be 'auto' or one of {NET_IMPLS}, got {value!r}")
    return v


def net_impl_caveat(impl: str, device: torch.device) -> Optional[str]:
    """A warning for ``impl`` on ``device`` when that combination is not validated (else ``None``)."""
    if impl != "vmap" and torch.device(device).type == "cuda":
        return (f"perf.net_impl={impl!r} on CUDA is not validated (an H200 check against CPU failed its "
                "tolerance; see solvers.batched.AUTO_NET_IMPL); 'vmap' is the validated choice")
    return None


class BatchedDIPNets:
    """``B`` independent :class:`models.dip_unet.DIPUNet` s evaluated in one call.

    ``params`` is a dict ``name → [B, ...]`` leaf tensor (``requires_grad``); calling with a
    channel-packed input ``[B, C, H, W]`` returns ``[B, C_out, H, W]`` where row ``b`` is network
    ``b`` applied to a batch of one image (its own BatchNorm statistics).  ``impl`` (see
    :data:`NET_IMPLS`) chooses ``vmap`` or the explicit grouped network.
    """

    def __init__(self, net_cfg: Any, is_complex: bool, seeds: Sequence[int], device=None,
                 dtype: torch.dtype = torch.float32, in_channels: Optional[int] = None,
                 compile: bool = False, impl: str = "vmap"):
        from torch.func import replace_all_batch_norm_modules_, stack_module_state

        nets = []
        for s in seeds:
            n = build_dip_net(net_cfg, is_complex, int(s), in_channels=in_channels, device=device)
            n = n.to(dtype=dtype).train()
            replace_all_batch_norm_modules_(n)   # no running stats (unused by DIP, see docstring)
            nets.append(n)
        params, buffers = stack_module_state(nets)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.base = copy.deepcopy(nets[0]).to("meta").train()
        self.batch = len(nets)
        self.num_params_per_net = sum(p.numel() for p in nets[0].parameters())
        if impl not in NET_IMPLS:
            raise ValueError(f"perf.net_impl must be one of {NET_IMPLS}, got {impl!r}")
        caveat = net_impl_caveat(impl, torch.device(device) if device is not None else torch.device("cpu"))
        if caveat:
            warnings.warn(caveat, stacklevel=2)
        self.impl = impl
        self._fn = self._make_fn()
        self.compiled = False
        reason = compile_refusal(torch.device(device) if device is not None else torch.device("cpu"))
        if compile and reason:
            warnings.warn(f"perf.compile ignored, running eagerly: {reason}", stacklevel=2)
        elif compile:
            self.compiled = True
            try:
                self._fn = torch.compile(self._fn, dynamic=False)
            except Exception as e:  # pragma: no cover - depends on the toolchain
                self.compiled = False
                warnings.warn(f"torch.compile failed ({e!r}); running eagerly", stacklevel=2)

    def _make_fn(self) -> Callable:
        from torch.func import functional_call, vmap

        base = self.base
        if self.impl != "vmap":
            from models.dip_unet import grouped_forward

            cl = self.impl == "grouped_cl"
            return lambda params, buffers, x: grouped_forward(base, params, x, channels_last=cl)

        def one(p, b, x):
            return functional_call(base, (p, b), (x.unsqueeze(0),)).squeeze(0)

        vm = vmap(one, in_dims=(0, 0, 0), randomness="error")
        return lambda params, buffers, x: vm(params, buffers, x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[0] != self.batch:
            raise ValueError(f"BatchedDIPNets expects [B={self.batch}, C, H, W], got {tuple(x.shape)}")
        return self._fn(self.params, self.buffers, x)

    def output(self, z: torch.Tensor, is_complex: bool, bf16: bool = False) -> torch.Tensor:
        """The networks' images ``[B,H,W]`` (complex if ``is_complex``) for an image input ``[B,H,W]``
        or a channel-packed one ``[B,C,H,W]``; ``bf16`` autocasts the networks (output cast back)."""
        zc = to_channels(z) if z.ndim == 3 else z
        if bf16:
            # no autocast weight cache: a CUDA graph cannot capture it (and each weight is used once)
            with torch.autocast(device_type=zc.device.type, dtype=torch.bfloat16, cache_enabled=False):
                out = self(zc)
            out = out.to(zc.dtype)
        else:
            out = self(zc)
        return from_channels(out, is_complex)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def unstack(self, b: int, template: Optional[nn.Module] = None) -> dict[str, torch.Tensor]:
        """State dict (parameters only) of network ``b``."""
        return {k: v[b].detach().clone() for k, v in self.params.items()}


class StackedAdam:
    """Adam on stacked ``[B, ...]`` parameters = ``B`` independent Adams (PyTorch's formula).

    ``lr`` and the step count are per slice (lists of length ``B``); when they agree across the
    batch (the normal case) the update is literally ``torch.optim.Adam``'s single-tensor update.
    ``snapshot``/``restore(mask)`` copy / roll back the state of the slices in ``mask``.

    ``capturable=True`` keeps the per-slice step counts and learning rates on the parameters'
    device (``[B]`` float64 tensors) and computes the bias corrections there, so that one
    :meth:`step` issues the same kernels every time and contains no host value: a CUDA graph can
    capture it (:class:`BatchedDIPStep`).  Same formula; the bias corrections are rounded once to the
    parameter dtype (vs Python doubles), so it agrees with the default mode to float rounding.
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
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

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
        live = [(p, m, v) for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq) if p.grad is not None]
        if not self.capturable:
            self._step_count = [s + 1 for s in self._step_count]
        if not live:
            if self.capturable:
                self._step_t.add_(1)
            return
        ps, ms, vs = (list(t) for t in zip(*live))
        gs = [p.grad for p in ps]
        # multi-tensor (foreach) ops: ~8 kernel launches per step instead of ~7 per parameter
        # tensor (the host issues them; on a GPU the DIP step is bound by that, see README)
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

    def snapshot(self) -> dict:
        step = self._step_t.clone() if self.capturable else list(self._step_count)
        return {"p": [p.detach().clone() for p in self.params], "m": [m.clone() for m in self.exp_avg],
                "v": [v.clone() for v in self.exp_avg_sq], "step": step}

    @torch.no_grad()
    def _copy_slices(self, dst: dict | None, src: dict | None, idx: list[int]) -> None:
        """Copy the state of slices ``idx`` from ``src`` to ``dst`` (``None`` = this optimiser)."""
        cur = {"p": [p.detach() for p in self.params], "m": self.exp_avg, "v": self.exp_avg_sq}
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
        that of the snapshot ``source`` (taken before a step whose loss is read after it)."""
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


# ------------------------------------------------------------------------------------ solver
def _sq_per_slice(t: torch.Tensor, reduction: str) -> torch.Tensor:
    a = t.abs().square() if torch.is_complex(t) else t.square()
    a = a.reshape(a.shape[0], -1)
    if reduction == "mean":
        return a.mean(dim=1)
    if reduction == "sum":
        return a.sum(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; choose 'mean' or 'sum'")


def _finite_per_slice(x: torch.Tensor) -> torch.Tensor:
    r = torch.view_as_real(x) if torch.is_complex(x) else x
    return torch.isfinite(r).reshape(r.shape[0], -1).all(dim=1)


def parse_graph_mode(value: Any) -> str:
    """``perf.cuda_graph`` → ``"auto"`` | ``"on"`` | ``"off"`` (accepts bools and on/off/true/false/1/0)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    for mode, words in (("on", ("on", "true", "1", "yes")), ("off", ("off", "false", "0", "no")), ("auto", ("auto",))):
        if v in words:
            return mode
    raise ValueError(f"perf.cuda_graph must be 'auto', 'on' or 'off' (or a bool), got {value!r}")


def graph_wanted(perf: Any, device: torch.device) -> bool:
    """Whether a batched DIP solve with config ``perf`` replays its step from a CUDA graph on
    ``device``: ``"auto"`` → on CUDA only; ``"on"`` → on CUDA, else a warning and eager; ``"off"`` → never."""
    mode = parse_graph_mode("auto" if perf is None else perf.get("cuda_graph", "auto"))
    if mode == "off":
        return False
    reason = graph_refusal(torch.device(device))
    if reason and mode == "on":
        warnings.warn(f"perf.cuda_graph ignored: {reason}", stacklevel=3)
    return reason is None


def graph_refusal(device: torch.device) -> Optional[str]:
    """Why the DIP step cannot be captured in a CUDA graph on ``device`` (``None`` = it can)."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (running on {device.type})"
    return None


class BatchedDIPStep:
    """One optimiser step of ``B`` DIP networks, eager or replayed from a CUDA graph.

    ``step(z_in, z)`` computes ``x = f_θ(z_in)`` (``[B,H,W]``), the per-slice losses ``data_b =
    ‖A x_b − y_b‖²``, ``reg_b = ‖x_b − z_b‖²`` (``reduction`` over each slice), ``total_b = data_b +
    λ reg_b``, back-propagates ``Σ_b total_b`` and applies ``opt`` (a :class:`StackedAdam`);
    it returns ``(x, total, data, reg, bad_x)``, all detached, computed BEFORE the update.
    ``bad_x`` is ``None`` unless the operator rejected a non-finite image (eager only): then the
    list of slices whose ``x`` was not finite (their images were zeroed for the step).

    ``graph=True`` (CUDA): the first ``warmup`` calls run eagerly on a side stream (PyTorch's
    recipe for capturing backward passes; they are real steps, so the trajectory is unchanged),
    the next call captures forward + loss + backward + Adam in one ``torch.cuda.CUDAGraph`` and
    every later call is one replay: the inputs are copied into static buffers and the returned
    tensors are static outputs, overwritten by the next call (clone what you keep).  The host
    then issues ~3 launches per step instead of ~1200 ATen ops.  ``opt`` must be capturable
    (per-slice lr / step count on the device; rolling back slices and changing their learning
    rates between replays is allowed).  If capturing fails (an operator that syncs with the
    host, e.g.), a warning is issued and the step stays eager.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], opt: StackedAdam, physics: nn.Module,
                 y: torch.Tensor, lam: float, reduction: str, graph: bool = False, warmup: int = 3):
        self.forward, self.opt, self.physics, self.y = forward, opt, physics, y
        self.lam, self.reduction = float(lam), reduction
        self.use_graph = bool(graph)
        if graph and not opt.capturable:
            raise ValueError("a CUDA-graph step needs StackedAdam(..., capturable=True)")
        self.warmup = max(1, int(warmup))
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.graph_error: Optional[str] = None
        self._static_in: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._static_out = None

    def _eager(self, z_in: torch.Tensor, z: torch.Tensor, allow_bad: bool = True):
        self.opt.zero_grad()
        x = self.forward(z_in)
        bad_x = None
        try:
            r = self.physics(x) - self.y
        except ValueError:
            fin = _finite_per_slice(x.detach())
            if not allow_bad or bool(fin.all()):
                raise
            bad_x = (~fin).tolist()      # replace non-finite slices; the caller rolls them back
            x = torch.where(fin.view(-1, 1, 1), x, torch.zeros((), dtype=x.dtype, device=x.device))
            r = self.physics(x) - self.y
        data = _sq_per_slice(r, self.reduction)
        reg = _sq_per_slice(x - z, self.reduction) if self.lam else torch.zeros_like(data)
        total = data + self.lam * reg if self.lam else data
        total.sum().backward()
        self.opt.step()
        return x.detach(), total.detach(), data.detach(), reg.detach(), bad_x

    def __call__(self, z_in: torch.Tensor, z: torch.Tensor):
        self.calls += 1
        if not self.use_graph or self.graph_error is not None:
            return self._eager(z_in, z)
        if self._static_in is None:
            self._static_in = (z_in.detach().clone(), z.detach().clone())
        s_in, s_z = self._static_in
        s_in.copy_(z_in)
        s_z.copy_(z)
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream(device=s_in.device)
            side.wait_stream(torch.cuda.current_stream(s_in.device))
            # the operators' NaN checks are host syncs, which a capture cannot contain
            with torch.cuda.stream(side), finite_checks(self.physics, False):
                out = self._eager(s_in, s_z, allow_bad=False)
            torch.cuda.current_stream(s_in.device).wait_stream(side)
            return out
        if self.graph is None:
            g = torch.cuda.CUDAGraph()
            self.opt.zero_grad()
            try:
                with finite_checks(self.physics, False), torch.cuda.graph(g):
                    out = self._eager(s_in, s_z, allow_bad=False)
            except Exception as e:  # capture failed: nothing was executed, continue eagerly
                # the first error (e.g. a host sync inside the step) is the context of the one
                # that ending the capture raises
                chain = [e] + ([e.__context__] if e.__context__ is not None else [])
                self.graph_error = " <- ".join(f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}"
                                               for x in reversed(chain))
                warnings.warn(f"CUDA-graph capture of the DIP step failed ({self.graph_error}); running "
                              "eagerly", stacklevel=2)
                torch.cuda.synchronize(s_in.device)
                self.opt.zero_grad()
                return self._eager(z_in, z)
            self.graph, self._static_out = g, out
        self.graph.replay()
        return self._static_out


class BatchedUDiGDIP(UDiGDIP):
    """uDiG-DIP on ``B`` slices at once: ``BatchedUDiGDIP(cfg, denoiser, seeds)(y, physics)``.

    Args:
        cfg: uDiG-DIP config (fields of :func:`solvers.udig_dip.default_config`, plus ``perf``).
        denoiser: the prior (``models.denoiser.Denoiser``); unused by :class:`BatchedSeqDIP`.
        seeds: one seed per slice; slice ``b`` reproduces ``UDiGDIP(cfg, denoiser, seeds[b])``.
    Call: ``y`` ``[B, ...]``, ``physics`` batched (see :func:`stack_physics`), ``x_gt`` ``[B,H,W]``
    (only for ``callback``), ``callback`` either one callable ``(step, x [B,H,W], info)`` with
    per-slice lists in ``info`` (called at the logging steps), or a sequence of ``B`` callables,
    each called exactly as in a single run with its slice ``[1,H,W]``.
    Returns ``Result(x_hat [B,H,W], history={"per_slice": [h_0, …], "t": …, "purify_outer": …},
    info={"slices": [Result_0, …], …})``; :func:`split_result` gives per-slice Results.
    """

    name = "udig_dip_batched"
    default_config = staticmethod(default_config)

    def __init__(self, cfg: Any = None, denoiser: Any = None, seeds: Sequence[int] = (0,),
                 device: Optional[torch.device | str] = None):
        seeds = [int(s) for s in (seeds if isinstance(seeds, (list, tuple)) else list(seeds))]
        if not seeds:
            raise ValueError("seeds must hold one seed per slice")
        super().__init__(cfg, denoiser=denoiser, seed=seeds[0], device=device)
        self.seeds = seeds
        parse_graph_mode(self.cfg.perf.cuda_graph)      # bad values fail here, not mid-run
        resolve_net_impl(self.cfg.perf.net_impl, torch.device("cpu"))

    # ------------------------------------------------------------------------------- helpers
    def _use_bf16(self, device: torch.device) -> bool:
        p = self.cfg.perf
        return bool(p.bf16) and (device.type == "cuda" or bool(p.bf16_cpu))

    def _purify_batch(self, x: torch.Tensor, k: int, gens, history: dict) -> torch.Tensor:
        c = self.cfg
        t_k = self.next_t(k, history)
        return scaled_purify(lambda v: self.denoiser.purify(v, t_k, num_steps=int(c.reverse_steps), eta=float(c.eta),
                                                            noise=NoiseStreams(generators=gens)),
                             x, bool(c.purify_normalize))

    # ------------------------------------------------------ hooks (overridden by BatchedVanillaDIP)
    def _initial_z(self, y: torch.Tensor, physics: nn.Module, gens) -> torch.Tensor:
        """The network input ``z₀`` ``[B,H,W]`` (config ``z0``)."""
        return initial_input(y, physics, self.cfg.z0)

    def _in_channels(self) -> Optional[int]:
        return None

    def _step_input(self, z: torch.Tensor, gens) -> torch.Tensor:
        """The input of one optimiser step (``z`` itself; vanilla DIP may perturb it)."""
        return z

    def _update_z(self, x: torch.Tensor, z: torch.Tensor, k: int, gens, common: dict) -> torch.Tensor:
        """(2) the input update after outer iteration ``k``: purification or ``z ← f_θ(z)``."""
        return self._purify_batch(x, k, gens, common) if self.purifies(k) else x

    # -------------------------------------------------------------------------------- solver
    def __call__(self, y: torch.Tensor, physics: nn.Module, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback | Sequence[Callback]] = None) -> Result:
        c = self.cfg
        K, N = int(c.num_outer), int(c.inner_steps)
        B = len(self.seeds)
        if y.shape[0] != B:
            raise ValueError(f"y has batch {y.shape[0]} but {B} seeds were given (one per slice)")
        device, y, is_complex = self._prepare(y, physics)
        dtype = torch.float64 if y.dtype in (torch.complex128, torch.float64) else torch.float32
        bf16 = self._use_bf16(torch.device(device))
        lam, red = float(c.lam), c.reduction
        log_every = max(1, int(c.log_every))
        per_slice_cbs = callback if isinstance(callback, (list, tuple)) else None
        if per_slice_cbs is not None and len(per_slice_cbs) != B:
            raise ValueError(f"got {len(per_slice_cbs)} callbacks for {B} slices")
        histories: list[dict] = [{} for _ in range(B)]
        common: dict = {}
        nan_counts = [0] * B

        with deterministic_mode(c.deterministic), progress_bar(K * N, self.name, c.disable_progress) as pbar:
            gens = [make_generator(s + 1, device) for s in self.seeds]
            z = self._initial_z(y, physics, gens)
            nets = BatchedDIPNets(c.net, is_complex, self.seeds, device=device, dtype=dtype,
                                  in_channels=self._in_channels(), compile=bool(c.perf.compile),
                                  impl=resolve_net_impl(c.perf.net_impl, torch.device(device)))
            graph = graph_wanted(c.perf, torch.device(device))
            opt = StackedAdam(nets.parameters(), B, lr=float(c.lr), betas=tuple(c.betas),
                              weight_decay=float(c.weight_decay), capturable=graph)
            fwd = lambda zz: nets.output(zz, is_complex, bf16)  # noqa: E731
            stepper = BatchedDIPStep(fwd, opt, physics, y, lam, red, graph=graph)

            def on_nan(bad: list[bool], step: int, snap: dict) -> None:
                opt.restore(snap, bad)
                for b in (i for i, v in enumerate(bad) if v):
                    histories[b].setdefault("nan_events", []).append({"step": step, "lr": opt.scale_lr(b, 0.5)})
                    nan_counts[b] += 1
                    if nan_counts[b] > int(c.max_nan_events):
                        raise RuntimeError(f"DIP optimisation of slice {b} diverged {nan_counts[b]} times "
                                           "(non-finite loss); lower the learning rate or check the "
                                           "measurement scaling")

            # operators' per-call NaN checks off (host sync on GPU); the loss is checked at check steps
            with finite_checks(physics, False):
                for k in range(K):
                    snap = opt.snapshot()
                    log_last = k == K - 1
                    for i in range(1, N + 1):
                        step = k * N + i
                        check = step % log_every == 0 or (log_last and i == N)
                        # the loss of a step is read after its update: keep the pre-update state
                        before = opt.snapshot() if check else None
                        x, total, data, reg, bad_x = stepper(self._step_input(z, gens), z)
                        if bad_x is not None:
                            # a single run catches the operator's ValueError: no history, no update
                            on_nan(bad_x, step, snap)
                            if pbar is not None:
                                pbar.update(1)
                            continue
                        if check:
                            vals = torch.stack((total, data, reg)).tolist()
                            bad = [not math.isfinite(v) for v in vals[0]]
                            good = [not v for v in bad]
                            opt.update_snapshot(snap, good, source=before)
                            for b in range(B):
                                if bad[b]:
                                    continue
                                for key, val in (("step", step), ("loss", vals[0][b]), ("data_loss", vals[1][b]),
                                                 ("reg_loss", vals[2][b]), ("lr", opt.lr[b])):
                                    histories[b].setdefault(key, []).append(val)
                            self._notify(callback, per_slice_cbs, step, x, vals, good, opt.lr, k, x_gt)
                            if pbar is not None:
                                pbar.set_postfix(loss=f"{sum(vals[0]) / B:.3e}", refresh=False)
                            if any(bad):
                                on_nan(bad, step, snap)        # = skipping this step for those slices
                        if pbar is not None:
                            pbar.update(1)
                    with torch.no_grad():
                        x = fwd(z).detach()
                        fin = _finite_per_slice(x)
                        if not bool(fin.all()):
                            on_nan((~fin).tolist(), k * N + N, snap)
                            x = fwd(z).detach()
                    # (2) input update
                    z = self._update_z(x, z, k, gens, common)
            if c.output == "f_of_z":
                with torch.no_grad():
                    x = fwd(z).detach()

        info = {"t_schedule": list(self.t_schedule), "seeds": list(self.seeds), "config": c.to_dict(),
                "num_params": nets.num_params_per_net, "batch": B,
                "cuda_graph": stepper.graph is not None, "cuda_graph_error": stepper.graph_error}
        slices = []
        for b in range(B):
            h = dict(histories[b])
            h.update({k_: list(v) for k_, v in common.items()})
            slices.append(Result(x_hat=x[b:b + 1], history=h,
                                 info={**{k_: v for k_, v in info.items() if k_ not in ("seeds", "batch")},
                                       "seed": self.seeds[b]}))
        info["slices"] = slices
        return Result(x_hat=x, history={"per_slice": histories, **common}, info=info)

    @staticmethod
    def _notify(callback, per_slice_cbs, step, x, vals, good, lrs, k, x_gt) -> None:
        if callback is None:
            return
        if per_slice_cbs is not None:
            for b, cb in enumerate(per_slice_cbs):
                if cb is None or not good[b]:
                    continue
                info = {"loss": vals[0][b], "data_loss": vals[1][b], "reg_loss": vals[2][b], "lr": lrs[b],
                        "outer": k, "phase": "fit",
                        "x_gt": None if x_gt is None else x_gt[b:b + 1]}
                cb(step, x[b:b + 1].clone(), info)
            return
        info = {"loss": vals[0], "data_loss": vals[1], "reg_loss": vals[2], "lr": list(lrs), "outer": k,
                "phase": "fit", "finite": good, "x_gt": x_gt}
        callback(step, x.clone(), info)


class BatchedSeqDIP(BatchedUDiGDIP):
    """Batched aSeqDIP (no purification): ``BatchedSeqDIP(cfg, seeds=...)(y, physics)``."""

    name = "aseqdip_batched"
    default_config = staticmethod(seqdip_default_config)

    def __init__(self, cfg: Any = None, denoiser: Any = None, seeds: Sequence[int] = (0,),
                 device: Optional[torch.device | str] = None):
        super().__init__(cfg, denoiser=None, seeds=seeds, device=device)

    def _validate(self) -> None:
        from solvers.seqdip import SeqDIP

        SeqDIP._validate(self)

    def purifies(self, k: int) -> bool:
        return False


def dip_default_config():
    """Vanilla DIP's config (``solvers.dip.default_config``) plus ``perf``."""
    from solvers.dip import default_config as dip_default

    cfg = dip_default()
    cfg.perf = _perf_defaults()
    return cfg


class BatchedVanillaDIP(BatchedSeqDIP):
    """Batched vanilla DIP: ``BatchedVanillaDIP(cfg, seeds=...)(y, physics)``; slice ``b`` reproduces
    ``VanillaDIP(cfg, seed=seeds[b])`` (float rounding aside).

    The shared batched loop runs with one outer iteration of ``num_steps`` Adam steps, λ = 0, and
    the network input is the fixed noise ``z_b ~ U(0, input_scale)`` (or N(0, input_scale²)),
    ``[input_channels, H, W]`` per slice, drawn from slice ``b``'s generator (seed ``seeds[b] + 1``)
    as a single run draws it; with ``input_noise_std > 0`` the per-step perturbation is drawn per
    slice from the same generator, in the single run's order.  ``cfg`` is vanilla DIP's config
    (:func:`dip_default_config`); results report it.
    """

    name = "dip_batched"
    default_config = staticmethod(dip_default_config)
    _config_template = staticmethod(seqdip_default_config)   # the loop's config (built in __init__)

    def __init__(self, cfg: Any = None, denoiser: Any = None, seeds: Sequence[int] = (0,),
                 device: Optional[torch.device | str] = None):
        from solvers.common import resolve_config
        from solvers.dip import validate_config

        dip = resolve_config(dip_default_config(), cfg)
        validate_config(dip)
        if int(dip.num_steps) < 1:
            raise ValueError("num_steps must be >= 1")
        loop = seqdip_default_config()
        shared = ("lr", "betas", "weight_decay", "reduction", "log_every", "max_nan_events", "deterministic",
                  "disable_progress", "net", "perf")
        loop.update({k: dip[k] for k in shared})
        loop.update(num_outer=1, inner_steps=int(dip.num_steps), lam=0.0, output="f_of_z")
        super().__init__(loop, seeds=seeds, device=device)
        self.dip_cfg = dip

    def _in_channels(self) -> Optional[int]:
        return int(self.dip_cfg.input_channels)

    def _initial_z(self, y: torch.Tensor, physics: nn.Module, gens) -> torch.Tensor:
        c = self.dip_cfg
        H, W = physics.image_shape
        shape = (1, int(c.input_channels), int(H), int(W))
        draw = torch.rand if c.input_kind == "uniform" else torch.randn
        z = torch.cat([draw(shape, generator=g, device=g.device) for g in gens]) * float(c.input_scale)
        # drawn in float32 as a single run does; float64 data run float64 networks
        return z.to(torch.float64) if y.dtype in (torch.complex128, torch.float64) else z

    def _step_input(self, z: torch.Tensor, gens) -> torch.Tensor:
        sigma = float(self.dip_cfg.input_noise_std)
        if sigma <= 0:
            return z
        return z + sigma * torch.cat([torch.randn(z.shape[1:], generator=g, device=g.device)[None] for g in gens])

    def _update_z(self, x: torch.Tensor, z: torch.Tensor, k: int, gens, common: dict) -> torch.Tensor:
        return z                                   # the input stays the fixed noise

    def __call__(self, y, physics, x_gt=None, callback=None) -> Result:
        res = super().__call__(y, physics, x_gt=x_gt, callback=callback)
        cfg = self.dip_cfg.to_dict()
        for r in [res] + list(res.info["slices"]):
            r.info["config"] = cfg
            r.info.pop("t_schedule", None)
        return res


def make_batched_solver(name: str, cfg=None, denoiser=None, seeds: Sequence[int] = (0,), device=None):
    """The batched variant of solver ``name`` (registry names/aliases of ``solvers.canonical``) for
    one slice per seed in ``seeds``; slice ``b`` reproduces the single solver with ``seed=seeds[b]``
    (up to float rounding):

    * ``"udigdip"`` → :class:`BatchedUDiGDIP`, ``"aseqdip"`` → :class:`BatchedSeqDIP`, ``"dip"`` →
      :class:`BatchedVanillaDIP` (``cfg`` may hold ``perf``);
    * ``"dds"`` / ``"dps"`` → :class:`solvers.dds.DDS` / :class:`solvers.dps.DPS` with ``seeds``
      (each slice its own noise stream; their config has no ``perf`` field).

    Every one takes ``y [B,...]``, a batched operator (:func:`stack_physics`) and either one
    callback or ``B`` per-slice callbacks, and returns ``info["slices"]`` (:func:`split_result`).
    Other solvers have no batched variant (ValueError)."""
    import solvers

    key = solvers.canonical(name)
    seeds = [int(s) for s in seeds]
    if key == "udigdip":
        return BatchedUDiGDIP(cfg, denoiser, seeds=seeds, device=device)
    if key == "aseqdip":
        return BatchedSeqDIP(cfg, seeds=seeds, device=device)
    if key == "dip":
        return BatchedVanillaDIP(cfg, seeds=seeds, device=device)
    if key in ("dds", "dps"):
        if not seeds:
            raise ValueError("seeds must hold one seed per slice")
        return solvers.solver_class(key)(cfg, denoiser=denoiser, seed=seeds[0], device=device,
                                         seeds=seeds)
    raise ValueError(f"no batched variant of solver {name!r}; batched: udigdip, aseqdip, dip, dds, dps")
