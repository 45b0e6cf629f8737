"""Synthetic ingredients for simulated MRI data.

* :func:`smooth_random_phase` — a smooth, seeded random phase map φ(x, y) (low-order random
  polynomial) used to turn real magnitude images into realistic complex MR images
  ``x = |x| · exp(iφ)``.
* :func:`simulate_multicoil` — a complex image ``x [H, W]`` and smooth synthetic coil
  sensitivities ``S [C, H, W]`` (``physics.coils.synthetic_coil_maps``, Σ_c |S_c|² = 1) give the
  coil images ``S_c · x``.

All functions are deterministic given ``seed`` (a local ``numpy.random.Generator``; no global RNG).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["smooth_random_phase", "simulate_multicoil"]


def smooth_random_phase(H: int, W: int, seed: int, degree: int = 3,
                        max_phase: float = np.pi) -> np.ndarray:
    """Smooth random phase map ``φ [H, W]`` (float32, radians).

    φ(u, v) = φ₀ + Σ_{1 ≤ i+j ≤ degree} c_ij u^i v^j,  with u, v ∈ [-1, 1] the normalised pixel
    coordinates (rows, columns), φ₀ ~ U(-π, π) and c_ij ~ N(0, (max_phase / 2 / (i+j))²), so the
    variation across the field of view is of the order of ``max_phase`` radians and the map has
    no fine structure (a low-order polynomial, like B0/receiver phase in real MR images).
    """
    if H < 1 or W < 1:
        raise ValueError(f"H and W must be positive, got H={H}, W={W}")
    if degree < 0:
        raise ValueError(f"degree must be >= 0, got {degree}")
    rng = np.random.default_rng(seed)
    u = np.linspace(-1.0, 1.0, H)[:, None]
    v = np.linspace(-1.0, 1.0, W)[None, :]
    phase = np.full((H, W), rng.uniform(-np.pi, np.pi))
    for total in range(1, degree + 1):
        for i in range(total + 1):
            j = total - i
            c = rng.normal(0.0, max_phase / 2.0 / total)
            phase = phase + c * (u ** i) * (v ** j)
    return phase.astype(np.float32)


def simulate_multicoil(x, num_coils: int = 8, seed: int = 0):
    """Simulate a multi-coil acquisition of a complex image.

    Args:
        x: complex image ``[H, W]`` (torch tensor or numpy array).
        num_coils: number of receive coils ``C``.
        seed: seed of ``physics.coils.synthetic_coil_maps``.

    Returns:
        ``(coil_images, maps)``: ``coil_images [C, H, W] = S_c · x`` and ``maps [C, H, W]``
        (Σ_c |S_c|² = 1, so ``Σ_c conj(S_c) · coil_images_c = x``), both complex torch tensors
        of ``x``'s complex dtype (complex64 for numpy input).
    """
    from physics.coils import synthetic_coil_maps  # local import: physics is optional here

    xt = torch.as_tensor(x)
    if xt.ndim != 2:
        raise ValueError(f"simulate_multicoil expects one image [H, W], got shape {tuple(xt.shape)}")
    if not torch.is_complex(xt):
        raise ValueError("simulate_multicoil expects a complex image; make it complex first "
                         "(e.g. x * exp(1j * smooth_random_phase(H, W, seed)))")
    if num_coils < 1:
        raise ValueError(f"num_coils must be >= 1, got {num_coils}")
    H, W = xt.shape
    maps = torch.as_tensor(synthetic_coil_maps(num_coils, H, W, seed=seed)).to(xt.dtype)
    return maps * xt[None], maps
