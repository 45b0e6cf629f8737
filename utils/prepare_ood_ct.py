"""Out-of-distribution CT test slices from another patient and scanner than the training scan:
the top slice of a breast radiotherapy planning CT in the dicompyler-core sdist's test data,
read from the sdist (nothing is installed), checked against the images reserved for independent
evaluation, and cut to several fields of view.  Used by :mod:`utils.prepare_broad` for
``ood_samples/CT/breast_rt``; test data only, never training data.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np

from utils.prepare_common import HU_MIN, hu_to_unit, pad_to_square, resize_to, sha256

#: Breast radiotherapy planning CT slice (OOD test only), read from the dicompyler-core sdist
DICOMPYLER_VERSION = "0.5.6"
DICOMPYLER_SDIST = f"data/sources/dicompyler-core-{DICOMPYLER_VERSION}.tar.gz"
RT_CT_MEMBER = f"dicompyler-core-{DICOMPYLER_VERSION}/tests/testdata/example_data/ct.0.dcm"
RT_CT_ZOOMS = (1, 2, 3)                # full field of view, crops of 1/2 and 1/3 of the side
BODY_HU = -500.0                       # body mask threshold for centring the crops
#: licences of sources used by the OOD test folder only (listed in its manifest alone)
OOD_LICENCES = {
    "dicompyler-core": ("BSD-3-clause (dicompyler-core 0.5.6 sdist, LICENSE: 'Copyright (c) "
                        "2009-2023 Aditya Panchal and dicompyler-core contributors'; PKG-INFO "
                        "License: BSD License; the test data ship inside the sdist under it)"),
}


def check_not_reserved(raw: bytes, ds, data_dir: str | Path | None = None) -> dict:
    """Raise if a DICOM file is one of the images reserved for independent evaluation: pydicom's
    test files (same bytes, or same Study / Series / SOP Instance UID) or the pydicom-data files
    (sha256 listed in pydicom's ``data/hashes.json``).  ``data_dir``: pydicom's ``data`` folder
    (default: the installed pydicom's).  Returns what was compared."""
    import pydicom

    data_dir = Path(pydicom.__file__).parent / "data" if data_dir is None else Path(data_dir)
    digest = hashlib.sha256(raw).hexdigest()
    with open(data_dir / "hashes.json") as f:
        external = json.load(f)
    if digest in external.values():
        raise ValueError(f"source is a pydicom-data file (sha256 {digest}), reserved for evaluation")
    uids = {str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if k in ds}
    files = [p for p in sorted((data_dir / "test_files").rglob("*")) if p.is_file()]
    for p in files:
        if hashlib.sha256(p.read_bytes()).hexdigest() == digest:
            raise ValueError(f"source is pydicom's test file {p.name}, reserved for evaluation")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # forced reads of deliberately odd test files
                t = pydicom.dcmread(p, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not a DICOM file (dumps, json, icc)
            continue
        shared = uids & {str(t.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                         if k in t}
        if shared:
            raise ValueError(f"source shares UIDs {sorted(shared)} with pydicom's test file {p.name}")
    return {"pydicom": pydicom.__version__, "test_files_compared": len(files),
            "pydicom_data_hashes_compared": len(external)}


def read_rt_ct(sdist: str = DICOMPYLER_SDIST):
    """The breast radiotherapy planning CT slice of dicompyler-core's test data, read from the
    sdist (nothing is installed): (HU float64 [512, 512], pydicom dataset, provenance dict)."""
    import io
    import tarfile

    import pydicom

    if not os.path.exists(sdist):
        raise FileNotFoundError(
            f"{sdist} not found; get it with `.venv/bin/python -m pip download --no-deps --no-binary=:all: "
            f"dicompyler-core=={DICOMPYLER_VERSION} -d {os.path.dirname(sdist) or '.'}` (see `make data`)")
    with tarfile.open(sdist) as tar:
        raw = tar.extractfile(RT_CT_MEMBER).read()
    ds = pydicom.dcmread(io.BytesIO(raw))
    if ds.Modality != "CT" or "ORIGINAL" not in ds.ImageType:
        raise ValueError(f"{RT_CT_MEMBER}: expected an original CT image, got {ds.Modality} {list(ds.ImageType)}")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    prov = {"sdist_sha256": sha256(sdist), "sha256_source": hashlib.sha256(raw).hexdigest(),
            "reserved_check": check_not_reserved(raw, ds),
            "dicom": {"ImageType": list(ds.ImageType), "KVP": float(ds.KVP), "Rows": int(ds.Rows),
                      "Columns": int(ds.Columns), "PixelSpacing_mm": [float(v) for v in ds.PixelSpacing],
                      "SliceThickness_mm": float(ds.SliceThickness), "PatientPosition": str(ds.PatientPosition),
                      "RescaleSlope": float(ds.RescaleSlope), "RescaleIntercept": float(ds.RescaleIntercept)},
            "hu_range": [float(hu.min()), float(hu.max())]}
    return hu, ds, prov


def body_crop(hu: np.ndarray, zoom: float, threshold: float = BODY_HU) -> tuple[int, int, int]:
    """(top, left, side) of the square crop of side ``round(n / zoom)`` of a square HU image
    centred on the bounding box of its largest connected region above ``threshold`` HU (the
    body; couch and small objects are smaller), moved inside the image where it would cross it."""
    from scipy import ndimage

    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"body_crop needs a square 2-D image, got shape {hu.shape} (pad it first)")
    if not zoom >= 1:
        raise ValueError(f"zoom must be >= 1 (1 = the full field of view), got {zoom}")
    n = hu.shape[0]
    side = int(round(n / zoom))
    lab, num = ndimage.label(hu > threshold)
    if num == 0:
        raise ValueError(f"no pixel above {threshold} HU: not a CT slice of a body")
    big = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    rows, cols = ndimage.find_objects(lab)[big - 1]
    cy, cx = (rows.start + rows.stop) / 2, (cols.start + cols.stop) / 2
    top = int(np.clip(round(cy - side / 2), 0, n - side))
    left = int(np.clip(round(cx - side / 2), 0, n - side))
    return top, left, side


def ct_view(hu: np.ndarray, zoom: float) -> tuple[np.ndarray, list[int]]:
    """A 2-D HU image as a ``RES²`` float32 slice in [0, 1]: padded with air to a square, the
    :func:`body_crop` for ``zoom`` (1 = the full field of view), area-resampled (bicubic if the
    crop is smaller than ``RES``), then the HU window of :func:`utils.data.hu_to_unit` — the
    processing of the Cranium slices.  Returns (slice, [top, left, side] of the crop)."""
    sq = pad_to_square(np.maximum(hu, HU_MIN) - HU_MIN) + HU_MIN     # air (HU_MIN) in the padding
    top, left, side = body_crop(sq, zoom)
    x = resize_to(sq[top:top + side, left:left + side] - HU_MIN) + HU_MIN
    return hu_to_unit(x).astype(np.float32), [top, left, side]
