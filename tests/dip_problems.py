"""Tiny problems shared by the DIP tests (test_dip_loop, test_engines, test_perf)."""
from __future__ import annotations

import torch
import torch.nn as nn

from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule
from physics.mri import MultiCoilMRI

H = 16


class EpsNet(nn.Module):
    """Small deterministic ε-network (dtype-following) for a real Denoiser."""

    def __init__(self, ch: int, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c = nn.Conv2d(ch, ch, 3, padding=1).to(dtype)
        with torch.no_grad():
            self.c.weight.copy_(0.1 * torch.randn(self.c.weight.shape, generator=g, dtype=dtype))
            self.c.bias.copy_(0.1 * torch.randn(self.c.bias.shape, generator=g, dtype=dtype))  # seeded too

    def forward(self, x, t):
        return self.c(x) * (1 + t.view(-1, 1, 1, 1).to(x.dtype) / 1000)


def eps_denoiser(dtype=torch.float32, is_complex: bool = True) -> Denoiser:
    """A real :class:`Denoiser` around :class:`EpsNet`."""
    return Denoiser(EpsNet(2 if is_complex else 1, dtype), DiffusionSchedule(), is_complex=is_complex,
                    learn_sigma=False)


def mri_problems(dtype, B: int = 2):
    """``B`` one-slice MRI problems ``H×H`` (own masks and images): (operators, measurements)."""
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    ops, ys = [], []
    for b in range(B):
        g = torch.Generator().manual_seed(b)
        m = (torch.rand(H, generator=g) < 0.4).to(dtype)
        m[6:10] = 1
        A = MultiCoilMRI(m.expand(H, H).clone())
        x = (0.5 * torch.randn(1, H, H, generator=g, dtype=dtype)).to(cdt)
        ops.append(A)
        ys.append(A(x))
    return ops, ys
