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

Sizes: every reader takes ``size`` (``None`` = as stored): CT slices are area-averaged to
``size × size`` in the image domain, MRI slices (and their coil maps) are resampled by centre-
cropping / zero-padding k-space (same field of view, intensities preserved; ``utils/resample.py``);
the fastMRI reader estimates its maps at the new size.

CT units: ``.npy`` CT data (DDS folders, AAPM files) are read as ``units="unit"`` (already in the
[0, 1] window) or ``units="hu"``; values far outside [0, 1] in ``"unit"`` mode (HU data) and HU
mode on data that lie in [-1, 2] are refused with a message naming the other setting, never
reconstructed silently.

Errors: a missing file/folder raises ``FileNotFoundError``; an empty folder, a wrong dtype (e.g.
a real MRI slice where a complex one is expected), a wrong shape or NaN/Inf raise ``ValueError``
with the offending path and what was expected.  Messages name the run-config field that changes
the behaviour (``--config.data.<field>``) where there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from utils.data_checks import (HU_MAX, HU_MIN, UNITS, check_finite, check_mri_slice, check_size, check_units,
                               ct_to_unit, hu_to_unit, load_npy, require_dir, require_file)
from utils.resample import centre_crop_or_pad, kspace_resample, resample_mri, resize_area

__all__ = ["Sample", "HU_MIN", "HU_MAX", "hu_to_unit", "load_dds_folder", "load_fastmri_h5",
           "load_aapm_npy", "load_dicom", "load_dataset", "resize_area", "data_kind", "UNITS"]


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
# DDS sample folders
# ----------------------------------------------------------------------------------------------
def load_dds_folder(root: PathLike, modality: str, volumes: Optional[Sequence[str]] = None,
                    require_maps: bool = True, max_samples: Optional[int] = None, size: Optional[int] = None,
                    units: str = "unit") -> list[Sample]:
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
        size: resample every slice to ``size × size`` (module docstring; ``None`` = as stored).
        units: CT only, ``"unit"`` ([0, 1]) or ``"hu"`` (module docstring).

    Returns:
        samples sorted by (volume, file name); ``name = "<volume>/<stem>"``.
    """
    modality = modality.upper()
    if modality not in ("MRI", "CT"):
        raise ValueError(f"modality must be 'MRI' or 'CT', got {modality!r}")
    check_units(units)
    size = check_size(size)
    root = require_dir(Path(root), "DDS sample folder")
    base = require_dir(root / modality, f"{modality} sub-folder of the DDS sample folder")
    vols = sorted(p.name for p in base.iterdir() if p.is_dir())
    if volumes is not None:
        missing = [v for v in volumes if v not in vols]
        if missing:
            raise FileNotFoundError(f"volumes {missing} not found in {base} (have {vols})")
        vols = list(volumes)
    if not vols:
        raise ValueError(f"{base} contains no volume folders (expected {base}/<volume>/"
                         f"{'slice/' if modality == 'MRI' else ''}*.npy)")
    samples: list[Sample] = []
    for vol in vols:
        if max_samples is not None and len(samples) >= max_samples:
            break
        vdir = base / vol
        if modality == "MRI":
            sdir = require_dir(vdir / "slice", "MRI slice folder")
            files = sorted(sdir.glob("*.npy"))
            if not files:
                raise ValueError(f"{sdir} contains no .npy slices")
            for f in files:
                x = check_mri_slice(load_npy(f), f)
                mfile = vdir / "mps" / f.name
                maps = None
                if mfile.exists():
                    m = load_npy(mfile)
                    if not np.iscomplexobj(m) or m.ndim != 3 or m.shape[1:] != x.shape:
                        raise ValueError(f"{mfile}: sensitivity maps must be complex [C, H, W] with "
                                         f"[H, W] = {x.shape}, got dtype {m.dtype} shape {m.shape}")
                    check_finite(m, mfile)
                    maps = torch.from_numpy(m.astype(np.complex64))
                elif require_maps:
                    raise FileNotFoundError(f"sensitivity maps {mfile} not found for slice {f} (to reconstruct "
                                            "without coil maps, as single-coil data, pass require_maps=False: "
                                            "--config.data.require_maps=False)")
                xt = torch.from_numpy(x)
                meta = {"file": str(f), "maps_file": str(mfile) if maps is not None else None,
                        "stored_shape": tuple(x.shape)}
                if size is not None:
                    xt, maps = resample_mri(xt, maps, size)
                samples.append(Sample(f"{vol}/{f.stem}", xt, maps, "MRI", meta))
        else:
            files = sorted(vdir.glob("*.npy"))
            if not files:
                raise ValueError(f"{vdir} contains no .npy slices")
            for f in files:
                a = load_npy(f)
                x = ct_to_unit(a, f, units, size)
                samples.append(Sample(f"{vol}/{f.stem}", torch.from_numpy(x), None, "CT",
                                      {"file": str(f), "units": units, "stored_shape": tuple(a.shape)}))
    return samples[:max_samples] if max_samples is not None else samples


# ----------------------------------------------------------------------------------------------
# fastMRI multi-coil h5
# ----------------------------------------------------------------------------------------------
def load_fastmri_h5(path: PathLike, slices: Optional[Sequence[int]] = None, crop: Optional[int] = 320,
                    maps: str = "espirit", calib_width: int = 24,
                    normalize: Optional[str] = "max", size: Optional[int] = None) -> list[Sample]:
    """Read a fastMRI multi-coil ``.h5`` file (dataset ``kspace`` ``[S, C, H, W]`` complex).

    Per slice: coil images ``c = ifft2c(kspace)`` (centred orthonormal, fastMRI convention) →
    centre crop to ``crop × crop`` (removes readout oversampling; ``None`` or 0 = no crop) →
    with ``size``, k-space resampling of the coil images to ``size × size`` (same field of view,
    ``utils.resample.kspace_resample``) → sensitivity maps ``S`` at that size from the k-space of
    the coil images (``fft2c``):

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

    path = require_file(Path(path), "fastMRI .h5 file")
    if maps not in ("espirit", "rss"):
        raise ValueError(f"maps must be 'espirit' or 'rss' (--config.data.maps), got {maps!r}")
    if normalize not in ("max", "percentile", None):
        raise ValueError(f"normalize must be 'max', 'percentile' or None (--config.data.normalize), got {normalize!r}")
    size = check_size(size)
    crop = int(crop) if crop else None
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
        check_finite(k, f"{path} slice {s}")
        coil = ifft2c(torch.from_numpy(k.astype(np.complex64)))
        stored = tuple(coil.shape[-2:])
        if crop is not None:
            if coil.shape[-2] < crop or coil.shape[-1] < crop:
                raise ValueError(f"{path}: image {tuple(coil.shape[-2:])} smaller than crop {crop}; pass a "
                                 "smaller --config.data.crop (0 = no crop)")
            coil = centre_crop_or_pad(coil, crop, crop)
        if size is not None:
            coil = kspace_resample(coil, size)
        if maps == "espirit" and calib_width > min(coil.shape[-2:]):
            raise ValueError(f"{path}: ESPIRiT calibration width {calib_width} exceeds the image size "
                             f"{tuple(coil.shape[-2:])}; pass a smaller --config.data.calib_width")
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
                               "rss": (r / scale).float(), "stored_shape": stored}))
    return samples


# ----------------------------------------------------------------------------------------------
# AAPM-style npy
# ----------------------------------------------------------------------------------------------
def load_aapm_npy(path: PathLike, units: str = "unit", size: Optional[int] = None,
                  slices: Optional[Sequence[int]] = None) -> list[Sample]:
    """Read an AAPM-style CT ``.npy``: one slice ``[H, W]`` or a stack ``[S, H, W]`` (real).

    ``units="unit"``: values already in [0, 1] (DDS AAPM convention); ``units="hu"``: values in
    HU, mapped with :func:`hu_to_unit` (a mismatch is refused: module docstring). ``size``:
    optional area resampling to ``size × size``; ``slices``: indices of a stack (default all).
    """
    path = require_file(Path(path), "AAPM .npy file")
    check_units(units)
    size = check_size(size)
    a = load_npy(path)
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{path}: CT data must be real, got dtype {a.dtype}")
    if a.ndim == 2:
        a = a[None]
    elif a.ndim != 3:
        raise ValueError(f"{path}: expected a slice [H, W] or a stack [S, H, W], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{path}: empty stack")
    idx = list(range(a.shape[0])) if slices is None else [int(s) for s in slices]
    bad = [s for s in idx if not 0 <= s < a.shape[0]]
    if bad:
        raise ValueError(f"{path}: slice indices {bad} out of range [0, {a.shape[0]}) (--config.data.slices)")
    out = []
    for s in idx:
        x = ct_to_unit(a[s], f"{path} slice {s}", units, size)
        out.append(Sample(f"{path.stem}/{s:03d}", torch.from_numpy(x), None, "CT",
                          {"file": str(path), "slice": s, "units": units, "stored_shape": tuple(a.shape[1:])}))
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
    ``modality`` overrides the DICOM tag; ``size`` resamples to ``size × size`` (CT: area
    averaging of the HU image; MR: k-space resampling of the complex image, module docstring).
    """
    import pydicom

    size = check_size(size)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DICOM file or folder not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise ValueError(f"folder {path} holds no files (expected DICOM files, or the MRI/ or CT/ "
                             "sub-folder of a DDS sample folder)")
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
        raise ValueError(f"no DICOM images found in {path} (and no MRI/ or CT/ sub-folder of a DDS sample "
                         "folder); --data takes a DDS folder, a fastMRI .h5, an AAPM .npy or DICOM files")
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
        meta = {"file": str(f), "slope": slope, "intercept": intercept, "dicom_modality": mod,
                "stored_shape": tuple(img.shape)}
        if mod == "CT":
            if size is not None:
                img = resize_area(img, size)
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
            xt = torch.from_numpy(x)
            if size is not None:
                xt = kspace_resample(xt, size).to(torch.complex64)
            out.append(Sample(f"{f.stem}", xt, None, "MRI", meta))
    return out


# ----------------------------------------------------------------------------------------------
# Dispatcher
# ----------------------------------------------------------------------------------------------
#: what each kind of data holds, for the messages of :func:`data_kind`
_KIND_TEXT = {"fastmri": "a fastMRI k-space file (MRI)", "npy": "an AAPM-style CT .npy"}
_WHAT_TO_PASS = {"MRI": "a DDS folder with MRI/<volume>/slice/*.npy, a fastMRI .h5 or MR DICOM",
                 "CT": "a DDS folder with CT/<volume>/*.npy, an AAPM .npy or CT DICOM"}


def data_kind(path: PathLike, modality: str) -> str:
    """Which reader ``path`` needs for ``modality`` (``"MRI"`` | ``"CT"``): ``"dds"`` (a folder with
    a ``<modality>/`` sub-folder), ``"fastmri"`` (``.h5``), ``"npy"`` (AAPM CT), ``"dicom"`` (any
    other file or folder).  A path that cannot hold data of ``modality`` — a DDS folder without its
    sub-folder, an ``.h5`` for CT, a ``.npy`` for MRI, an empty folder — raises ``ValueError``
    saying what to pass instead; a missing path ``FileNotFoundError``."""
    p, modality = Path(path), modality.upper()
    if not p.exists():
        raise FileNotFoundError(f"data path {p} does not exist; pass --data=<folder or file> "
                                "(the shipped samples are in indist_samples/)")
    if p.is_dir():
        if (p / modality).is_dir():
            return "dds"
        others = [m for m in ("MRI", "CT") if m != modality and (p / m).is_dir()]
        if others:
            raise ValueError(f"{p} is a DDS sample folder with {others[0]}/ but no {modality}/ sub-folder, so it "
                             f"holds no {modality} data; pass {_WHAT_TO_PASS[modality]} (--data), or a "
                             f"{others[0]} degradation (--deg)")
        if not any(p.iterdir()):
            raise ValueError(f"{p} is an empty folder; pass {_WHAT_TO_PASS[modality]} (--data)")
        return "dicom"
    kind = {".h5": "fastmri", ".hdf5": "fastmri", ".npy": "npy"}.get(p.suffix.lower(), "dicom")
    wrong = {"fastmri": "CT", "npy": "MRI"}.get(kind)
    if wrong == modality:
        raise ValueError(f"{p} is {_KIND_TEXT[kind]}, but the {modality} degradation needs {modality} data; "
                         f"pass {_WHAT_TO_PASS[modality]} (--data), or a degradation of the data's modality (--deg)")
    return kind


def load_dataset(path: PathLike, modality: str, **kwargs) -> list[Sample]:
    """Read the ``modality`` slices at ``path`` with the reader :func:`data_kind` picks (``kwargs``
    go to it: :func:`load_dds_folder`, :func:`load_fastmri_h5`, :func:`load_aapm_npy`,
    :func:`load_dicom`); DICOM images of the other modality raise ``ValueError``."""
    p, modality = Path(path), modality.upper()
    kind = data_kind(p, modality)
    if kind == "dds":
        return load_dds_folder(p, modality, **kwargs)
    if kind == "fastmri":
        return load_fastmri_h5(p, **kwargs)
    if kind == "npy":
        return load_aapm_npy(p, **kwargs)
    samples = load_dicom(p, **kwargs)
    wrong = sorted({s.meta.get("file", s.name) for s in samples if s.modality != modality})
    if wrong:
        other = "CT" if modality == "MRI" else "MR"
        raise ValueError(f"{wrong[0]}{f' (and {len(wrong) - 1} more)' if len(wrong) > 1 else ''} is {other} DICOM, "
                         f"but the {modality} degradation needs {modality} data; pass {_WHAT_TO_PASS[modality]} "
                         "(--data), or a degradation of the data's modality (--deg)")
    return samples
