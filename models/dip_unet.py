"""The untrained U-Net ``f_θ`` used by every DIP-type solver (DIP, aSeqDIP, uDiG-DIP, self-guided DIP).

Architecture (``channels=(c0, c1, ..., cL)``, default ``(64, 128, 256, 256)`` = 3 down levels)::

    in ─ DoubleConv(in→c0) ─────────────────────────────────────── skip0 ─┐
           └ MaxPool2 ─ DoubleConv(c0→c1) ─────────────────── skip1 ─┐     │
                 └ MaxPool2 ─ DoubleConv(c1→c2) ──────── skip2 ─┐    │     │
                       └ MaxPool2 ─ DoubleConv(c2→c3) ─ Up ─ cat ┘─DC─Up─cat┘─DC─Up─cat ─ DC ─ 1×1 conv ─ out

* ``DoubleConv`` = (3×3 conv → norm → ReLU) × 2; ``norm`` ∈ ``batch`` (default), ``instance``,
  ``group``, ``none`` (conv bias only when ``norm="none"``).
* Up-sampling: ``bilinear=True`` → ×2 bilinear (align_corners=False) followed by the DoubleConv
  on ``[up(deep), skip]``; ``bilinear=False`` → 2×2 transposed conv.
* 1×1 output conv, **no output activation** (MRI images are signed real/imag channels).
* Any ``H, W``: the input is reflect-padded at the bottom/right to a multiple of ``2**L`` and the
  output cropped back.

Determinism on CUDA: PyTorch's ``interpolate(mode="bilinear")`` and ``ReflectionPad2d`` /
``ReplicationPad2d`` use atomic adds in their backward pass (non-deterministic on GPU).  The ×2
bilinear up-sampling and the reflect padding here are therefore written with slicing / ``cat``,
whose backward is deterministic; the up-sampling is numerically the same as
``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)``.

Complex images: the network works on real channels; use :func:`utils.complex.to_channels` /
``from_channels`` (``solvers.common.net_output`` does this): complex ``[B,H,W]`` ↔ ``[B,2,H,W]``.

``B`` independent networks evaluated in one call (the batched DIP solvers) are in
``models/stacked_dip.py``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_NORMS = ("batch", "instance", "group", "none")


def _norm_layer(norm: str, ch: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(ch)
    if norm == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    if norm == "group":
        return nn.GroupNorm(min(32, ch) if ch % min(32, ch) == 0 else 1, ch)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {_NORMS}")


class DoubleConv(nn.Module):
    """(3×3 conv → norm → ReLU) × 2, spatial size preserved."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch"):
        super().__init__()
        bias = norm == "none"
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias), _norm_layer(norm, out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=bias), _norm_layer(norm, out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def upsample2_1d(x: torch.Tensor, dim: int) -> torch.Tensor:
    """×2 linear up-sampling along ``dim`` (align_corners=False, edge-clamped), via slicing only."""
    n = x.shape[dim]
    prev = torch.cat((x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)), dim=dim)   # x[i-1], clamped
    nxt = torch.cat((x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)), dim=dim)  # x[i+1], clamped
    even = 0.75 * x + 0.25 * prev
    odd = 0.75 * x + 0.25 * nxt
    out = torch.stack((even, odd), dim=dim + 1)  # [..., n, 2, ...]
    shape = list(x.shape)
    shape[dim] = 2 * n
    return out.reshape(shape)


def bilinear_upsample2(x: torch.Tensor) -> torch.Tensor:
    """``[B,C,H,W] → [B,C,2H,2W]``; equals ``F.interpolate(x, scale_factor=2, mode="bilinear")``
    (align_corners=False) but has a deterministic backward on CUDA."""
    return upsample2_1d(upsample2_1d(x, 2), 3)


def reflect_pad_bottom_right(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Reflect-pad bottom by ``ph`` rows and right by ``pw`` columns (zero-pad if too small)."""
    if ph:
        H = x.shape[2]
        if ph < H:
            x = torch.cat((x, x[:, :, H - 1 - ph:H - 1].flip(2)), dim=2)
        else:
            x = F.pad(x, (0, 0, 0, ph))
    if pw:
        W = x.shape[3]
        if pw < W:
            x = torch.cat((x, x[:, :, :, W - 1 - pw:W - 1].flip(3)), dim=3)
        else:
            x = F.pad(x, (0, pw))
    return x


class _Up(nn.Module):
    def __init__(self, deep_ch: int, skip_ch: int, bilinear: bool, norm: str):
        super().__init__()
        self.bilinear = bilinear
        if not bilinear:
            self.up = nn.ConvTranspose2d(deep_ch, deep_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(deep_ch + skip_ch, skip_ch, norm)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        deep = bilinear_upsample2(deep) if self.bilinear else self.up(deep)
        return self.conv(torch.cat((skip, deep), dim=1))


class DIPUNet(nn.Module):
    """U-Net ``[B, in_channels, H, W] → [B, out_channels, H, W]`` (see module docstring).

    Args:
        in_channels / out_channels: 2 for complex (real, imag) images, 1 for real images; the
            vanilla DIP uses a noise input with more channels.
        channels: feature widths per level; ``len(channels) - 1`` max-pool levels.
        bilinear: bilinear ×2 up-sampling (True) or transposed convolutions (False).
        norm: ``"batch" | "instance" | "group" | "none"``.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 channels: Sequence[int] = (64, 128, 256, 256), bilinear: bool = True,
                 norm: str = "batch"):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 1 or any(c <= 0 for c in channels):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if norm not in _NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {_NORMS}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.channels, self.bilinear, self.norm = channels, bool(bilinear), norm
        self.levels = len(channels) - 1
        self.inc = DoubleConv(in_channels, channels[0], norm)
        self.downs = nn.ModuleList(DoubleConv(channels[i], channels[i + 1], norm) for i in range(self.levels))
        self.ups = nn.ModuleList(_Up(channels[i + 1], channels[i], bilinear, norm)
                                 for i in reversed(range(self.levels)))
        self.outc = nn.Conv2d(channels[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DIPUNet expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        m = 2 ** self.levels
        ph, pw = (-H) % m, (-W) % m
        x = reflect_pad_bottom_right(x, ph, pw)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        h = skips.pop()
        for up in self.ups:
            h = up(h, skips.pop())
        return self.outc(h)[:, :, :H, :W]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bilinear={self.bilinear}, norm={self.norm!r}"


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):  # dict or ml_collections.ConfigDict
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def build_dip_net(cfg: Any, is_complex: bool, seed: int, in_channels: Optional[int] = None,
                  device: Optional[torch.device | str] = None) -> DIPUNet:
    """Create a :class:`DIPUNet` with a deterministic, seed-defined initialisation.

    ``cfg`` is a dict / ConfigDict with optional ``channels``, ``bilinear``, ``norm`` (the
    ``net`` sub-config of the solvers).  Out channels are 2 for complex images, 1 for real.
    Construction runs on CPU under ``torch.random.fork_rng`` with ``manual_seed(seed)``, so the
    same seed gives identical weights and the caller's global RNG state is left untouched; the
    net is then moved to ``device``.
    """
    img_ch = 2 if is_complex else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = DIPUNet(in_channels=img_ch if in_channels is None else int(in_channels),
                      out_channels=img_ch,
                      channels=tuple(_get(cfg, "channels", (64, 128, 256, 256))),
                      bilinear=bool(_get(cfg, "bilinear", True)),
                      norm=str(_get(cfg, "norm", "batch")))
    if device is not None:
        net = net.to(device)
    return net
