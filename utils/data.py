"""Dataset readers: DDS sample folders, fastMRI multi-coil ``.h5``, AAPM ``.npy``, DICOM.

Every reader returns a ``list[Sample]``; one :class:`Sample` is one 2-D slice:

* ``name``      — ``"<volume>/<file stem>"`` (DDS), ``"<file>/<slice>"`` (h5, npy stack, DICOM);
* ``x_ref``     — ``[H, W]`` torch tensor: ``complex64`` for MRI (magnitude ≲ 1),
  ``float32`` in [0, 1] for CT;
* ``sens_maps`` — ``[C, H, W]`` complex64 coil sensitivities (MRI multi-coil) or ``None``;
* ``modality``  — ``"MRI"`` or ``"CT"``; ``meta`` — reader-specific extras (file, scale, ...).

Scales (the project convention, see ARCHITECTURE.md)
----------------------------------------------------
* **CT window** — :func:`hu_to_unit`: μ = clip((HU + 1000) / 3000, 0, 1), i.e. the HU window
  [-1000, 2000] mapped linearly to [0, 1] (air 0, water 1/3, soft tissue ≈ 0.34, cortical bone
  → 1). Used by the DICOM reader, ``load_aapm_npy(units="hu")`` and ``utils/prepare_data.py``.
* **MRI** — complex images with magnitude ≲ 1: DDS folders are taken as stored;
  fastMRI images are divided by the max magnitude of the combined slice (``normalize="max"``,
  default; ``"percentile"`` divides by the 99.5th percentile instead, ``None`` keeps raw units);
  DICOM MR magnitude is divided by its max and returned with zero phase (or a smooth random
  phase with ``phase_seed``).

Errors: a missing file/folder raises ``FileNotFoundError``; an empty folder, a wrong dtype (e.g.
a real MRI slice where a complex one is expected), a wrong shape or NaN/Inf raise ``ValueError``
with the offending path and what was expected.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["Sample", "HU_MIN", "HU_MAX", "hu_to_unit", "load_dds_folder", "load_fastmri_h5",
           "load_aapm_npy", "load_dicom", "load_dataset", "resize_area"]

HU_MIN, HU_MAX = -1000.0, 2000.0
PathLike = Union[str, Path]


@dataclass
class Sample:
    """One 2-D slice: ``x_ref [H,W]`` (complex64 MRI / float32 CT), ``sens_maps [C,H,W]`` or None."""
    name: str
    x_ref: torch.Tensor
    sens_maps: Optional[torch.Tensor] = None
    modality: str = "MRI"
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def hu_to_unit(hu):
    """HU → [0, 1]: ``clip((HU + 1000) / 3000, 0, 1)`` (window [-1000, 2000] HU), float64 numpy."""
    return np.clip((np.asarray(hu, dtype=np.float64) - HU_MIN) / (HU_MAX - HU_MIN), 0.0, 1.0)


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Area (box-average) resampling of a real 2-D array to ``size × size`` (float64)."""
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float64)[None, None]
    return F.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{what} must be a folder, got a file: {path}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if not path.is_file():
        raise ValueError(f"{what} must be a file, got a folder: {path}")
    return path


def _check_finite(a: np.ndarray, path) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: contains NaN or Inf values")


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated / not an npy file
        raise ValueError(f"could not read {path} as a .npy array: {exc}") from exc


def _check_mri_slice(a: np.ndarray, path) -> np.ndarray:
    if not np.iscomplexobj(a):
        raise ValueError(f"{path}: MRI slice must be complex [H, W], got real dtype {a.dtype} "
                         "(store the complex image, e.g. magnitude * exp(1j * phase))")
    if a.ndim != 2:
        raise ValueError(f"{path}: MRI slice must be 2-D [H, W], got shape {a.shape}")
    _check_finite(a, path)
    return a.astype(np.complex64)


def _check_ct_slice(a: np.ndarray, path) -> np.ndarray:
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: CT slice must be real [H, W], got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{path}: CT slice must be 2-D [H, W], got shape {a.shape}")
    _check_finite(a, path)
    a = a.astype(np.float32)
    if a.min() < -1e-3 or a.max() > 1 + 1e-3:
        warnings.warn(f"{path}: CT slice values [{a.min():.3g}, {a.max():.3g}] outside [0, 1]; "
                      "the project expects the HU window of utils.data.hu_to_unit")
    return a


# ----------------------------------------------------------------------------------------------
# DDS sample folders
# ----------------------------------------------------------------------------------------------
def load_dds_folder(root: PathLike, modality: str, volumes: Optional[Sequence[str]] = None,
                    require_maps: bool = True, max_samples: Optional[int] = None) -> list[Sample]:
    """Read a DDS-style sample folder.

    Layout::

        <root>/MRI/<volume>/slice/<idx>.npy   complex [H, W]
        <root>/MRI/<volume>/mps/<idx>.npy     complex [C, H, W] (same file names)
        <root>/CT/<volume>/<idx>.npy          real [H, W] in [0, 1]

    Args:
        root: folder containing ``MRI/`` and/or ``CT/``.
        modality: ``"MRI"`` or ``"CT"``.
        volumes: restrict to these volume sub-folders (default: all, sorted).
        require_maps: MRI only; if False a missing ``mps`` file gives ``sens_maps=None``.
        max_samples: keep the first ``max_samples`` (sorted by volume, file name).

    Returns:
        samples sorted by (volume, file name); ``name = "<volume>/<stem>"``.
    """
    modality = modality.upper()
    if modality not in ("MRI", "CT"):
        raise ValueError(f"modality must be 'MRI' or 'CT', got {modality!r}")
    root = _require_dir(Path(root), "DDS sample folder")
    base = _require_dir(root / modality, f"{modality} sub-folder of the DDS sample folder")
    vols = sorted(p.name for p in base.iterdir() if p.is_dir())
    if volumes is not None:
        missing = [v for v in volumes if v not in vols]
        if missing:
            raise FileNotFoundError(f"volumes {missing} not found in {base} (have {vols})")
        vols = list(volumes)
    if not vols:
        raise ValueError(f"{base} contains no volume folders")
    samples: list[Sample] = []
    for vol in vols:
        vdir = base / vol
        if modality == "MRI":
            sdir = _require_dir(vdir / "slice", "MRI slice folder")
            files = sorted(sdir.glob("*.npy"))
            if not files:
                raise ValueError(f"{sdir} contains no .npy slices")
            for f in files:
                x = _check_mri_slice(_load_npy(f), f)
                mfile = vdir / "mps" / f.name
                maps = None
                if mfile.exists():
                    m = _load_npy(mfile)
                    if not np.iscomplexobj(m) or m.ndim != 3 or m.shape[1:] != x.shape:
                        raise ValueError(f"{mfile}: sensitivity maps must be complex [C, H, W] with "
                                         f"[H, W] = {x.shape}, got dtype {m.dtype} shape {m.shape}")
                    _check_finite(m, mfile)
                    maps = torch.from_numpy(m.astype(np.complex64))
                elif require_maps:
                    raise FileNotFoundError(f"sensitivity maps {mfile} not found for slice {f} "
                                            "(pass require_maps=False to load without maps)")
                samples.append(Sample(f"{vol}/{f.stem}", torch.from_numpy(x), maps, "MRI",
                                      {"file": str(f), "maps_file": str(mfile) if maps is not None else None}))
        else:
            files = sorted(vdir.glob("*.npy"))
            if not files:
                raise ValueError(f"{vdir} contains no .npy slices")
            for f in files:
                x = _check_ct_slice(_load_npy(f), f)
                samples.append(Sample(f"{vol}/{f.stem}", torch.from_numpy(x), None, "CT", {"file": str(f)}))
    return samples[:max_samples] if max_samples is not None else samples


# ----------------------------------------------------------------------------------------------
# fastMRI multi-coil h5
# ----------------------------------------------------------------------------------------------
def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def load_fastmri_h5(path: PathLike, slices: Optional[Sequence[int]] = None, crop: Optional[int] = 320,
                    maps: str = "espirit", calib_width: int = 24,
                    normalize: Optional[str] = "max") -> list[Sample]:
    """Read a fastMRI multi-coil ``.h5`` file (dataset ``kspace`` ``[S, C, H, W]`` complex).

    Per slice: coil images ``c = ifft2c(kspace)`` (centred orthonormal, fastMRI convention) →
    centre crop to ``crop × crop`` (removes readout oversampling; ``None`` = no crop) →
    sensitivity maps ``S`` from the k-space of the cropped coil images (``fft2c``):

    * ``maps="espirit"`` — ``physics.coils.espirit_maps(k, calib_width)`` (sigpy ESPIRiT);
    * ``maps="rss"``     — ``S_c = c_c / RSS(c)`` (Σ|S_c|² = 1 where RSS > 0; combined image = RSS).

    Complex image ``x = Σ_c conj(S_c) · c_c``; then ``normalize``: ``"max"`` divides by
    ``max|x|`` (|x| ≤ 1), ``"percentile"`` by the 99.5th percentile of ``|x|``, ``None`` keeps
    raw units. The scale is stored in ``meta["scale"]``; ``meta["rss"]`` is the RSS image
    (same scale).
    """
    import h5py

    from physics.coils import espirit_maps
    from physics.mri import fft2c, ifft2c, rss

    path = _require_file(Path(path), "fastMRI .h5 file")
    if maps not in ("espirit", "rss"):
        raise ValueError(f"maps must be 'espirit' or 'rss', got {maps!r}")
    if normalize not in ("max", "percentile", None):
        raise ValueError(f"normalize must be 'max', 'percentile' or None, got {normalize!r}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"could not open {path} as HDF5: {exc}") from exc
    with f:
        if "kspace" not in f:
            raise ValueError(f"{path}: no 'kspace' dataset (keys: {list(f.keys())})")
        ds = f["kspace"]
        if ds.ndim != 4:
            raise ValueError(f"{path}: multi-coil k-space must be [S, C, H, W], got shape {ds.shape} "
                             "(single-coil fastMRI files are [S, H, W] and not supported here)")
        if not np.issubdtype(ds.dtype, np.complexfloating):
            raise ValueError(f"{path}: k-space must be complex, got dtype {ds.dtype}")
        S = ds.shape[0]
        idx = list(range(S)) if slices is None else [int(s) for s in slices]
        bad = [s for s in idx if not 0 <= s < S]
        if bad:
            raise ValueError(f"{path}: slice indices {bad} out of range [0, {S})")
        kspaces = [np.asarray(ds[s]) for s in idx]
    samples = []
    for s, k in zip(idx, kspaces):
        _check_finite(k, f"{path} slice {s}")
        coil = ifft2c(torch.from_numpy(k.astype(np.complex64)))
        if crop is not None:
            if coil.shape[-2] < crop or coil.shape[-1] < crop:
                raise ValueError(f"{path}: image {tuple(coil.shape[-2:])} smaller than crop {crop}")
            coil = _center_crop(coil, crop, crop)
        r = rss(coil, dim=0)
        if maps == "espirit":
            sm = espirit_maps(fft2c(coil), calib_width=calib_width).to(torch.complex64)
        else:
            sm = coil / torch.where(r > 0, r, torch.ones_like(r))[None]
        x = (sm.conj() * coil).sum(0)
        mag = x.abs()
        if normalize == "max":
            scale = float(mag.max())
        elif normalize == "percentile":
            scale = float(np.percentile(mag.numpy(), 99.5))
        else:
            scale = 1.0
        if scale <= 0:
            raise ValueError(f"{path} slice {s}: combined image is all zeros")
        samples.append(Sample(f"{path.stem}/{s:03d}", (x / scale).to(torch.complex64), sm, "MRI",
                              {"file": str(path), "slice": s, "scale": scale, "maps": maps,
                               "rss": (r / scale).float()}))
    return samples


# ----------------------------------------------------------------------------------------------
# AAPM-style npy
# ----------------------------------------------------------------------------------------------
def load_aapm_npy(path: PathLike, units: str = "unit", size: Optional[int] = None) -> list[Sample]:
    """Read an AAPM-style CT ``.npy``: one slice ``[H, W]`` or a stack ``[S, H, W]`` (real).

    ``units="unit"``: values already in [0, 1] (DDS AAPM convention); ``units="hu"``: values in
    HU, mapped with :func:`hu_to_unit`. ``size``: optional area resampling to ``size × size``.
    """
    path = _require_file(Path(path), "AAPM .npy file")
    if units not in ("unit", "hu"):
        raise ValueError(f"units must be 'unit' or 'hu', got {units!r}")
    a = _load_npy(path)
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: CT data must be real, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim != 3:
        raise ValueError(f"{path}: expected a slice [H, W] or a stack [S, H, W], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{path}: empty stack")
    out = []
    for s in range(a.shape[0]):
        img = a[s].astype(np.float64)
        _check_finite(img, f"{path} slice {s}")
        if size is not None:
            img = resize_area(img, size)
        if units == "hu":
            img = hu_to_unit(img)
        x = _check_ct_slice(img.astype(np.float32), f"{path} slice {s}")
        out.append(Sample(f"{path.stem}/{s:03d}", torch.from_numpy(x), None, "CT",
                          {"file": str(path), "slice": s, "units": units}))
    return out


# ----------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------
def _dicom_sort_key(ds):
    ipp = getattr(ds, "ImagePositionPatient", None)
    z = float(ipp[2]) if ipp is not None and len(ipp) == 3 else 0.0
    return (int(getattr(ds, "InstanceNumber", 0) or 0), z)


def load_dicom(path: PathLike, modality: Optional[str] = None, size: Optional[int] = None,
               phase_seed: Optional[int] = None) -> list[Sample]:
    """Read one DICOM file or a folder of DICOM files (sorted by InstanceNumber, then z).

    Pixel values → ``pixel_array * RescaleSlope + RescaleIntercept`` (defaults 1, 0).
    CT (``Modality == "CT"``): HU → :func:`hu_to_unit`, float32 [0, 1].
    MR: magnitude / max over the slice → complex64 with zero phase, or with
    ``utils.synthetic.smooth_random_phase(H, W, phase_seed + i)`` when ``phase_seed`` is given.
    ``modality`` overrides the DICOM tag; ``size`` area-resamples to ``size × size`` first.
    """
    import pydicom

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM file or folder not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise ValueError(f"DICOM folder {path} is empty")
    else:
        files = [path]
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            if path.is_dir():
                continue  # skip non-DICOM files in a folder
            raise ValueError(f"{f} is not a readable DICOM file: {exc}") from exc
        if "PixelData" not in ds:
            if path.is_dir():
                continue
            raise ValueError(f"{f}: DICOM file has no pixel data")
        datasets.append((f, ds))
    if not datasets:
        raise ValueError(f"no DICOM images found in {path}")
    datasets.sort(key=lambda t: _dicom_sort_key(t[1]))
    out = []
    for i, (f, ds) in enumerate(datasets):
        mod = (modality or str(getattr(ds, "Modality", ""))).upper()
        if mod == "MRI":
            mod = "MR"
        if mod not in ("CT", "MR"):
            raise ValueError(f"{f}: modality {mod!r} not supported (CT or MR); pass modality=")
        img = ds.pixel_array.astype(np.float64)
        if img.ndim != 2:
            raise ValueError(f"{f}: expected a 2-D image, got pixel array of shape {img.shape}")
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        img = img * slope + intercept
        if size is not None:
            img = resize_area(img, size)
        meta = {"file": str(f), "slope": slope, "intercept": intercept, "dicom_modality": mod}
        if mod == "CT":
            x = torch.from_numpy(hu_to_unit(img).astype(np.float32))
            out.append(Sample(f"{f.stem}", x, None, "CT", meta))
        else:
            mag = np.abs(img)
            m = mag.max()
            if m <= 0:
                raise ValueError(f"{f}: MR image is all zeros")
            mag = mag / m
            if phase_seed is None:
                x = mag.astype(np.complex64)
            else:
                from utils.synthetic import smooth_random_phase
                ph = smooth_random_phase(mag.shape[0], mag.shape[1], seed=phase_seed + i)
                x = (mag * np.exp(1j * ph)).astype(np.complex64)
            meta["scale"] = float(m)
            out.append(Sample(f"{f.stem}", torch.from_numpy(x), None, "MRI", meta))
    return out


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------
def load_dataset(path: PathLike, modality: str, **kwargs) -> list[Sample]:
    """Pick the reader from the path: a folder with ``MRI/`` or ``CT/`` → DDS; ``.h5`` →
    fastMRI; ``.npy`` → AAPM; ``.dcm`` file or other folder → DICOM."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset path not found: {p}")
    if p.is_dir() and (p / modality.upper()).is_dir():
        return load_dds_folder(p, modality, **kwargs)
    if p.suffix in (".h5", ".hdf5"):
        return load_fastmri_h5(p, **kwargs)
    if p.suffix == ".npy":
        return load_aapm_npy(p, **kwargs)
    return load_dicom(p, **kwargs)
