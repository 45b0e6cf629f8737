"""Image-quality metrics on magnitude images: PSNR, SSIM, NMSE.

Inputs may be torch tensors or numpy arrays, real or complex; complex images are compared on
their magnitude ``|x|``, real images as they are (a CT reconstruction with negative values is
not folded by ``abs``). Computation is in float64 numpy; outputs are Python floats.

Two conventions
---------------
``convention="fastmri"`` (default; the fastMRI challenge definitions)::

    data_range = max(ref)                                  (unless ``data_range`` is given)
    PSNR = 10 log10(data_range² / mean((x̂ − x)²))
    NMSE = ‖x̂ − x‖² / ‖x‖²
    SSIM = mean over valid pixels of the 7×7 *uniform*-window SSIM (sample covariance,
           K1 = 0.01, K2 = 0.03, L = data_range, border of 3 pixels excluded) —
           identical to ``skimage.metrics.structural_similarity(ref, x̂, win_size=7,
           data_range=max(ref))`` (what fastMRI's ``evaluate.py`` calls).

``convention="dds"`` — **min-max normalised** (as in the DDS code): each image is first mapped
to [0, 1] by its own min and max, ``a ↦ (a − min a) / (max a − min a)``, then PSNR/SSIM use
``data_range = 1`` and NMSE is computed on the normalised images. Invariant to a positive affine
rescaling of either image; numbers are *not* comparable with the fastMRI convention.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr", "ssim", "nmse", "compute_metrics"]

_CONVENTIONS = ("fastmri", "dds")


def _to_numpy_mag(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.abs() if torch.is_complex(x) else x
        a = x.double().numpy()
    else:
        a = np.asarray(x)
        a = np.abs(a) if np.iscomplexobj(a) else a
        a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return a


def _prepare(x_hat, x_ref, convention: str):
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    a = _to_numpy_mag(x_hat, "x_hat")
    b = _to_numpy_mag(x_ref, "x_ref")
    # squeeze leading singleton dims ([1, H, W], [1, 1, H, W])
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    while b.ndim > 2 and b.shape[0] == 1:
        b = b[0]
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"psnr/ssim/nmse compare single images [H, W]; got shapes {a.shape} and "
                         f"{b.shape} (use compute_metrics for batches [B, H, W])")
    if a.shape != b.shape:
        raise ValueError(f"x_hat {a.shape} and x_ref {b.shape} must have the same shape")
    if convention == "dds":
        a, b = _minmax(a, "x_hat"), _minmax(b, "x_ref")
    return a, b


def _minmax(a: np.ndarray, name: str) -> np.ndarray:
    lo, hi = a.min(), a.max()
    if hi - lo <= 0:
        raise ValueError(f"{name} is constant; the DDS min-max normalisation is undefined")
    return (a - lo) / (hi - lo)


def _data_range(b: np.ndarray, convention: str, data_range) -> float:
    if data_range is not None:
        return float(data_range)
    if convention == "dds":
        return 1.0
    dr = float(b.max())
    if dr <= 0:
        raise ValueError("reference maximum is <= 0; pass data_range explicitly")
    return dr


def psnr(x_hat, x_ref, data_range=None, convention: str = "fastmri") -> float:
    """PSNR in dB = 10 log10(L² / MSE); L = max(ref) (fastmri) or 1 after min-max (dds)."""
    a, b = _prepare(x_hat, x_ref, convention)
    L = _data_range(b, convention, data_range)
    mse = float(np.mean((a - b) ** 2))
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(L ** 2 / mse))


def nmse(x_hat, x_ref, convention: str = "fastmri") -> float:
    """NMSE = ‖x̂ − x‖² / ‖x‖² (on magnitudes; on min-max normalised images for dds)."""
    a, b = _prepare(x_hat, x_ref, convention)
    den = float(np.sum(b ** 2))
    if den == 0:
        raise ValueError("reference is all zeros; NMSE undefined")
    return float(np.sum((a - b) ** 2) / den)


def ssim(x_hat, x_ref, data_range=None, convention: str = "fastmri", win_size: int = 7,
         K1: float = 0.01, K2: float = 0.03) -> float:
    """Mean SSIM with a ``win_size``² uniform window (sample covariance), border excluded.

    Same algorithm as ``skimage.metrics.structural_similarity`` with its defaults
    (``gaussian_weights=False, use_sample_covariance=True``): local means/variances by a
    uniform filter (reflect padding), ``S = (2μₓμᵧ + C1)(2σₓᵧ + C2) / ((μₓ² + μᵧ² + C1)(σₓ² + σᵧ² + C2))``,
    ``C1 = (K1 L)²``, ``C2 = (K2 L)²``, averaged over pixels at least ``(win_size − 1)/2`` from
    the border.
    """
    from scipy.ndimage import uniform_filter

    a, b = _prepare(x_hat, x_ref, convention)
    L = _data_range(b, convention, data_range)
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    if min(a.shape) < win_size:
        raise ValueError(f"image {a.shape} smaller than the SSIM window {win_size}")
    NP = win_size ** 2
    cov_norm = NP / (NP - 1)
    ux = uniform_filter(a, size=win_size)
    uy = uniform_filter(b, size=win_size)
    uxx = uniform_filter(a * a, size=win_size)
    uyy = uniform_filter(b * b, size=win_size)
    uxy = uniform_filter(a * b, size=win_size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    C1, C2 = (K1 * L) ** 2, (K2 * L) ** 2
    S = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux ** 2 + uy ** 2 + C1) * (vx + vy + C2))
    pad = (win_size - 1) // 2
    return float(S[pad:-pad, pad:-pad].mean())


def compute_metrics(x_hat, x_ref, convention: str = "fastmri") -> dict:
    """PSNR / SSIM / NMSE per slice.

    ``[H, W]`` inputs → ``{"psnr": float, "ssim": float, "nmse": float}``;
    ``[B, H, W]`` inputs → the same keys with lists of ``B`` floats (slice ``i`` of ``x_hat``
    against slice ``i`` of ``x_ref``, each with its own data range) plus ``"convention"``.
    """
    shp_a = tuple(x_hat.shape)
    shp_b = tuple(x_ref.shape)
    if shp_a != shp_b:
        raise ValueError(f"x_hat {shp_a} and x_ref {shp_b} must have the same shape")
    if len(shp_a) == 2:
        return {"psnr": psnr(x_hat, x_ref, convention=convention),
                "ssim": ssim(x_hat, x_ref, convention=convention),
                "nmse": nmse(x_hat, x_ref, convention=convention),
                "convention": convention}
    if len(shp_a) != 3:
        raise ValueError(f"compute_metrics expects [H, W] or [B, H, W], got {shp_a}")
    out = {"psnr": [], "ssim": [], "nmse": [], "convention": convention}
    for i in range(shp_a[0]):
        out["psnr"].append(psnr(x_hat[i], x_ref[i], convention=convention))
        out["ssim"].append(ssim(x_hat[i], x_ref[i], convention=convention))
        out["nmse"].append(nmse(x_hat[i], x_ref[i], convention=convention))
    return out
