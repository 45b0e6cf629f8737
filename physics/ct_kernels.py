"""Parallel-beam CT kernels: geometry, the Siddon system matrix, FBP filters, back-projectors.

Pure numpy/scipy builders plus their cache; :mod:`physics.ct` wraps them in the operator.

Geometry and conventions
------------------------
* Image ``x`` is ``[B, H, W]`` real with ``H = W = N = image_size``.  Pixels are squares of side 1
  (the unit of length), the image is centred on the rotation axis.  Pixel ``(row i, col j)`` has
  centre ``(x, y) = (j - (N-1)/2, (N-1)/2 - i)``: ``x`` points right (increasing column) and ``y``
  points *up* (decreasing row).
* View angle ``θ`` (degrees in the API, radians below) is the direction of the detector axis
  ``n = (cos θ, sin θ)``; the ray of detector bin ``k`` is the line ``{p : <p, n> = s_k}`` with
  ``s_k = (k - (D-1)/2) * detector_spacing``, i.e. the rotation centre projects onto array position
  ``(D-1)/2`` (the same "centre of the array" convention as the pixel grid).  Default
  ``detector_spacing = 1`` pixel and ``D = ceil(sqrt(2) N)`` rounded up to the **parity of N**, so
  that at 0°/90° every ray goes through pixel centres (never along pixel edges) and the detector
  covers the image diagonal.  This matches the orientation of ``skimage.transform.radon`` (up to
  its own detector-centre choice ``D//2``).
* A sinogram is ``[B, V, D]``: ``y[b, v, k] = ∫ x(s_k n_v + t n_v^⊥) dt``, the line integral of the
  piecewise-constant image, in pixel units (a uniform disc of value 1 and radius R pixels has a
  central projection 2R).

System matrix
-------------
``A`` is the exact ray/pixel intersection-length matrix (Siddon's method: one infinitely thin ray
per detector bin through the bin centre), built once per geometry with vectorised numpy
(256², 180 views: ~15 M non-zeros, a few seconds), kept in a module-level LRU cache
(:func:`system_matrix`) and returned as torch sparse CSR tensors for ``A`` and its *exact*
transpose ``Aᵀ`` (so ``<Ax, y> = <x, Aᵀy>`` to floating-point precision).  Rays lying exactly on a
pixel edge (only possible for axis-aligned views when the detector parity differs from N) split
their length half/half between the two neighbouring pixels.  :class:`SparseApply` multiplies by
such a matrix inside autograd (the gradient of ``A`` is ``Aᵀ`` and vice versa).

Filters and back-projection
---------------------------
:func:`fourier_filter`: ramp-type FBP filters (the spatial-domain Ram-Lak kernel of Kak & Slaney,
frequency response ``|ω|`` in cycles/pixel, optionally apodised: shepp-logan, cosine, hann).
:func:`backprojection_matrix`: a pixel-driven linear-interpolation back-projector (cached like the
system matrix), which gives better FBP than the thin-ray Siddon transpose (see :mod:`physics.ct`).
"""
from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "FILTERS",
    "SparseApply",
    "backprojection_matrix",
    "check_filter",
    "clear_cache",
    "default_num_detectors",
    "detector_positions",
    "fourier_filter",
    "system_matrix",
]

FILTERS = ("ramp", "ram-lak", "shepp-logan", "cosine", "hann")

_EPS_AXIS = 1e-12  # |sin θ| or |cos θ| below this → axis-aligned view (handled exactly)
_EPS_LEN = 1e-10  # segments shorter than this are dropped (ray through a pixel corner)
_EPS_EDGE = 1e-9  # axis-aligned ray closer than this to a pixel edge → split half/half


# ----------------------------------------------------------------------------------------------
# geometry helpers
# ----------------------------------------------------------------------------------------------
def default_num_detectors(image_size: int) -> int:
    """``ceil(sqrt(2) N)`` rounded up to the parity of ``N`` (covers the image diagonal)."""
    d = int(math.ceil(math.sqrt(2.0) * image_size - 1e-9))
    if (d - image_size) % 2:
        d += 1
    return d


def detector_positions(num_detectors: int, spacing: float = 1.0) -> np.ndarray:
    """Bin-centre coordinates ``s_k = (k - (D-1)/2) * spacing`` (float64, pixel units)."""
    return (np.arange(num_detectors, dtype=np.float64) - (num_detectors - 1) / 2.0) * spacing


def _siddon_view(theta: float, s: np.ndarray, n: int):
    """Intersection lengths of the rays ``<p,(cos θ, sin θ)> = s_k`` with the N×N pixel grid.

    Returns ``(ray, pix, length)`` 1-D arrays (ray index into ``s``, flat pixel index
    ``row*N + col``, length), entries grouped by ray in increasing ray order.
    """
    c, si = math.cos(theta), math.sin(theta)
    d = s.shape[0]
    half = n / 2.0
    if abs(si) < _EPS_AXIS or abs(c) < _EPS_AXIS:
        # Axis-aligned view: the ray is a vertical (|sin|≈0) or horizontal (|cos|≈0) line.
        vertical = abs(si) < _EPS_AXIS
        coord = s * (c if vertical else si)  # x of a vertical line / y of a horizontal line
        u = coord + half if vertical else half - coord  # column / row coordinate in [0, N]
        base = np.floor(u)
        frac = u - base
        rays, idx, wts = [], [], []
        on_edge = (frac < _EPS_EDGE) | (frac > 1.0 - _EPS_EDGE)
        # interior rays: whole column/row, weight 1
        inner = ~on_edge
        rays.append(np.nonzero(inner)[0])
        idx.append(base[inner].astype(np.int64))
        wts.append(np.ones(int(inner.sum())))
        # edge rays: half into each neighbour
        edge_k = np.nonzero(on_edge)[0]
        e = np.rint(u[on_edge]).astype(np.int64)
        for off in (-1, 0):
            rays.append(edge_k)
            idx.append(e + off)
            wts.append(np.full(edge_k.shape[0], 0.5))
        rays = np.concatenate(rays)
        idx = np.concatenate(idx)
        wts = np.concatenate(wts)
        ok = (idx >= 0) & (idx < n)
        rays, idx, wts = rays[ok], idx[ok], wts[ok]
        other = np.arange(n, dtype=np.int64)
        ray = np.repeat(rays, n)
        line = np.repeat(idx, n)
        length = np.repeat(wts, n)
        oth = np.tile(other, rays.shape[0])
        pix = oth * n + line if vertical else line * n + oth
        order = np.argsort(ray, kind="stable")
        return ray[order], pix[order], length[order]

    planes = np.arange(n + 1, dtype=np.float64) - half  # pixel edges, same for x and y
    # P(t) = s n + t n⊥ with n⊥ = (-sin θ, cos θ)
    tx = (s[:, None] * c - planes[None, :]) / si  # x(t) = s c - t sin θ = plane
    ty = (planes[None, :] - s[:, None] * si) / c  # y(t) = s sin θ + t cos θ = plane
    t = np.sort(np.concatenate([tx, ty], axis=1), axis=1)
    length = t[:, 1:] - t[:, :-1]
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    xm = s[:, None] * c - mid * si
    ym = s[:, None] * si + mid * c
    col = np.floor(xm + half)
    row = np.floor(half - ym)
    ok = (length > _EPS_LEN) & (col >= 0) & (col < n) & (row >= 0) & (row < n)
    ray = np.broadcast_to(np.arange(d)[:, None], ok.shape)[ok]
    pix = row[ok].astype(np.int64) * n + col[ok].astype(np.int64)
    return ray, pix, length[ok]


def _build_matrix(n: int, angles_deg: np.ndarray, s: np.ndarray) -> sp.csr_matrix:
    """Siddon system matrix ``[V*D, N*N]`` (float64 scipy CSR, sorted indices)."""
    d = s.shape[0]
    indptr_parts, idx_parts, val_parts = [], [], []
    offset = 0
    for v, ang in enumerate(angles_deg):
        ray, pix, length = _siddon_view(math.radians(float(ang)), s, n)
        counts = np.bincount(ray, minlength=d)
        indptr_parts.append(offset + np.cumsum(counts))
        offset += int(counts.sum())
        idx_parts.append(pix.astype(np.int32))
        val_parts.append(length)
    indptr = np.concatenate([np.zeros(1, dtype=np.int64)] + indptr_parts)
    a = sp.csr_matrix(
        (np.concatenate(val_parts), np.concatenate(idx_parts), indptr),
        shape=(len(angles_deg) * d, n * n),
    )
    a.sum_duplicates()  # also sorts the column indices
    return a


def _to_torch_csr(m: sp.csr_matrix) -> torch.Tensor:
    index_dtype = torch.int32 if m.nnz < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta.*")
        # torch 2.11 (CUDA build) warns even with check_invariants=False; the matrices come from
        # scipy's canonical CSR, so the invariants hold
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks are implicitly disabled.*")
        return torch.sparse_csr_tensor(
            torch.from_numpy(m.indptr.astype(np.int64)).to(index_dtype),
            torch.from_numpy(m.indices.astype(np.int64)).to(index_dtype),
            torch.from_numpy(m.data.astype(np.float64)),
            size=m.shape,
            dtype=torch.float64,
            check_invariants=False,
        )


def _build_interp_backprojector(n: int, angles_deg: np.ndarray, s: np.ndarray) -> sp.csr_matrix:
    """Pixel-driven linear-interpolation back-projector ``[N*N, V*D]`` (float64 scipy CSR).

    Row ``j`` (pixel centre ``p_j``) has, for every view, the two linear-interpolation weights of
    ``<p_j, n_v>`` between the neighbouring detector-bin centres (zero outside the detector).
    Requires uniformly spaced bins ``s``.
    """
    d = s.shape[0]
    spacing = (s[-1] - s[0]) / (d - 1) if d > 1 else 1.0
    c = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    px = np.tile(c, n)  # x of flat pixel index row*N + col
    py = np.repeat(c[::-1], n)  # y (up)
    pix = np.arange(n * n, dtype=np.int64)
    rows, cols, vals = [], [], []
    for v, ang in enumerate(np.radians(np.asarray(angles_deg, dtype=np.float64))):
        u = (px * math.cos(ang) + py * math.sin(ang) - s[0]) / spacing
        k0 = np.floor(u)
        w1 = u - k0
        k0 = k0.astype(np.int64)
        for kk, ww in ((k0, 1.0 - w1), (k0 + 1, w1)):
            ok = (kk >= 0) & (kk < d) & (ww > 0)
            rows.append(pix[ok])
            cols.append((v * d + kk[ok]).astype(np.int32))
            vals.append(ww[ok])
    b = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n * n, len(angles_deg) * d),
    )
    b.sum_duplicates()
    return b


_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()
_CACHE_SIZE = 8
LAST_BUILD_SECONDS: Optional[float] = None  # wall time of the most recent (uncached) build


def clear_cache() -> None:
    """Empty the module-level system-matrix cache."""
    _CACHE.clear()


def _cache_key(kind: str, image_size, ang: np.ndarray, pos: np.ndarray) -> tuple:
    return (kind, int(image_size), np.round(ang, 9).tobytes(), np.round(pos, 9).tobytes())


def _cache_put(key, value) -> None:
    _CACHE[key] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)


def _cached(key, build):
    """The LRU entry ``key``, built with ``build()`` and stored on a miss."""
    hit = _CACHE.get(key)
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    value = build()
    _cache_put(key, value)
    return value


def backprojection_matrix(image_size: int, angles_deg: Sequence[float], detector_pos: Sequence[float]):
    """Cached linear-interpolation back-projector ``[N², V·D]`` (float64 CPU torch CSR)."""
    ang = np.asarray(angles_deg, dtype=np.float64)
    pos = np.asarray(detector_pos, dtype=np.float64)
    return _cached(_cache_key("interp", image_size, ang, pos),
                   lambda: _to_torch_csr(_build_interp_backprojector(int(image_size), ang, pos)))


def system_matrix(image_size: int, angles_deg: Sequence[float], detector_pos: Sequence[float]):
    """Cached ``(A, Aᵀ)`` as float64 CPU torch sparse CSR tensors for one geometry.

    Key: ``(N, angles rounded to 1e-9°, detector positions rounded to 1e-9)``; the module-level
    LRU holds 8 entries (system matrices and interpolating back-projectors).
    """
    ang = np.asarray(angles_deg, dtype=np.float64)
    pos = np.asarray(detector_pos, dtype=np.float64)

    def build():
        global LAST_BUILD_SECONDS
        t0 = time.perf_counter()
        a = _build_matrix(int(image_size), ang, pos)
        at = a.T.tocsr()  # exact transpose (same numbers), sorted indices
        at.sort_indices()
        pair = (_to_torch_csr(a), _to_torch_csr(at))
        LAST_BUILD_SECONDS = time.perf_counter() - t0
        return pair

    return _cached(_cache_key("siddon", image_size, ang, pos), build)


# ----------------------------------------------------------------------------------------------
# filters
# ----------------------------------------------------------------------------------------------
def fourier_filter(size: int, name: str = "ramp") -> np.ndarray:
    """Real frequency response (length ``size``, FFT order) of the FBP filter.

    Ramp = FFT of the band-limited spatial Ram-Lak kernel (h[0]=1/4, h[odd n]=-1/(πn)²), i.e.
    ``|ω|`` in cycles/sample with the correct (≈0) DC value; apodisation windows as in
    ``skimage.transform.iradon`` (without its factor 2, see module docstring).
    """
    key = check_filter(name)
    n = np.concatenate([np.arange(1, size // 2 + 1, 2), np.arange(size // 2 - 1, 0, -2)])
    f = np.zeros(size)
    f[0] = 0.25
    f[1::2] = -1.0 / (np.pi * n) ** 2
    filt = np.real(np.fft.fft(f))
    if key == "shepp-logan":
        omega = np.pi * np.fft.fftfreq(size)[1:]
        filt[1:] *= np.sin(omega) / omega
    elif key == "cosine":
        filt *= np.fft.fftshift(np.sin(np.linspace(0, np.pi, size, endpoint=False)))
    elif key == "hann":
        filt *= np.fft.fftshift(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size))
    return filt


def check_filter(name) -> str:
    """The canonical key of FBP filter ``name`` (``"ram-lak"`` → ``"ramp"``); else ValueError."""
    if not isinstance(name, str) or name.lower() not in FILTERS:
        raise ValueError(
            f"unknown FBP filter {name!r}; use one of {', '.join(FILTERS)} "
            "(ramp and ram-lak are the same unapodised filter)"
        )
    key = name.lower()
    return "ramp" if key == "ram-lak" else key


# ----------------------------------------------------------------------------------------------
# autograd wrapper for sparse products
# ----------------------------------------------------------------------------------------------
class SparseApply(torch.autograd.Function):
    """``out = M @ X`` with ``M`` sparse CSR, ``X`` dense ``[K, B]``; grad is ``Mᵀ @ G``."""

    @staticmethod
    def forward(ctx, dense, mat, mat_t):
        ctx.mat_t = mat_t
        ctx.mat = mat
        return torch.sparse.mm(mat, dense)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        if ctx.mat_t is None:  # no stored transpose: built here (slow; callers pass one when they can)
            return torch.sparse.mm(ctx.mat.to_sparse_coo().t().coalesce(), grad.contiguous()), None, None
        return SparseApply.apply(grad.contiguous(), ctx.mat_t, ctx.mat), None, None

