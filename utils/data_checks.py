"""Checks shared by the data readers of ``utils/data.py``: the CT window (:func:`hu_to_unit`),
file and folder checks, slice dtype/shape/finiteness checks, the CT units check and resampling
(:func:`ct_to_unit`), and the ``size`` / ``units`` arguments.  Messages name the file and what
was expected, and the run-config field that changes the behaviour where there is one."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from utils.resample import resize_area

__all__ = ["UNITS", "HU_MIN", "HU_MAX", "hu_to_unit", "require_dir", "require_file", "check_finite", "load_npy",
           "check_mri_slice", "check_ct_slice", "ct_to_unit", "check_units", "check_size"]

#: CT value conventions of ``.npy`` data (``units=``)
UNITS = ("unit", "hu")

HU_MIN, HU_MAX = -1000.0, 2000.0


def hu_to_unit(hu):
    """HU → [0, 1]: ``clip((HU + 1000) / 3000, 0, 1)`` (window [-1000, 2000] HU), float64 numpy."""
    return np.clip((np.asarray(hu, dtype=np.float64) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)


def require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} must be a folder, got a file: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} must be a file, got a folder: {path}")
    return path


def check_finite(a: np.ndarray, path) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: contains NaN or Inf values")


def load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated / not an npy file
        raise ValueError(f"could not read {path} as a .npy array: {exc}") from exc


def check_mri_slice(a: np.ndarray, path) -> np.ndarray:
    if not np.iscomplexobj(a):
        raise ValueError(f"{path}: MRI slice must be complex [H, W], got real dtype {a.dtype} "
                         "(store the complex image, e.g. magnitude * exp(1j * phase))")
    if a.ndim != 2:
        raise ValueError(f"{path}: MRI slice must be 2-D [H, W], got shape {a.shape}")
    check_finite(a, path)
    return a.astype(np.complex64)


def check_ct_slice(a: np.ndarray, path) -> np.ndarray:
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: CT slice must be real [H, W], got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{path}: CT slice must be 2-D [H, W], got shape {a.shape}")
    check_finite(a, path)
    return a


def ct_to_unit(a: np.ndarray, path, units: str, size: Optional[int]) -> np.ndarray:
    """A checked real CT slice (raw values in ``units``) → float32 in the [0, 1] window at ``size``.

    ``"unit"`` data far outside [0, 1] (below -0.5 or above 2: Hounsfield units) and ``"hu"`` data
    inside [-1, 2] (already the unit window) are refused, naming the other setting; values slightly
    outside [0, 1] in ``"unit"`` mode only warn."""
    a = check_ct_slice(a, path).astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if units == "unit" and (lo < -0.5 or hi > 2.0):
        raise ValueError(f"{path}: CT values in [{lo:.4g}, {hi:.4g}] are far outside the [0, 1] window "
                         "(Hounsfield units?); read them with units='hu' (--config.data.units=hu)")
    if units == "hu" and -1.0 <= lo < hi <= 2.0:
        raise ValueError(f"{path}: CT values in [{lo:.4g}, {hi:.4g}] are not Hounsfield units (they look like "
                         "the [0, 1] window already); read them with units='unit' (--config.data.units=unit)")
    if size is not None:
        a = resize_area(a, size)
    if units == "hu":
        a = hu_to_unit(a)
    elif a.min() < -1e-3 or a.max() > 1 + 1e-3:
        warnings.warn(f"{path}: CT slice values [{a.min():.3g}, {a.max():.3g}] outside [0, 1]; "
                      "the project expects the HU window of utils.data.hu_to_unit")
    return a.astype(np.float32)


def check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS} (--config.data.units), got {units!r}")


def check_size(size: Optional[int]) -> Optional[int]:
    if size is None:
        return None
    if isinstance(size, bool) or int(size) != size or not 8 <= int(size) <= 4096:
        raise ValueError(f"size must be an integer in [8, 4096] (--config.data.image_size), got {size!r}")
    return int(size)

