"""Coil sensitivity maps: smooth synthetic maps and ESPIRiT estimation (sigpy).

Shapes: maps are ``[C, H, W]`` complex, k-space ``[C, H, W]`` complex in the centred
orthonormal convention of :func:`physics.mri.fft2c` (identical to sigpy's centred FFT).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .mri import rss

__all__ = ["synthetic_coil_maps", "espirit_maps", "rss"]


def synthetic_coil_maps(num_coils: int, H: int, W: int, seed: int = 0,
                        dtype: torch.dtype = torch.complex64) -> torch.Tensor:
    """Smooth, birdcage-like synthetic sensitivity maps ``[C, H, W]`` with ``Σ_c |S_c|² = 1``.

    On normalised coordinates ``(u, v) ∈ [-1, 1]²`` coil ``c`` sits at angle
    ``θ_c = 2πc/C + jitter`` on a circle of radius ``ρ = 1.3`` (just outside the FOV) and has

        S̃_c(r) = exp(-|r - p_c|² / (2σ²)) · exp(i (φ_c + κ_c · (r - p_c))),   σ = 0.9,

    i.e. a Gaussian magnitude fall-off from the coil and a smooth (linear) phase, with random
    constant phase ``φ_c`` and phase slopes ``|κ_c| ≤ 0.8`` rad per half-FOV (seeded by
    ``numpy.random.default_rng(seed)``). The maps are then normalised
    ``S_c = S̃_c / sqrt(Σ_c' |S̃_c'|²)`` so that the sum of squares is exactly 1 everywhere (the
    convention ESPIRiT estimates). ``num_coils = 1`` gives a unit-magnitude smooth-phase map.
    """
    if int(num_coils) != num_coils or num_coils < 1:
        raise ValueError(f"num_coils must be a positive int, got {num_coils!r}.")
    if int(H) != H or int(W) != W or H < 1 or W < 1:
        raise ValueError(f"H and W must be positive ints, got H={H!r}, W={W!r}.")
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}.")
    C, H, W = int(num_coils), int(H), int(W)
    rng = np.random.default_rng(seed)
    v = (np.arange(H) - H // 2) / max(H / 2.0, 1.0)
    u = (np.arange(W) - W // 2) / max(W / 2.0, 1.0)
    vv, uu = np.meshgrid(v, u, indexing="ij")          # [H, W], rows = y, cols = x

    rho, sigma = 1.3, 0.9
    theta = 2 * np.pi * np.arange(C) / C + rng.uniform(-0.2, 0.2, C) * (2 * np.pi / C)
    phi0 = rng.uniform(-np.pi, np.pi, C)
    kappa = rng.uniform(-0.8, 0.8, (C, 2))

    maps = np.empty((C, H, W), dtype=np.complex128)
    for c in range(C):
        px, py = rho * np.cos(theta[c]), rho * np.sin(theta[c])
        dx, dy = uu - px, vv - py
        log_mag = -(dx ** 2 + dy ** 2) / (2 * sigma ** 2)
        phase = phi0[c] + kappa[c, 0] * dx + kappa[c, 1] * dy
        maps[c] = np.exp(log_mag + 1j * phase)
    maps /= np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))
    return torch.from_numpy(maps).to(dtype)


def espirit_maps(kspace, calib_width: int = 24, thresh: float = 0.02, crop: float = 0.95,
                 kernel_width: int = 6, max_iter: int = 100) -> torch.Tensor:
    """ESPIRiT sensitivity maps ``[C, H, W]`` from multi-coil k-space ``[C, H, W]``.

    Thin wrapper around ``sigpy.mri.app.EspiritCalib`` (CPU, no progress bar): the central
    ``calib_width``² calibration region builds a Hankel matrix of ``kernel_width``² kernels,
    singular values below ``thresh``·σ_max are discarded, and the maps are the eigenvectors of
    eigenvalue 1 of the image-domain operator; pixels whose eigenvalue is below ``crop`` are set
    to 0. Inside the support the maps satisfy ``Σ_c |Ŝ_c|² ≈ 1`` and are defined up to one
    per-pixel phase shared by all coils.

    Args:
        kspace: complex ``[C, H, W]`` numpy array or torch tensor, centred (``fft2c``)
            convention, the central ``calib_width`` lines at least fully sampled.

    Returns:
        torch tensor ``[C, H, W]``, ``complex128`` for ``complex128`` input, else ``complex64``.
    """
    import sigpy as sp
    from sigpy.mri.app import EspiritCalib

    if isinstance(kspace, torch.Tensor):
        out_dtype = torch.complex128 if kspace.dtype == torch.complex128 else torch.complex64
        is_complex = kspace.is_complex()
        ksp = kspace.detach().cpu().numpy()
    else:
        ksp = np.asarray(kspace)
        is_complex = np.iscomplexobj(ksp)
        out_dtype = torch.complex128 if ksp.dtype == np.complex128 else torch.complex64
    if not is_complex:
        raise ValueError("espirit_maps needs complex k-space [C, H, W], got a real array; k-space "
                         "from fft2c is complex — do not pass magnitudes.")
    if ksp.ndim != 3:
        raise ValueError(f"espirit_maps expects k-space of shape [C, H, W], got shape "
                         f"{ksp.shape}; for a batch, call it once per slice.")
    if not np.all(np.isfinite(ksp)):
        raise ValueError("espirit_maps: k-space contains NaN or Inf values.")
    if calib_width > min(ksp.shape[-2:]):
        raise ValueError(f"calib_width {calib_width} exceeds the k-space size {ksp.shape[-2:]}.")
    ksp = ksp.astype(np.complex128 if out_dtype == torch.complex128 else np.complex64)
    maps = EspiritCalib(ksp, calib_width=calib_width, thresh=thresh, kernel_width=kernel_width,
                        crop=crop, max_iter=max_iter, device=sp.cpu_device,
                        show_pbar=False).run()
    return torch.from_numpy(np.ascontiguousarray(maps)).to(out_dtype)
