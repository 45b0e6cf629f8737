"""``B`` independent DIP U-Nets (``models/dip_unet.py``) evaluated in one call.

The DIP solvers reconstruct ``B`` slices with one network per slice.  :class:`StackedDIPNets` holds
the ``B`` networks' parameters stacked (``name → [B, ...]``) and evaluates them together, in one
of three ways (:data:`NET_IMPLS`; the same arithmetic, different kernels):

* ``"vmap"``: ``torch.func.vmap`` over ``torch.func.functional_call`` of one template network;
* ``"grouped"``: :func:`grouped_forward`, one network with ``B·C`` channels in which every
  convolution is a grouped convolution (``groups=B``);
* ``"grouped_cl"``: the same in channels-last (NHWC) memory layout.

Each network sees only its own image(s), and BatchNorm normalises with the statistics of its own
slice, exactly as a batch-of-one network does.  At ``B = 1`` the grouped network is the plain
network call for call (a convolution with ``groups=1``), so its results are bit-identical to
:class:`models.dip_unet.DIPUNet` (``tests/test_engines.py`` checks it).

Inputs are channel-packed: ``[B, C, H, W]`` (one image per network) or ``[B, M, C, H, W]`` (a batch
of ``M`` images per network, e.g. the Monte-Carlo samples of self-guided DIP; BatchNorm then uses
the statistics of network ``b``'s ``M`` images).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.dip_unet import (DIPUNet, DoubleConv, bilinear_upsample2, build_dip_net, reflect_pad_bottom_right,
                             upsample2_1d)

__all__ = ["NET_IMPLS", "StackedDIPNets", "grouped_forward"]

#: How the ``B`` networks are evaluated (see the module docstring).
NET_IMPLS = ("vmap", "grouped", "grouped_cl")


class StackedDIPNets:
    """``B`` :class:`DIPUNet` s, network ``b`` initialised by ``build_dip_net(net_cfg, is_complex,
    seeds[b])``, evaluated in one call.

    ``params`` maps each parameter name to a ``[B, ...]`` leaf tensor (``requires_grad``).  BatchNorm
    layers keep no running statistics: the DIP solvers run the networks in training mode to the end
    (every forward normalises with batch statistics), so the running statistics are never read.
    ``compile=True`` wraps the evaluation in ``torch.compile``.
    """

    def __init__(self, net_cfg: Any, is_complex: bool, seeds: Sequence[int], device=None,
                 dtype: torch.dtype = torch.float32, in_channels: Optional[int] = None,
                 impl: str = "vmap", compile: bool = False):
        from torch.func import replace_all_batch_norm_modules_, stack_module_state

        if impl not in NET_IMPLS:
            raise ValueError(f"net_impl must be one of {NET_IMPLS}, got {impl!r}")
        nets = []
        for s in seeds:
            n = build_dip_net(net_cfg, is_complex, int(s), in_channels=in_channels, device=device)
            n = n.to(dtype=dtype).train()
            replace_all_batch_norm_modules_(n)
            nets.append(n)
        params, buffers = stack_module_state(nets)
        self.params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}
        self.base = copy.deepcopy(nets[0]).to("meta").train()
        self.batch = len(nets)
        self.num_params_per_net = sum(p.numel() for p in nets[0].parameters())
        self.impl = impl
        self._fn = self._make_fn()
        self.compiled = bool(compile)
        if compile:
            self._fn = torch.compile(self._fn, dynamic=False)

    def _make_fn(self) -> Callable:
        from torch.func import functional_call, vmap

        base = self.base
        if self.impl != "vmap":
            cl = self.impl == "grouped_cl"
            return lambda params, buffers, x: grouped_forward(base, params, x, channels_last=cl)

        def one(p, b, x):
            if x.ndim == 3:                                  # one image per network
                return functional_call(base, (p, b), (x.unsqueeze(0),)).squeeze(0)
            return functional_call(base, (p, b), (x,))

        return vmap(one, in_dims=(0, 0, 0), randomness="error")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, C_out, H, W]`` (or ``[B, M, C, H, W]`` → ``[B, M, C_out, H, W]``)."""
        if x.ndim not in (4, 5) or x.shape[0] != self.batch:
            raise ValueError(f"StackedDIPNets expects [B={self.batch}, C, H, W] or [B, M, C, H, W], "
                             f"got {tuple(x.shape)}")
        return self._fn(self.params, self.buffers, x)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def state_dict(self, b: int) -> dict[str, torch.Tensor]:
        """The parameters of network ``b`` (a :class:`DIPUNet` state dict without BatchNorm
        running statistics)."""
        return {k: v[b].detach().clone() for k, v in self.params.items()}


# ------------------------------------------------------------------ B networks as one grouped net
def _grouped_upsample2(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if not channels_last:
        return bilinear_upsample2(x)
    h = x.permute(0, 2, 3, 1)                     # [n,H,W,C] (contiguous for a channels-last x)
    h = upsample2_1d(upsample2_1d(h, 1), 2)       # the same arithmetic, along H then W
    return h.permute(0, 3, 1, 2)                  # [n,C,2H,2W], channels-last strides


def _grouped_cat(skip: torch.Tensor, deep: torch.Tensor, B: int, channels_last: bool) -> torch.Tensor:
    """Per-network channel concatenation of ``[n, B*Cs, H, W]`` and ``[n, B*Cd, H, W]`` →
    ``[n, B*(Cs+Cd), H, W]`` (network ``b``'s channels stay together: ``[skip_b, deep_b]``)."""
    n, cs, H, W = skip.shape
    cd = deep.shape[1]
    if channels_last:
        out = torch.cat((skip.permute(0, 2, 3, 1).reshape(n, H, W, B, cs // B),
                         deep.permute(0, 2, 3, 1).reshape(n, H, W, B, cd // B)), dim=4)
        return out.reshape(n, H, W, cs + cd).permute(0, 3, 1, 2)
    out = torch.cat((skip.reshape(n, B, cs // B, H, W), deep.reshape(n, B, cd // B, H, W)), dim=2)
    return out.reshape(n, cs + cd, H, W)


def grouped_forward(template: DIPUNet, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                    channels_last: bool = False) -> torch.Tensor:
    """``B`` independent :class:`DIPUNet` s with stacked parameters (``name → [B, ...]``, the names
    of ``template.named_parameters()``) on ``x [B, C_in, H, W]`` (one image per network) →
    ``[B, C_out, H, W]``, or on ``x [B, M, C_in, H, W]`` (``M`` images per network) →
    ``[B, M, C_out, H, W]``, evaluated as ONE network with ``B·C`` channels: every convolution is a
    grouped convolution (``groups=B``; the stacked weights ``[B, C_o, C_i, k, k]`` are viewed as
    ``[B·C_o, C_i, k, k]``), and normalisation, ReLU, pooling and up-sampling act per channel, so
    network ``b`` sees only its own channels.  BatchNorm uses batch statistics (training mode
    without running statistics, as the DIP solvers run it), which per channel of the
    ``[M, B·C, H, W]`` tensor are exactly network ``b``'s statistics.  ``channels_last`` keeps every
    activation in NHWC.
    """
    per_net_batch = x.ndim == 5
    B, cin, H, W = x.shape[0], x.shape[-3], x.shape[-2], x.shape[-1]
    M = x.shape[1] if per_net_batch else 1
    t = template

    def conv(name: str, h: torch.Tensor, padding: int) -> torch.Tensor:
        w = params[name + ".weight"]
        b = params.get(name + ".bias")
        return F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                        padding=padding, groups=B)

    def norm(name: str, mod: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if isinstance(mod, nn.Identity):
            return h
        w, b = params[name + ".weight"].reshape(-1), params[name + ".bias"].reshape(-1)
        if isinstance(mod, nn.BatchNorm2d):
            return F.batch_norm(h, None, None, w, b, training=True, eps=mod.eps)
        if isinstance(mod, nn.InstanceNorm2d):
            return F.instance_norm(h, None, None, w, b, use_input_stats=True, eps=mod.eps)
        if isinstance(mod, nn.GroupNorm):
            return F.group_norm(h, mod.num_groups * B, w, b, eps=mod.eps)
        raise TypeError(f"grouped_forward: unsupported norm layer {type(mod).__name__}")

    def double(name: str, mod: DoubleConv, h: torch.Tensor) -> torch.Tensor:
        for i in (0, 3):
            h = conv(f"{name}.block.{i}", h, 1)
            h = F.relu(norm(f"{name}.block.{i + 1}", mod.block[i + 1], h))
        return h

    h = (x.transpose(0, 1) if per_net_batch else x).reshape(M, B * cin, H, W)
    if channels_last:
        h = h.contiguous(memory_format=torch.channels_last)
    m = 2 ** t.levels
    h = reflect_pad_bottom_right(h, (-H) % m, (-W) % m)
    skips = [double("inc", t.inc, h)]
    for i, down in enumerate(t.downs):
        skips.append(double(f"downs.{i}", down, F.max_pool2d(skips[-1], 2)))
    h = skips.pop()
    for i, up in enumerate(t.ups):
        if up.bilinear:
            h = _grouped_upsample2(h, channels_last)
        else:
            w, b = params[f"ups.{i}.up.weight"], params[f"ups.{i}.up.bias"]
            h = F.conv_transpose2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), stride=2, groups=B)
        h = double(f"ups.{i}.conv", up.conv, _grouped_cat(skips.pop(), h, B, channels_last))
    out = conv("outc", h, 0)[:, :, :H, :W]
    if per_net_batch:
        return out.reshape(M, B, -1, H, W).transpose(0, 1)
    return out.reshape(B, -1, H, W)
