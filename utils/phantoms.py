"""Ellipse phantoms and their analytic parallel-beam Radon transform (the CT test oracle).

Ellipse parameters (one row of a ``[K, 6]`` float64 array):
``(rho, a, b, x0, y0, phi_deg)`` = additive density, semi-axis along the (rotated) x axis,
semi-axis along the (rotated) y axis, centre, counter-clockwise rotation in degrees.  Lengths and
centres are in *normalised* coordinates where the image spans ``[-1, 1]`` (``1 = N/2`` pixels), as
in the classic Shepp–Logan table.

Pixel-grid convention (same as :mod:`physics.ct`): pixel ``(row i, col j)`` of an ``N×N`` image
has centre ``(x, y) = (j - (N-1)/2, (N-1)/2 - i)`` pixels (x right, y up), pixel side 1.

Analytic projection at angle ``θ`` (ray ``x cos θ + y sin θ = s``, pixel units): with
``A, B, X0, Y0`` the pixel-unit semi-axes and centre, ``α = θ - φ``,
``r² = A² cos²α + B² sin²α`` and ``s' = s - (X0 cos θ + Y0 sin θ)``::

    p(s, θ) = 2 ρ A B sqrt(r² - s'²) / r²   for |s'| ≤ r, else 0,

summed over the ellipses.  ``s' = ±r`` are the tangent rays, where the profile has an infinite
slope (:func:`tangent_distance` lets tests exclude bins near them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "SHEPP_LOGAN_MODIFIED",
    "shepp_logan_ellipses",
    "random_ellipses",
    "rasterize_ellipses",
    "ellipse_sinogram",
    "tangent_distance",
]

# Modified Shepp–Logan (Toft): better contrast than the original; values in [0, 1].
SHEPP_LOGAN_MODIFIED = np.array(
    [
        [1.00, 0.6900, 0.9200, 0.00, 0.0000, 0.0],
        [-0.80, 0.6624, 0.8740, 0.00, -0.0184, 0.0],
        [-0.20, 0.1100, 0.3100, 0.22, 0.0000, -18.0],
        [-0.20, 0.1600, 0.4100, -0.22, 0.0000, 18.0],
        [0.10, 0.2100, 0.2500, 0.00, 0.3500, 0.0],
        [0.10, 0.0460, 0.0460, 0.00, 0.1000, 0.0],
        [0.10, 0.0460, 0.0460, 0.00, -0.1000, 0.0],
        [0.10, 0.0460, 0.0230, -0.08, -0.6050, 0.0],
        [0.10, 0.0230, 0.0230, 0.00, -0.6060, 0.0],
        [0.10, 0.0230, 0.0460, 0.06, -0.6050, 0.0],
    ],
    dtype=np.float64,
)


def shepp_logan_ellipses() -> np.ndarray:
    """A copy of the modified Shepp–Logan ellipse table ``[10, 6]``."""
    return SHEPP_LOGAN_MODIFIED.copy()


def random_ellipses(
    n: int = 8,
    seed: int = 0,
    radius: float = 0.9,
    axis_range: Sequence[float] = (0.05, 0.4),
    density_range: Sequence[float] = (0.1, 0.5),
    background: bool = True,
) -> np.ndarray:
    """Random ellipse phantom ``[n (+1), 6]``, every ellipse inside the disc of ``radius``.

    With ``background`` a large centred ellipse (density 0.2) is prepended so that the phantom
    looks like a body section; the other ``n`` ellipses have positive densities drawn from
    ``density_range``.  Deterministic for a given ``seed``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    rows = []
    if background:
        rows.append([0.2, 0.8 * radius, 0.95 * radius, 0.0, 0.0, rng.uniform(-20, 20)])
    lo, hi = axis_range
    while len(rows) < n + int(background):
        a, b = rng.uniform(lo, hi, size=2)
        r_max = radius - max(a, b)
        if r_max <= 0:
            continue
        rc = r_max * np.sqrt(rng.uniform())
        ang = rng.uniform(0, 2 * np.pi)
        rows.append(
            [rng.uniform(*density_range), a, b, rc * np.cos(ang), rc * np.sin(ang), rng.uniform(0, 180)]
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def _pixel_units(ellipses: np.ndarray, image_size: int) -> np.ndarray:
    e = np.asarray(ellipses, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != 6:
        raise ValueError(f"ellipses must be [K, 6] (rho, a, b, x0, y0, phi_deg), got {e.shape}")
    out = e.copy()
    out[:, 1:5] *= image_size / 2.0
    return out


def rasterize_ellipses(ellipses: np.ndarray, image_size: int, supersample: int = 1) -> np.ndarray:
    """``[N, N]`` float64 image; each pixel = mean over ``supersample²`` sub-pixel samples."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    n = int(image_size)
    e = _pixel_units(ellipses, n)
    ss = int(supersample)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    centres = np.arange(n) - (n - 1) / 2.0
    xs = (centres[:, None] + sub[None, :]).reshape(-1)  # column coordinate (x)
    ys = (centres[::-1][:, None] - sub[None, :]).reshape(-1)  # row → y (up)
    x, y = np.meshgrid(xs, ys)  # [(n*ss), (n*ss)] indexed [row, col]
    img = np.zeros_like(x)
    for rho, a, b, x0, y0, phi in e:
        c, s = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        dx, dy = x - x0, y - y0
        u = (dx * c + dy * s) / a
        v = (-dx * s + dy * c) / b
        img += rho * (u * u + v * v <= 1.0)
    return img.reshape(n, ss, n, ss).mean(axis=(1, 3))


def _geometry(angles_deg, detector_pos):
    th = np.radians(np.asarray(angles_deg, dtype=np.float64))[:, None]
    s = np.asarray(detector_pos, dtype=np.float64)[None, :]
    return th, s


def ellipse_sinogram(ellipses: np.ndarray, image_size: int, angles_deg, detector_pos) -> np.ndarray:
    """Analytic line integrals ``[V, D]`` (pixel units) at the given angles / bin centres."""
    e = _pixel_units(ellipses, int(image_size))
    th, s = _geometry(angles_deg, detector_pos)
    out = np.zeros((th.shape[0], s.shape[1]))
    for rho, a, b, x0, y0, phi in e:
        al = th - np.radians(phi)
        r2 = (a * np.cos(al)) ** 2 + (b * np.sin(al)) ** 2
        sp = s - (x0 * np.cos(th) + y0 * np.sin(th))
        inside = np.clip(r2 - sp * sp, 0.0, None)
        out += 2.0 * rho * a * b * np.sqrt(inside) / r2
    return out


def tangent_distance(ellipses: np.ndarray, image_size: int, angles_deg, detector_pos) -> np.ndarray:
    """``[V, D]`` distance (pixels) from each ray to the nearest ellipse tangent ray."""
    e = _pixel_units(ellipses, int(image_size))
    th, s = _geometry(angles_deg, detector_pos)
    dist = np.full((th.shape[0], s.shape[1]), np.inf)
    for _, a, b, x0, y0, phi in e:
        al = th - np.radians(phi)
        r = np.sqrt((a * np.cos(al)) ** 2 + (b * np.sin(al)) ** 2)
        sp = s - (x0 * np.cos(th) + y0 * np.sin(th))
        dist = np.minimum(dist, np.abs(np.abs(sp) - r))
    return dist
