"""Cartesian k-space undersampling masks.

All masks are ``torch.float32`` tensors of shape ``[H, W]`` with values in {0, 1}, laid out in
the *centred* k-space convention of :func:`physics.mri.fft2c` (DC at ``(H//2, W//2)``).

1-D masks (``uniform1d``, ``gaussian1d``, ``equispaced1d``) select phase-encoding *columns*
(the last dim, ``W``; every row of a selected column is sampled). They hit the nominal budget
exactly::

      n_total  = round(W / acceleration)          columns in total (ACS included)
      n_center = round(W * center_fraction)       fully sampled central (ACS) columns
      n_outer  = n_total - n_center               columns drawn outside the ACS

The ACS block is the fastMRI one: columns ``[pad, pad + n_center)`` with
``pad = (W - n_center + 1) // 2`` (it always contains the DC column ``W//2`` when
``n_center >= 1``).

* ``uniform1d``: ``n_outer`` columns drawn uniformly *without replacement* from the non-ACS
  columns.
* ``gaussian1d``: ``n_outer`` columns drawn without replacement with probability
  ∝ ``exp(-(k - W//2)² / (2σ²))``, ``σ = W·15/128`` (DDS/score-MRI density), via
  Efraimidis–Spirakis weighted sampling (equivalent to sequential draws without replacement).
* ``equispaced1d``: fastMRI-style equispaced columns with a random offset; the ``n_outer``
  columns are spread with constant spacing over the non-ACS columns, so the count is exact.

2-D masks (``uniform2d``, ``gaussian2d``, ``poisson``) select individual k-space points. The
ACS is a central ``round(H·cf) × round(W·cf)`` rectangle (square for square images) with the
same ``pad`` rule on both axes. Budget ``n_total = round(H·W / acceleration)``:

* ``uniform2d``: the non-ACS points drawn uniformly without replacement — exact count.
* ``gaussian2d``: drawn without replacement with a separable Gaussian density
  (``σ_y = H·sqrt(1.5/128)``, ``σ_x = W·sqrt(1.5/128)``, DDS covariance) — exact count.
* ``poisson``: variable-density Poisson disc from :func:`sigpy.mri.poisson` (its own binary
  search makes the acceleration within ±0.1 of the target); the ACS rectangle is then forced on.

``acceleration == 1`` returns the fully sampled mask for every name. Randomness uses
``numpy.random.default_rng(seed)`` (``poisson``: sigpy's ``seed``), so equal seeds give equal
masks.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

__all__ = ["MASK_NAMES", "get_mask", "realized_acceleration"]

MASK_NAMES = ("uniform1d", "gaussian1d", "equispaced1d", "gaussian2d", "uniform2d", "poisson")

_GAUSS1D_STD = 15.0 / 128.0          # σ / W   (DDS gaussian1d)
_GAUSS2D_STD = math.sqrt(1.5 / 128)  # σ / N   (DDS gaussian2d covariance N·(1.5/128)·N)


def _acs_slice(n: int, n_center: int) -> slice:
    pad = (n - n_center + 1) // 2
    return slice(pad, pad + n_center)


def _weighted_choice(rng: np.random.Generator, candidates: np.ndarray, log_w: np.ndarray,
                     k: int) -> np.ndarray:
    """Draw ``k`` distinct entries of ``candidates`` with weights ``exp(log_w)`` (without
    replacement; Efraimidis–Spirakis keys ``log(E) - log_w``, ``E ~ Exp(1)``, k smallest)."""
    if k <= 0:
        return candidates[:0]
    keys = np.log(rng.standard_exponential(candidates.size)) - log_w
    idx = np.argpartition(keys, k - 1)[:k]
    return candidates[idx]


def _parse_shape(shape) -> Tuple[int, int]:
    try:
        dims = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be a pair (H, W) of positive ints, got {shape!r}.") from None
    if len(dims) != 2 or min(dims) < 1:
        raise ValueError(f"shape must be a pair (H, W) of positive ints, got {shape!r}.")
    return dims


def get_mask(name: str, shape: Sequence[int], acceleration: float,
             center_fraction: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Undersampling mask ``[H, W]`` float32 in {0, 1} (see the module docstring).

    Args:
        name: one of ``MASK_NAMES``.
        shape: ``(H, W)``.
        acceleration: nominal acceleration ``R >= 1`` (``H·W / #samples``).
        center_fraction: fraction of columns (1-D) / of each side (2-D) in the fully sampled
            ACS centre.
        seed: integer seed; same seed → same mask.

    Raises:
        ValueError: unknown ``name`` (lists the valid names), ``acceleration < 1``, bad
            ``shape``/``center_fraction``, or an ACS that exceeds the sampling budget.
    """
    if name not in MASK_NAMES:
        raise ValueError(f"unknown mask name {name!r}; valid names are: {', '.join(MASK_NAMES)}.")
    H, W = _parse_shape(shape)
    acceleration = float(acceleration)
    if not math.isfinite(acceleration) or acceleration < 1:
        raise ValueError(f"acceleration must be a finite number >= 1, got {acceleration}.")
    center_fraction = float(center_fraction)
    if not (0.0 <= center_fraction <= 1.0):
        raise ValueError(f"center_fraction must be in [0, 1], got {center_fraction}.")
    if acceleration == 1.0:
        return torch.ones(H, W, dtype=torch.float32)
    rng = np.random.default_rng(seed)

    if name.endswith("1d"):
        n_total = int(round(W / acceleration))
        n_center = int(round(W * center_fraction))
        if n_total < 1:
            raise ValueError(f"acceleration {acceleration} leaves no column to sample for W={W}; "
                             "use a smaller acceleration.")
        if n_center > n_total:
            raise ValueError(f"center_fraction {center_fraction} gives {n_center} ACS columns, "
                             f"more than the budget round(W/acceleration) = {n_total} for "
                             f"W={W}, acceleration={acceleration}; lower center_fraction or "
                             "the acceleration.")
        cols = np.zeros(W, dtype=bool)
        cols[_acs_slice(W, n_center)] = True
        outer = np.flatnonzero(~cols)
        n_outer = n_total - n_center
        if name == "uniform1d":
            chosen = rng.choice(outer, size=n_outer, replace=False)
        elif name == "gaussian1d":
            sigma = _GAUSS1D_STD * W
            log_w = -0.5 * ((outer - W // 2) / sigma) ** 2
            chosen = _weighted_choice(rng, outer, log_w, n_outer)
        else:  # equispaced1d
            if n_outer > 0:
                step = outer.size / n_outer                    # >= 1
                offset = rng.uniform(0.0, step)
                pos = np.floor(offset + step * np.arange(n_outer)).astype(np.int64)
                chosen = outer[np.clip(pos, 0, outer.size - 1)]
            else:
                chosen = outer[:0]
        cols[chosen] = True
        assert int(cols.sum()) == n_total
        mask = np.broadcast_to(cols[None, :], (H, W)).astype(np.float32)
        return torch.from_numpy(mask.copy())

    # ------------------------------------------------------------------ 2-D masks
    n_total = int(round(H * W / acceleration))
    ch, cw = int(round(H * center_fraction)), int(round(W * center_fraction))
    if ch * cw > n_total:
        raise ValueError(f"center_fraction {center_fraction} gives a {ch}x{cw} ACS "
                         f"({ch * cw} points), more than the budget round(H*W/acceleration) = "
                         f"{n_total}; lower center_fraction or the acceleration.")
    mask = np.zeros((H, W), dtype=bool)
    mask[_acs_slice(H, ch), _acs_slice(W, cw)] = True

    if name == "poisson":
        import sigpy.mri

        try:
            m = sigpy.mri.poisson((H, W), acceleration, calib=(ch, cw), dtype=np.float32,
                                  crop_corner=True, seed=int(seed) % (2 ** 32))
        except ValueError as e:
            raise ValueError(f"sigpy.mri.poisson could not reach acceleration {acceleration} for "
                             f"shape {(H, W)} ({e}); try another seed or acceleration.") from None
        mask |= m.astype(bool)
        return torch.from_numpy(mask.astype(np.float32))

    outer = np.flatnonzero(~mask.ravel())
    n_outer = n_total - ch * cw
    if name == "uniform2d":
        chosen = rng.choice(outer, size=n_outer, replace=False)
    else:  # gaussian2d
        yy, xx = np.divmod(outer, W)
        log_w = -0.5 * (((yy - H // 2) / (_GAUSS2D_STD * H)) ** 2
                        + ((xx - W // 2) / (_GAUSS2D_STD * W)) ** 2)
        chosen = _weighted_choice(rng, outer, log_w, n_outer)
    flat = mask.ravel()
    flat[chosen] = True
    return torch.from_numpy(flat.reshape(H, W).astype(np.float32))


def realized_acceleration(mask) -> float:
    """Realised acceleration ``numel(mask) / Σ mask`` (for a 0/1 mask of any shape)."""
    m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    total = float(m.to(torch.float64).sum())
    if total <= 0:
        raise ValueError("mask samples nothing (sum is 0); its acceleration is undefined.")
    return m.numel() / total
