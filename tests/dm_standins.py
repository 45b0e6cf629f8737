"""Stand-ins for the diffusion-model baseline tests: operators with the physics interface
(``forward``/``adjoint``/``normal``/``input_image``, ``is_complex``, ``image_shape``), denoisers
with the :class:`models.denoiser.Denoiser` interface (``eps``, ``.schedule``, ``.is_complex``),
and :func:`reference_prior` (a small reference ADM model, random weights)."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from models.diffusion import DiffusionSchedule
from physics.base import LinearOperator

def _Schedule():
    return DiffusionSchedule(1e-4, 0.02, 1000)  # the DDS schedule


class MaskedFFT(LinearOperator):
    """Single-coil Cartesian MRI: A x = M ⊙ F x (orthonormal FFT), y: [B,1,H,W]."""

    modality, is_complex = "MRI", True

    def __init__(self, mask):
        super().__init__()
        self.mask = mask
        self.image_shape = tuple(mask.shape)
        self.measurement_shape = (1, *self.image_shape)

    def forward(self, x):
        return (self.mask * torch.fft.fft2(x, norm="ortho"))[:, None]

    def adjoint(self, y):
        return torch.fft.ifft2(self.mask * y[:, 0], norm="ortho")

    def normal(self, x):
        return self.adjoint(self.forward(x))

    def input_image(self, y):
        return self.adjoint(y)


class MatrixOp(LinearOperator):
    """Real operator A ∈ R^{M×HW} (CT stand-in): [B,H,W] → [B,M]."""

    modality, is_complex = "CT", False
    dds_scale = 1.0      # DDS's back-projection equals this operator's adjoint (γ on either scale)

    def __init__(self, A, shape):
        super().__init__()
        self.A = A
        self.image_shape = shape
        self.measurement_shape = (A.shape[0],)

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.A.T

    def adjoint(self, y):
        return (y @ self.A).reshape(y.shape[0], *self.image_shape)

    def normal(self, x):
        return self.adjoint(self.forward(x))

    def input_image(self, y):
        return self.adjoint(y)


class OracleDenoiser:
    """Perfect denoiser: x̂₀ = x_true whatever x_t; ε consistent with it."""

    def __init__(self, x_true, is_complex):
        self.x_true = x_true
        self.schedule = _Schedule()
        self.is_complex = is_complex
        self.calls = 0

    def eps(self, x_t, t):
        self.calls += 1
        a = float(self.schedule.alphas_cumprod[int(t)])
        return (x_t - math.sqrt(a) * self.x_true) / math.sqrt(1 - a)

    def __call__(self, x_t, t):
        return self.x_true.expand_as(x_t)


class GaussianDenoiser:
    """Exact MMSE denoiser of the prior x₀ ~ N(m, s² I): differentiable in x_t."""

    def __init__(self, is_complex, s=0.5, mean=0.0):
        self.schedule = _Schedule()
        self.is_complex = is_complex
        self.s, self.m = s, mean

    def __call__(self, x_t, t):
        a = float(self.schedule.alphas_cumprod[int(t)])
        s2 = self.s ** 2
        return self.m + math.sqrt(a) * s2 * (x_t - math.sqrt(a) * self.m) / (a * s2 + 1 - a)

    def eps(self, x_t, t):
        a = float(self.schedule.alphas_cumprod[int(t)])
        return (x_t - math.sqrt(a) * self(x_t, t)) / math.sqrt(1 - a)


class ConvDenoiser(GaussianDenoiser):
    """Gaussian MMSE ε plus a small fixed random 2-layer convolution (mixes neighbouring pixels,
    differentiable, follows the input's dtype): a stand-in prior called on the whole batch."""

    def __init__(self, is_complex, seed=0):
        super().__init__(is_complex)
        g = torch.Generator().manual_seed(seed)
        c = 2 if is_complex else 1
        self.w1 = 0.3 * torch.randn(4, c, 3, 3, generator=g, dtype=torch.float64)
        self.w2 = 0.3 * torch.randn(c, 4, 3, 3, generator=g, dtype=torch.float64)

    def eps(self, x_t, t):
        h = torch.view_as_real(x_t).permute(0, 3, 1, 2) if self.is_complex else x_t[:, None]
        h = torch.nn.functional.conv2d(h, self.w1.to(h.dtype), padding=1)
        h = torch.nn.functional.conv2d(torch.tanh(h + t / 1000.0), self.w2.to(h.dtype), padding=1)
        h = (torch.view_as_complex(h.permute(0, 2, 3, 1).contiguous()) if self.is_complex
             else h[:, 0])
        return super().eps(x_t, t) + 0.02 * h


def reference_prior(kind: str):
    """The tiny reference ADM model of ``kind`` ("ct" or "mri", 32², ``tests/data/adm_tiny_<kind>.pt``,
    see tests/data/README.md) as a Denoiser."""
    from models.priors import load_prior

    return load_prior(Path(__file__).resolve().parent / "data" / f"adm_tiny_{kind}.pt")
