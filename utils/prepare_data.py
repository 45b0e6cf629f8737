"""Extract real CT / MR training and held-out slices from installed Debian example packages.

Usage (from the repository root)::

    .venv/bin/python -m utils.prepare_data --out data                 # data/train, data/heldout
    .venv/bin/python -m utils.prepare_data --out data --samples indist_samples   # + shipped samples
    .venv/bin/python -m utils.prepare_data --out data --samples indist_samples \
        --val val_samples --ood ood_samples                          # + broad set, val, OOD (make data)

Output folder (``--out``, default ``data``; not committed, see .gitignore)::

    data/train/CT/cranium_<k:03d>.npy           float32 [128,128] in [0,1]
    data/train/MRI/colin27_<k:03d>.npy          complex64 [128,128], |x| <= 1
    data/train/MRI/itk_<name>.npy               complex64 [128,128]  (ITK example MR slices)
    data/train/MRI/kmeanst1_<k:03d>.npy         complex64 [128,128]  (ITK example T1 volume)
    data/heldout/CT/cranium/<k:03d>.npy         DDS layout, float32 [128,128]
    data/heldout/MRI/colin27/slice/<k:03d>.npy  DDS layout, complex64 [128,128]
    data/heldout/MRI/colin27/mps/<k:03d>.npy    complex64 [8,128,128] = synthetic_coil_maps(8,128,128,seed=k)
    data/manifest.json                          sources, licences, indices, window, resolution

``<k>`` is always the slice index in the source volume (axis documented below).

Sources and licences (``/usr/share/doc/<pkg>/copyright``)
---------------------------------------------------------
* **CT** — ``invesalius-examples``: ``/usr/share/doc/invesalius-examples/examples/Cranium.inv3``
  (InVesalius project = tar; ``main.plist`` gives ``matrix.dat`` int16, shape 108×256×256,
  spacing 0.957×0.957 mm in-plane, 1.5 mm slices; byte order not stated, little-endian is the one
  whose range matches the plist ``scalar_range`` [-1024, 3033]; it gives [-1024, 2986] HU).
  Licence: GPL-2 (Debian copyright, ``Files: *``).  Axis 0 = axial slice index (0 = skull base /
  jaw, 107 = vertex).
* **MRI** — ``mricron-data``: ``/usr/share/mricron/templates/ch2.nii.gz`` (Colin27 single-subject
  T1, Holmes et al. 1998, MNI; 181×217×181, 1 mm, RAS, uint8 0..254).  Licence: BSD-3-clause
  (Debian copyright of mricron-data, ``Files: *``).  Axial slice k = ``vol[:, :, k]`` shown as
  ``flipud(vol[:, :, k].T)`` (anterior up).  ``ch2bet.nii.gz`` (brain-extracted) is used only to
  decide which slices contain enough brain (brain mask fraction ≥ 0.10 of the slice).
* **MRI (extra training only)** — ``insighttoolkit5-examples`` (``.../examples/Data``):
  BrainProtonDensitySlice.png, BrainT1Slice.png, BrainProtonDensity3Slices.mha (3 slices),
  itkBrainSliceComplex.mha (complex; its own phase is kept), BrainMidSagittalSlice.png,
  FatMRISlice.png, and the axial slices of KmeansTest_T1UCharRaw.nii.gz (128×128×62 T1 of
  another subject).  Licence: Apache-2.0 (ITK, ``Files: *``; the Debian binary package as a whole
  is GPL-2+ because of FFTW).  The geometric variants (Shifted/Rotated/BSplined/Border20/256x256)
  are duplicates of the same slice and are not used.
  **Leakage guard**: the BrainWeb-derived ITK slices (PD/T1/3Slices/Complex) are simulated from
  the *same* Colin27 anatomy.  Each one is matched to its Colin27 axial index (best correlation of
  head masks, recorded in the manifest) and dropped if it lies within the held-out block ± gap.

Processing
----------
* Resolution 128×128: area (box-average) resampling (``torch.nn.functional.interpolate(mode=
  "area")``), after zero-padding non-square slices to a square (centred).
* **CT window** (same as ``utils.data.hu_to_unit``): μ = clip((HU + 1000) / 3000, 0, 1), i.e. the
  HU window [-1000, 2000] mapped linearly to [0, 1] (air 0, water 1/3, soft tissue ≈ 0.34–0.36,
  cancellous bone ≈ 0.45–0.6, cortical bone → 1).  The window is applied after resampling the HU
  image.  Slices with < 15 % of pixels above -850 HU are skipped.
* **MR magnitude**: divided by the slice's 99.5th percentile of magnitude and clipped to [0, 1]
  (``|x| ≤ 1``); slices of the ITK volume with < 10 % pixels above 5 % of the volume max skipped.
* **MR phase**: x = |x| · exp(iφ) with φ = ``utils.synthetic.smooth_random_phase(128, 128,
  seed)`` (random polynomial of degree 3), seed = 1000 · source_id + k (source ids in the
  manifest) — except itkBrainSliceComplex, whose phase is kept.

Held-out split
--------------
One contiguous block per volume, never written to ``train``; training slices keep a gap of at
least ``GAP = 5`` slices on each side of the block (``|k_train - k_heldout| > GAP``):

* CT Cranium: held-out slices 48..59 (12), training excludes 43..64.
* MRI Colin27: held-out slices 60..71 (12), training excludes 55..76.

The shipped samples (``--samples indist_samples``) are every other held-out slice (6 per
modality): ``CT/cranium/<k:03d>.npy`` k ∈ {48,50,..,58} and ``MRI/colin27/{slice,mps}/<k:03d>.npy``
k ∈ {60,62,..,70}; ``mps`` = ``physics.coils.synthetic_coil_maps(8, 128, 128, seed=k)``; plus
``indist_samples/manifest.json`` (``data/manifest.json`` without the per-slice list of the ITK
T1 volume); ``indist_samples/README.md`` is hand-written and describes the same facts.

Result of the current version: 79 CT training slices (0–42, 65–100; 101–107 skipped), 163 MRI
training slices (100 Colin27: 21–54, 77–142; 8 ITK 2-D slices; 55 ITK T1-volume slices),
12 + 12 held-out slices.

Broader set, validation and OOD samples (``--broad``, ``--val DIR``, ``--ood DIR``)
------------------------------------------------------------------------------------
:func:`prepare_broad` (needs the output of :func:`prepare`, Debian ``dicom3tools`` and the
nilearn wheel in ``data/sources``, see ``make data``) writes::

    data/train_broad/CT/cranium_<k:03d>.npy     45 Cranium slices: 17–42, 65–83
    data/train_broad/MRI/*.npy                  the 163 slices of train/MRI + 133 MNI152 2009a slices
    data/manifest_broad.json
    <val>/, <ood>/                              DDS folders (64²) + manifest.json

* CT: the Cranium scan is the only real CT; besides the test block 48–59 the broad prior holds
  out the jaw/teeth/maxilla region 0–11 (OOD test) and the vertex 89–100 (validation), each with
  a gap of ``GAP`` slices.  Validation also gets held-out slices 49, 53, 57.
* MRI training adds the MNI ICBM152 2009a T1 template (nilearn wheel, BSD-3-Clause package;
  axial every 2nd slice, coronal and sagittal every 4th).  Validation: Colin27 held-out slices
  61, 65, 69 (synthetic maps) and a held-out subject (nibabel ``example4d.nii.gz`` EPI, ESPIRiT
  maps).  OOD test: Siemens PASL mosaic (dicom3tools ``0051.dcm``), sagittal head MR (matplotlib
  ``s1045.ima.gz``), rat thorax MR (ITK ``RatLungSlice1.mha``), low-resolution T1 (nibabel
  ``anatomical.nii``), all with ESPIRiT maps estimated from simulated 8-coil k-space
  (:func:`espirit_from_image`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np

from utils.data import HU_MAX, HU_MIN, hu_to_unit  # the single definition of the CT window
from utils.data import resize_area as _resize_area

# ----------------------------------------------------------------------------------------------
# Constants (the documented contract; tests read them back from the manifest)
# ----------------------------------------------------------------------------------------------
RES = 128
GAP = 5
MR_PERCENTILE = 99.5
NUM_COILS = 8

CT_PATH = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"
COLIN_PATH = "/usr/share/mricron/templates/ch2.nii.gz"
COLIN_BET_PATH = "/usr/share/mricron/templates/ch2bet.nii.gz"
ITK_DIR = "/usr/share/doc/insighttoolkit5-examples/examples/Data"

CT_HELDOUT = list(range(48, 60))
MR_HELDOUT = list(range(60, 72))
CT_SAMPLES = CT_HELDOUT[::2]
MR_SAMPLES = MR_HELDOUT[::2]

LICENCES = {
    "invesalius-examples": "GPL-2 (Files: *; /usr/share/doc/invesalius-examples/copyright)",
    "mricron-data": "BSD-3-clause (Files: *, Copyright 2006-2010 Chris Rorden; "
                    "/usr/share/doc/mricron-data/copyright); Colin27 template: Holmes et al. 1998, MNI",
    "insighttoolkit5-examples": "Apache-2.0 (Files: *, Insight Software Consortium; the Debian "
                                "binary package as a whole is GPL-2+ because of FFTW; "
                                "/usr/share/doc/insighttoolkit5-examples/copyright)",
}

SOURCE_IDS = {"colin27": 1, "itk_png": 2, "itk_3slices": 3, "kmeanst1": 4}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D image (centred) to a square of side max(H, W)."""
    H, W = img.shape
    n = max(H, W)
    top, left = (n - H) // 2, (n - W) // 2
    out = np.zeros((n, n), dtype=img.dtype)
    out[top:top + H, left:left + W] = img
    return out


def resize_area(img: np.ndarray, res: int = RES) -> np.ndarray:
    """Area (box-average) resampling of a real 2-D image to ``res × res`` (float64)."""
    return _resize_area(img, res)


def normalise_magnitude(mag: np.ndarray) -> np.ndarray:
    """Divide by the 99.5th percentile of the magnitude and clip to [0, 1]."""
    p = float(np.percentile(mag, MR_PERCENTILE))
    if p <= 0:
        raise ValueError("slice is empty (99.5th percentile of the magnitude is 0)")
    return np.clip(mag / p, 0.0, 1.0)


def make_complex(mag: np.ndarray, seed: int) -> np.ndarray:
    from utils.synthetic import smooth_random_phase

    phase = smooth_random_phase(mag.shape[0], mag.shape[1], seed=seed)
    return (mag * np.exp(1j * phase)).astype(np.complex64)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def split_indices(candidates, heldout, gap=GAP):
    """Training indices = candidates farther than ``gap`` from every held-out index."""
    lo, hi = min(heldout), max(heldout)
    if list(heldout) != list(range(lo, hi + 1)):
        raise ValueError("held-out block must be contiguous")
    return [k for k in candidates if k < lo - gap or k > hi + gap]


def check_split(train, heldout, gap=GAP):
    """Raise if the split violates the contract (overlap, neighbours within ``gap``)."""
    heldout = sorted(heldout)
    if heldout != list(range(heldout[0], heldout[-1] + 1)):
        raise ValueError("held-out indices are not contiguous")
    bad = [k for k in train if heldout[0] - gap <= k <= heldout[-1] + gap]
    if bad:
        raise ValueError(f"training indices {bad} overlap / neighbour the held-out block")


def split_indices_blocks(candidates, blocks, gap=GAP):
    """Training indices = candidates farther than ``gap`` from every index of every held-out
    block (each block contiguous, checked by :func:`check_split`)."""
    out = list(candidates)
    for block in blocks:
        out = split_indices(out, list(block), gap)
    for block in blocks:
        check_split(out, list(block), gap)
    return out


# ----------------------------------------------------------------------------------------------
# Readers of the raw sources
# ----------------------------------------------------------------------------------------------
def load_cranium(path: str = CT_PATH):
    """Return (HU volume int16 [108,256,256], plist metadata dict)."""
    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        meta = plistlib.load(tar.extractfile(members["main.plist"]))
        raw = tar.extractfile(members[meta["matrix"]["filename"]]).read()
    shape = tuple(meta["matrix"]["shape"])
    lo, hi = meta["scalar_range"]
    vol = None
    for order in ("<", ">"):
        v = np.frombuffer(raw, dtype=np.dtype(meta["matrix"]["dtype"]).newbyteorder(order)).reshape(shape)
        if lo <= v.min() and v.max() <= hi:
            vol = v.astype(np.int16)
            break
    if vol is None:
        raise ValueError("could not determine the byte order of matrix.dat")
    return vol, meta


def read_mha(path: str) -> np.ndarray:
    """Minimal MetaImage reader (LOCAL or external raw, uncompressed)."""
    with open(path, "rb") as f:
        data = f.read()
    header, offset = {}, 0
    for line in data.split(b"\n"):
        offset += len(line) + 1
        key, _, val = line.decode("latin-1").partition("=")
        header[key.strip()] = val.strip()
        if key.strip() == "ElementDataFile":
            break
    dims = [int(d) for d in header["DimSize"].split()]
    dtype = {"MET_UCHAR": np.uint8, "MET_FLOAT": np.float32, "MET_SHORT": np.int16,
             "MET_USHORT": np.uint16}[header["ElementType"]]
    msb = header.get("ElementByteOrderMSB", header.get("BinaryDataByteOrderMSB", "False")) == "True"
    dt = np.dtype(dtype).newbyteorder(">" if msb else "<")
    nch = int(header.get("ElementNumberOfChannels", 1))
    if header["ElementDataFile"] == "LOCAL":
        buf = data[offset:]
    else:
        with open(os.path.join(os.path.dirname(path), header["ElementDataFile"]), "rb") as f:
            buf = f.read()
    n = int(np.prod(dims)) * nch
    arr = np.frombuffer(buf, dtype=dt, count=n)
    shape = tuple(reversed(dims)) + ((nch,) if nch > 1 else ())
    return arr.reshape(shape)


def colin_slice(vol: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k of the RAS Colin27 volume, anterior up: ``flipud(vol[:, :, k].T)``."""
    return np.flipud(vol[:, :, k].T)


def match_colin_index(img: np.ndarray, colin: np.ndarray) -> tuple[int, float]:
    """Colin27 axial index whose head mask best matches a BrainWeb-derived 217×181 slice."""
    a = img > 0.08 * img.max()
    best = (-1, -2.0)
    for k in range(colin.shape[2]):
        s = colin[:, :, k].T > 20  # BrainWeb PNG orientation = vol[:, :, k].T
        if s.shape != a.shape or s.std() == 0:
            continue
        c = float(np.corrcoef(a.ravel(), s.ravel())[0, 1])
        if c > best[1]:
            best = (k, c)
    return best


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def prepare(out: str, samples: str | None = None, log=print,
            command: str = "python -m utils.prepare_data --out data --samples indist_samples",
            sample_size: int = 64) -> dict:
    import nibabel as nib

    out = Path(out)
    (out / "train" / "CT").mkdir(parents=True, exist_ok=True)
    (out / "train" / "MRI").mkdir(parents=True, exist_ok=True)
    heldout_ct = out / "heldout" / "CT" / "cranium"
    heldout_mr = out / "heldout" / "MRI" / "colin27"
    heldout_ct.mkdir(parents=True, exist_ok=True)
    (heldout_mr / "slice").mkdir(parents=True, exist_ok=True)

    manifest = {
        "command": command,
        "resolution": [RES, RES],
        "resampling": "zero-pad to square (centred), then area/box average to 128x128",
        "gap": GAP,
        "ct_window": {"hu_min": HU_MIN, "hu_max": HU_MAX,
                      "formula": "clip((HU + 1000) / 3000, 0, 1)",
                      "applied": "after area-resampling the HU slice"},
        "mr_normalisation": f"magnitude / percentile(magnitude, {MR_PERCENTILE}), clipped to [0, 1]",
        "mr_phase": "smooth_random_phase(128, 128, seed=1000*source_id + k) (degree-3 random "
                    "polynomial), except itkBrainSliceComplex (own phase)",
        "source_ids": SOURCE_IDS,
        "licences": LICENCES,
        "volumes": {},
        "extra_training": [],
    }

    # ---------------- CT ----------------
    vol, meta = load_cranium()
    ct_candidates = []
    for k in range(vol.shape[0]):
        if (vol[k] > -850).mean() >= 0.15:
            ct_candidates.append(k)
    ct_train = split_indices(ct_candidates, CT_HELDOUT)
    check_split(ct_train, CT_HELDOUT)
    for k in ct_candidates:
        mu = hu_to_unit(resize_area(vol[k].astype(np.float64))).astype(np.float32)
        if k in ct_train:
            np.save(out / "train" / "CT" / f"cranium_{k:03d}.npy", mu)
        elif k in CT_HELDOUT:
            np.save(heldout_ct / f"{k:03d}.npy", mu)
    manifest["volumes"]["CT/cranium"] = {
        "source": CT_PATH, "package": "invesalius-examples", "licence": LICENCES["invesalius-examples"],
        "sha256": sha256(CT_PATH), "name_in_file": meta.get("name"),
        "shape": list(vol.shape), "dtype": "int16 (little-endian)",
        "spacing_mm": [float(s) for s in meta["spacing"]],
        "pixel_mm_after_resize": float(meta["spacing"][0]) * vol.shape[1] / RES,
        "slice_axis": "axis 0 (axial; 0 = skull base/jaw)",
        "candidate_slices": ct_candidates,
        "skipped_slices": [k for k in range(vol.shape[0]) if k not in ct_candidates],
        "train_slices": ct_train,
        "heldout_slices": CT_HELDOUT,
        "excluded_gap_slices": [k for k in ct_candidates if k not in ct_train and k not in CT_HELDOUT],
        "sample_slices": CT_SAMPLES,
        "hu_range": [int(vol.min()), int(vol.max())],
    }
    log(f"CT: {len(ct_train)} training slices, {len(CT_HELDOUT)} held-out ({CT_HELDOUT[0]}..{CT_HELDOUT[-1]})")

    # ---------------- MRI: Colin27 ----------------
    colin = np.asarray(nib.load(COLIN_PATH).dataobj).astype(np.float64)
    bet = np.asarray(nib.load(COLIN_BET_PATH).dataobj)
    mr_candidates = [k for k in range(colin.shape[2]) if (bet[:, :, k] > 0).mean() >= 0.10]
    mr_train = split_indices(mr_candidates, MR_HELDOUT)
    check_split(mr_train, MR_HELDOUT)
    sid = SOURCE_IDS["colin27"]
    for k in mr_candidates:
        mag = normalise_magnitude(resize_area(pad_to_square(colin_slice(colin, k))))
        x = make_complex(mag, seed=1000 * sid + k)
        if k in mr_train:
            np.save(out / "train" / "MRI" / f"colin27_{k:03d}.npy", x)
        elif k in MR_HELDOUT:
            np.save(heldout_mr / "slice" / f"{k:03d}.npy", x)
    manifest["volumes"]["MRI/colin27"] = {
        "source": COLIN_PATH, "brain_mask_source": COLIN_BET_PATH, "package": "mricron-data",
        "licence": LICENCES["mricron-data"], "sha256": sha256(COLIN_PATH),
        "shape": list(colin.shape), "dtype": "uint8", "spacing_mm": [1.0, 1.0, 1.0],
        "pixel_mm_after_resize": 217.0 / RES,
        "slice_axis": "axis 2 (axial, RAS), image = flipud(vol[:, :, k].T)",
        "candidate_slices": mr_candidates,
        "skipped_slices": [k for k in range(colin.shape[2]) if k not in mr_candidates],
        "train_slices": mr_train,
        "heldout_slices": MR_HELDOUT,
        "excluded_gap_slices": [k for k in mr_candidates if k not in mr_train and k not in MR_HELDOUT],
        "sample_slices": MR_SAMPLES,
        "phase_seed": "1000*1 + k",
    }
    log(f"MRI Colin27: {len(mr_train)} training slices, {len(MR_HELDOUT)} held-out ({MR_HELDOUT[0]}..{MR_HELDOUT[-1]})")

    # ---------------- MRI: ITK example slices (training only) ----------------
    from skimage import io as skio

    lo, hi = MR_HELDOUT[0] - GAP, MR_HELDOUT[-1] + GAP
    extra = []

    def add_extra(name, mag2d, source, brainweb, phase=None, seed=None):
        entry = {"file": f"itk_{name}.npy", "source": source, "package": "insighttoolkit5-examples",
                 "licence": LICENCES["insighttoolkit5-examples"]}
        if brainweb:
            k, c = match_colin_index(mag2d, colin)
            entry.update(colin27_match_index=k, colin27_match_corr=round(c, 4))
            if lo <= k <= hi:
                entry["dropped"] = "matches a held-out Colin27 slice"
                extra.append(entry)
                return
        sq = resize_area(pad_to_square(mag2d.astype(np.float64)))
        scale = float(np.percentile(sq, MR_PERCENTILE))
        mag = np.clip(sq / scale, 0, 1)
        if phase is None:
            x = make_complex(mag, seed)
            entry["phase_seed"] = seed
        else:
            ph = resize_area(pad_to_square(np.cos(phase))) + 1j * resize_area(pad_to_square(np.sin(phase)))
            x = (mag * np.exp(1j * np.angle(ph))).astype(np.complex64)
            entry["phase"] = "own (from file)"
        np.save(out / "train" / "MRI" / entry["file"], x.astype(np.complex64))
        extra.append(entry)

    pid = SOURCE_IDS["itk_png"]
    for i, (fname, bw) in enumerate([("BrainProtonDensitySlice.png", True), ("BrainT1Slice.png", True),
                                     ("BrainMidSagittalSlice.png", False), ("FatMRISlice.png", False)]):
        p = os.path.join(ITK_DIR, fname)
        if not os.path.exists(p):
            log(f"  (missing {p}, skipped)")
            continue
        a = skio.imread(p)
        if a.ndim == 3:
            a = a[..., 0]
        add_extra(Path(fname).stem, a, p, bw, seed=1000 * pid + i)
    p = os.path.join(ITK_DIR, "BrainProtonDensity3Slices.mha")
    if os.path.exists(p):
        v3 = read_mha(p)
        for j in range(v3.shape[0]):
            add_extra(f"BrainProtonDensity3Slices_{j}", v3[j], p, True,
                      seed=1000 * SOURCE_IDS["itk_3slices"] + j)
    p = os.path.join(ITK_DIR, "itkBrainSliceComplex.mha")
    if os.path.exists(p):
        c = read_mha(p).astype(np.float64)
        z = c[..., 0] + 1j * c[..., 1]
        add_extra("itkBrainSliceComplex", np.abs(z), p, True, phase=np.angle(z))
    p = os.path.join(ITK_DIR, "KmeansTest_T1UCharRaw.nii.gz")
    if os.path.exists(p):
        kv = np.asarray(nib.load(p).dataobj).astype(np.float64)
        thr = 0.05 * kv.max()
        sid4 = SOURCE_IDS["kmeanst1"]
        used = []
        for k in range(kv.shape[2]):
            s = np.flipud(kv[:, :, k].T)
            if (s > thr).mean() < 0.10:
                continue
            mag = normalise_magnitude(resize_area(pad_to_square(s)))
            np.save(out / "train" / "MRI" / f"kmeanst1_{k:03d}.npy", make_complex(mag, 1000 * sid4 + k))
            used.append(k)
        extra.append({"file": "kmeanst1_<k:03d>.npy", "source": p, "package": "insighttoolkit5-examples",
                      "licence": LICENCES["insighttoolkit5-examples"], "shape": list(kv.shape),
                      "spacing_mm": [2.0, 2.0, 3.0], "slices": used, "phase_seed": "1000*4 + k",
                      "note": "different subject (axis-2 slices, coronal-looking); slices with >= 10% of pixels above 5% of the max, training only"})
    manifest["extra_training"] = extra
    n_mr = len(list((out / "train" / "MRI").glob("*.npy")))
    n_ct = len(list((out / "train" / "CT").glob("*.npy")))
    manifest["counts"] = {"train_CT": n_ct, "train_MRI": n_mr,
                          "heldout_CT": len(CT_HELDOUT), "heldout_MRI": len(MR_HELDOUT)}
    log(f"train: {n_ct} CT, {n_mr} MRI slices")

    # ---------------- held-out coil maps and samples ----------------
    try:
        from physics.coils import synthetic_coil_maps
    except ImportError as exc:  # pragma: no cover - depends on another module
        synthetic_coil_maps = None
        log(f"WARNING: physics.coils not importable ({exc}); no mps written, no samples")
    if synthetic_coil_maps is not None:
        (heldout_mr / "mps").mkdir(parents=True, exist_ok=True)
        for k in MR_HELDOUT:
            mps = np.asarray(synthetic_coil_maps(NUM_COILS, RES, RES, seed=k)).astype(np.complex64)
            np.save(heldout_mr / "mps" / f"{k:03d}.npy", mps)
        manifest["coil_maps"] = f"physics.coils.synthetic_coil_maps({NUM_COILS}, {RES}, {RES}, seed=k)"

    with open(out / "manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)

    if samples is not None:
        if synthetic_coil_maps is None:
            raise RuntimeError("physics.coils.synthetic_coil_maps is needed for the samples' mps")
        write_samples(out, Path(samples), manifest, log, size=sample_size)
    return manifest


def write_samples(data: Path, samples: Path, manifest: dict, log=print, size: int = RES) -> None:
    """Write every other held-out slice into the shipped DDS-layout sample folder, area-resampled
    from ``RES`` to ``size`` (real and imaginary parts separately); the coil maps are made anew at
    ``size`` with ``synthetic_coil_maps(NUM_COILS, size, size, seed=k)``."""
    from physics.coils import synthetic_coil_maps

    (samples / "CT" / "cranium").mkdir(parents=True, exist_ok=True)
    (samples / "MRI" / "colin27" / "slice").mkdir(parents=True, exist_ok=True)
    (samples / "MRI" / "colin27" / "mps").mkdir(parents=True, exist_ok=True)

    def resample(a: np.ndarray) -> np.ndarray:
        if size == a.shape[-1]:
            return a
        if np.iscomplexobj(a):
            return (resize_area(a.real, size) + 1j * resize_area(a.imag, size)).astype(a.dtype)
        return resize_area(a, size).astype(a.dtype)

    for k in CT_SAMPLES:
        a = np.load(data / "heldout" / "CT" / "cranium" / f"{k:03d}.npy")
        np.save(samples / "CT" / "cranium" / f"{k:03d}.npy", resample(a))
    for k in MR_SAMPLES:
        a = np.load(data / "heldout" / "MRI" / "colin27" / "slice" / f"{k:03d}.npy")
        np.save(samples / "MRI" / "colin27" / "slice" / f"{k:03d}.npy", resample(a))
        mps = np.asarray(synthetic_coil_maps(NUM_COILS, size, size, seed=k)).astype(np.complex64)
        np.save(samples / "MRI" / "colin27" / "mps" / f"{k:03d}.npy", mps)
    small = {key: manifest[key] for key in ("command", "resolution", "resampling", "gap", "ct_window",
                                            "mr_normalisation", "mr_phase", "source_ids", "licences",
                                            "coil_maps", "counts")}
    small["volumes"] = manifest["volumes"]
    small["sample_resolution"] = [size, size]
    small["coil_maps"] = f"physics.coils.synthetic_coil_maps({NUM_COILS}, {size}, {size}, seed=k)"
    small["extra_training"] = [{k: v for k, v in e.items() if k != "slices"}
                               for e in manifest["extra_training"]]
    with open(samples / "manifest.json", "w") as f:
        json.dump(small, f, indent=1)
    log(f"samples: {len(CT_SAMPLES)} CT, {len(MR_SAMPLES)} MRI -> {samples}")


# ----------------------------------------------------------------------------------------------
# Broader training set, validation and out-of-distribution test samples
# ----------------------------------------------------------------------------------------------
DICOM3TOOLS_PATH = "/usr/share/doc/dicom3tools/examples/0051.dcm"
NILEARN_VERSION = "0.14.1"
NILEARN_WHEEL = f"data/sources/nilearn-{NILEARN_VERSION}-py3-none-any.whl"
MNI_MEMBER = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

#: Cranium hold-outs of the broad CT prior (every other Cranium slice is a training slice
#: unless it is within GAP of one of these blocks or of CT_HELDOUT).
CT_OOD_BLOCK = list(range(0, 12))      # jaw, teeth, maxilla: anatomy the broad prior never sees
CT_VAL_BLOCK = list(range(89, 101))    # vertex: second held-out region (validation)
CT_VAL_ID = [49, 53, 57]               # held-out slices of the indist block, not in indist_samples
CT_VAL_REGION = [90, 94, 98]
CT_OOD = [0, 2, 4, 6, 8, 10]
MR_VAL_ID = [61, 65, 69]               # Colin27 held-out slices, not in indist_samples
NIB_EPI_SLICES = [8, 12, 16]           # nibabel example4d.nii.gz (volume 0), validation subject
MOSAIC_TILES = [6, 9, 12]              # dicom3tools 0051.dcm (Siemens PASL mosaic), OOD
MNI_STEP_AXIAL, MNI_STEP_OTHER = 2, 4

BROAD_LICENCES = {
    "nilearn": ("BSD-3-Clause (nilearn wheel, LICENSE: 'Copyright (c) The nilearn developers'); the "
                "ICBM 2009a template inside it is (c) McConnell Brain Imaging Centre, MNI, "
                "redistributed in the wheel; nilearn's own description lists its licence as 'unknown'"),
    "dicom3tools": "BSD-3-clause (Files: *, David A. Clunie / PixelMed; /usr/share/doc/dicom3tools/copyright)",
    "nibabel": "MIT (nibabel wheel, nibabel/tests/data; COPYING of nibabel)",
    "matplotlib": "Matplotlib license (PSF-style, BSD-compatible; matplotlib wheel, mpl-data/sample_data)",
}
BROAD_SOURCE_IDS = {"mni152_axial": 5, "mni152_coronal": 6, "mni152_sagittal": 7,
                    "nib_epi": 11, "d3_asl": 12, "mpl_s1045": 13, "itk_ratlung": 14, "nib_anat": 15}


def resize_to(img: np.ndarray, res: int = RES) -> np.ndarray:
    """Zero-pad a real 2-D image to a square, then area-average (down) or bicubic (up) to
    ``res × res``, float64, negatives from the bicubic overshoot clipped to 0."""
    import torch
    import torch.nn.functional as F

    sq = pad_to_square(np.asarray(img, dtype=np.float64))
    if sq.shape[0] >= res:
        return resize_area(sq, res)
    t = torch.as_tensor(sq)[None, None]
    return np.clip(F.interpolate(t, size=(res, res), mode="bicubic", align_corners=False)[0, 0].numpy(), 0, None)


def mr_from_magnitude(mag2d: np.ndarray, seed: int) -> np.ndarray:
    """Real MR magnitude → complex64 ``RES²`` slice: pad, resample, /99.5th percentile, clip,
    smooth random phase (the convention of every MR slice of this script)."""
    return make_complex(normalise_magnitude(resize_to(mag2d)), seed)


def downsample(a: np.ndarray, size: int) -> np.ndarray:
    """Area-resample a real or complex (real and imaginary parts separately) slice to ``size``."""
    if a.shape[-1] == size:
        return a
    if np.iscomplexobj(a):
        return (resize_area(a.real, size) + 1j * resize_area(a.imag, size)).astype(a.dtype)
    return resize_area(a, size).astype(a.dtype)


def espirit_from_image(x: np.ndarray, seed: int, num_coils: int = NUM_COILS,
                       calib_width: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Realistic coil maps for a complex slice ``x [H, W]``: simulate ``num_coils``-coil k-space
    with ``physics.coils.synthetic_coil_maps(num_coils, H, W, seed)``, estimate the maps with
    ``physics.coils.espirit_maps`` (sigpy ESPIRiT, ``calib_width``² calibration region; maps are
    0 where the eigenvalue is below 0.95, i.e. outside the object) and return (maps ``[C, H, W]``
    complex64, x_ref = Σ_c conj(Ŝ_c)·coil_c complex64), the coil-combined image that the
    estimated maps describe (ESPIRiT maps are defined up to a per-pixel phase)."""
    import torch

    from physics.coils import espirit_maps, synthetic_coil_maps
    from physics.mri import fft2c

    H, W = x.shape
    S = synthetic_coil_maps(num_coils, H, W, seed=seed).to(torch.complex64)
    coils = S * torch.from_numpy(x.astype(np.complex64))[None]
    maps = espirit_maps(fft2c(coils), calib_width=calib_width).to(torch.complex64)
    x_ref = (maps.conj() * coils).sum(0)
    return maps.numpy(), x_ref.numpy().astype(np.complex64)


def _sha_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _site_file(module: str, rel: str) -> tuple[str, str]:
    """(absolute path, machine-independent label ``<module>==<version>:<module>/<rel>``) of a data
    file shipped inside an installed Python package."""
    import importlib
    from importlib.metadata import version

    mod = importlib.import_module(module)
    p = os.path.join(os.path.dirname(mod.__file__), rel)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{p} not found (installed {module} lacks its data file)")
    return p, f"{module}=={version(module)}:{module}/{rel}"


def _read_nilearn_mni(wheel: str):
    """The MNI ICBM152 2009a T1 template from the nilearn wheel (read from the zip, nothing is
    installed): (nibabel image, sha256 of the wheel)."""
    import gzip
    import io
    import zipfile

    import nibabel as nib

    if not os.path.exists(wheel):
        raise FileNotFoundError(
            f"{wheel} not found; get it with `.venv/bin/python -m pip download --no-deps "
            f"nilearn=={NILEARN_VERSION} -d {os.path.dirname(wheel) or '.'}` (see `make data`)")
    with zipfile.ZipFile(wheel) as z:
        raw = gzip.decompress(z.read(MNI_MEMBER))
    img = nib.Nifti1Image.from_bytes(raw)
    return img, sha256(wheel)


def _write_dds(root: Path, modality: str, volume: str, name: str, x: np.ndarray,
               maps: np.ndarray | None = None) -> dict:
    d = root / modality / volume
    if modality == "CT":
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / f"{name}.npy", x.astype(np.float32))
        return {"file": f"{modality}/{volume}/{name}.npy", "sha256": _sha_array(x.astype(np.float32))}
    (d / "slice").mkdir(parents=True, exist_ok=True)
    (d / "mps").mkdir(parents=True, exist_ok=True)
    np.save(d / "slice" / f"{name}.npy", x.astype(np.complex64))
    np.save(d / "mps" / f"{name}.npy", maps.astype(np.complex64))
    return {"file": f"{modality}/{volume}/slice/{name}.npy", "sha256": _sha_array(x.astype(np.complex64)),
            "maps_file": f"{modality}/{volume}/mps/{name}.npy", "maps_sha256": _sha_array(maps.astype(np.complex64))}


def _mri_sample(x128: np.ndarray, size: int, maps_kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from physics.coils import synthetic_coil_maps

    x = downsample(x128, size)
    if maps_kind == "synthetic":
        return x, synthetic_coil_maps(NUM_COILS, size, size, seed=seed).numpy().astype(np.complex64)
    if maps_kind == "espirit":
        maps, x_ref = espirit_from_image(x, seed=seed)
        return x_ref, maps
    raise ValueError(f"maps_kind must be 'synthetic' or 'espirit', got {maps_kind!r}")


def prepare_broad(out: str, val: str | None = None, ood: str | None = None, log=print,
                  nilearn_wheel: str = NILEARN_WHEEL, sample_size: int = 64,
                  command: str = "") -> dict:
    """Training set of the ``broad_*_64`` priors (``<out>/train_broad/{CT,MRI}``, 128² like
    ``train/``) and the validation / out-of-distribution sample folders.

    * CT: the Cranium scan is the only real CT found; three regions are held out: the
      in-distribution test block (``CT_HELDOUT``), a validation region (``CT_VAL_BLOCK``, vertex)
      and an OOD region (``CT_OOD_BLOCK``, jaw/teeth/maxilla), each with ``GAP`` unused slices
      around it; the rest (45 slices) is the training set.
    * MRI: the legacy training slices (``<out>/train/MRI``, must exist: run :func:`prepare`
      first) + the MNI ICBM152 2009a T1 template (nilearn wheel; axial slices every
      ``MNI_STEP_AXIAL``, coronal and sagittal every ``MNI_STEP_OTHER``, slices with ≥ 10 % of
      pixels above 10 % of the max). Validation: Colin27 held-out slices ``MR_VAL_ID``
      (synthetic maps, as indist_samples) and a held-out subject, nibabel's ``example4d.nii.gz``
      EPI (ESPIRiT maps). OOD test: a Siemens 3 T PASL mosaic (dicom3tools ``0051.dcm``), a
      sagittal head MR (matplotlib ``s1045.ima.gz``), a rat thorax MR (ITK ``RatLungSlice1``)
      and nibabel's ``anatomical.nii`` T1 (all ESPIRiT maps).
    """
    import nibabel as nib
    import pydicom
    from skimage import io as skio  # noqa: F401  (keeps the same optional deps as prepare)

    outp = Path(out)
    if not (outp / "train" / "MRI").is_dir() or not (outp / "heldout").is_dir():
        raise FileNotFoundError(f"{outp}/train and {outp}/heldout are missing: run prepare() first "
                                "(python -m utils.prepare_data --out data)")
    tb_ct, tb_mr = outp / "train_broad" / "CT", outp / "train_broad" / "MRI"
    for d in (tb_ct, tb_mr):
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.npy"):
            f.unlink()
    man = {"command": command, "resolution": [RES, RES], "sample_resolution": [sample_size, sample_size],
           "gap": GAP, "licences": {**LICENCES, **BROAD_LICENCES}, "source_ids": BROAD_SOURCE_IDS,
           "train_broad": {}, "val": [], "ood": []}

    # ---------------- CT ----------------
    vol, meta = load_cranium()
    cands = [k for k in range(vol.shape[0]) if (vol[k] > -850).mean() >= 0.15]
    blocks = [CT_OOD_BLOCK, CT_HELDOUT, CT_VAL_BLOCK]
    ct_train = split_indices_blocks(cands, blocks)
    ct = {k: hu_to_unit(resize_area(vol[k].astype(np.float64))).astype(np.float32) for k in cands}
    for k in ct_train:
        np.save(tb_ct / f"cranium_{k:03d}.npy", ct[k])
    man["train_broad"]["CT"] = {
        "cranium": {"source": CT_PATH, "package": "invesalius-examples", "sha256": sha256(CT_PATH),
                    "train_slices": ct_train, "heldout_blocks": {"indist_test": CT_HELDOUT,
                                                                  "val_region": CT_VAL_BLOCK,
                                                                  "ood_region": CT_OOD_BLOCK},
                    "excluded_gap_slices": [k for k in cands if k not in ct_train
                                            and not any(k in b for b in blocks)]}}
    log(f"train_broad CT: {len(ct_train)} Cranium slices")

    # ---------------- MRI training ----------------
    n_legacy = 0
    for f in sorted((outp / "train" / "MRI").glob("*.npy")):
        np.save(tb_mr / f.name, np.load(f))
        n_legacy += 1
    mni_img, wheel_sha = _read_nilearn_mni(nilearn_wheel)
    mni = np.asarray(mni_img.dataobj).astype(np.float64)
    thr = 0.10 * mni.max()
    mni_used = {}
    for orient, axis, step in (("axial", 2, MNI_STEP_AXIAL), ("coronal", 1, MNI_STEP_OTHER),
                               ("sagittal", 0, MNI_STEP_OTHER)):
        sid = BROAD_SOURCE_IDS[f"mni152_{orient}"]
        used = []
        for k in range(0, mni.shape[axis], step):
            s2 = np.flipud(np.take(mni, k, axis=axis).T)   # RAS: anterior / superior up
            if (s2 > thr).mean() < 0.10:
                continue
            np.save(tb_mr / f"mni152_{orient}_{k:03d}.npy", mr_from_magnitude(s2, 1000 * sid + k))
            used.append(k)
        mni_used[orient] = used
    man["train_broad"]["MRI"] = {
        "legacy": {"files": n_legacy, "from": f"{out}/train/MRI (Colin27, ITK examples; see manifest.json)"},
        "mni152_2009a": {"source": f"{nilearn_wheel}:{MNI_MEMBER}", "package": f"nilearn=={NILEARN_VERSION} (PyPI)",
                         "licence": BROAD_LICENCES["nilearn"], "wheel_sha256": wheel_sha,
                         "shape": list(mni.shape), "spacing_mm": [1.0, 1.0, 1.0],
                         "slices": mni_used, "phase_seed": "1000*source_id + k",
                         "note": "template = non-linear average of 152 subjects (sharp but smooth-textured)"}}
    n_mr = len(list(tb_mr.glob("*.npy")))
    log(f"train_broad MRI: {n_mr} slices ({n_legacy} legacy + {n_mr - n_legacy} MNI152)")

    # ---------------- validation / OOD samples ----------------
    def sample_set(root, entries, title):
        root = Path(root)
        for sub in ("CT", "MRI"):
            if (root / sub).exists():
                import shutil
                shutil.rmtree(root / sub)
        rows = []
        for e in entries:
            if e["modality"] == "CT":
                x = downsample(e["x128"], sample_size)
                row = _write_dds(root, "CT", e["volume"], e["name"], x)
            else:
                x, maps = _mri_sample(e["x128"], sample_size, e["maps"], e["maps_seed"])
                row = _write_dds(root, "MRI", e["volume"], e["name"], x, maps)
                row.update(maps=e["maps"], maps_seed=e["maps_seed"])
            row.update({k: v for k, v in e.items() if k not in ("x128",)})
            rows.append(row)
        log(f"{title}: {sum(r['modality'] == 'CT' for r in rows)} CT, "
            f"{sum(r['modality'] == 'MRI' for r in rows)} MRI slices -> {root}")
        return rows

    heldout_mr = outp / "heldout" / "MRI" / "colin27" / "slice"
    val_entries = []
    for k in CT_VAL_ID:
        val_entries.append(dict(modality="CT", volume="cranium_heldout", name=f"{k:03d}", x128=ct[k],
                                source=CT_PATH, package="invesalius-examples", slice=k,
                                kind="in-distribution (held-out slice of a training scan)"))
    for k in CT_VAL_REGION:
        val_entries.append(dict(modality="CT", volume="cranium_vertex", name=f"{k:03d}", x128=ct[k],
                                source=CT_PATH, package="invesalius-examples", slice=k,
                                kind="held-out region (vertex) of the training scan; no other real CT available"))
    for k in MR_VAL_ID:
        val_entries.append(dict(modality="MRI", volume="colin27_heldout", name=f"{k:03d}",
                                x128=np.load(heldout_mr / f"{k:03d}.npy"), maps="synthetic", maps_seed=k,
                                source=COLIN_PATH, package="mricron-data", slice=k,
                                kind="in-distribution (held-out slice of a training subject)"))
    epi_path, epi_path_label = _site_file("nibabel", "tests/data/example4d.nii.gz")
    epi = np.asarray(nib.load(epi_path).dataobj).astype(np.float64)[..., 0]
    for k in NIB_EPI_SLICES:
        val_entries.append(dict(modality="MRI", volume="epi_nibabel", name=f"{k:03d}",
                                x128=mr_from_magnitude(np.flipud(epi[:, :, k].T), 1000 * BROAD_SOURCE_IDS["nib_epi"] + k),
                                maps="espirit", maps_seed=k, source=epi_path_label, package="nibabel (PyPI)",
                                licence=BROAD_LICENCES["nibabel"], slice=k, sha256_source=sha256(epi_path),
                                kind="held-out subject (gradient-echo EPI, 128x96x24, volume 0)"))

    ood_entries = [dict(modality="CT", volume="cranium_skullbase", name=f"{k:03d}", x128=ct[k], source=CT_PATH,
                        package="invesalius-examples", slice=k,
                        kind="held-out anatomy (jaw/teeth/maxilla) of the only real CT scan available")
                   for k in CT_OOD]
    ds = pydicom.dcmread(DICOM3TOOLS_PATH)
    mosaic = ds.pixel_array.astype(np.float64)
    n_tile = int(ds.AcquisitionMatrix[0]) or 72
    per_row = mosaic.shape[1] // n_tile
    for j in MOSAIC_TILES:
        r, c = divmod(j, per_row)
        tile = mosaic[r * n_tile:(r + 1) * n_tile, c * n_tile:(c + 1) * n_tile]
        ood_entries.append(dict(modality="MRI", volume="asl_siemens", name=f"{j:03d}",
                                x128=mr_from_magnitude(tile, 1000 * BROAD_SOURCE_IDS["d3_asl"] + j),
                                maps="espirit", maps_seed=100 + j, source=DICOM3TOOLS_PATH, package="dicom3tools",
                                licence=BROAD_LICENCES["dicom3tools"], slice=j, sha256_source=sha256(DICOM3TOOLS_PATH),
                                kind="other subject and scanner (Siemens Prisma 3 T, PASL EPI, 72x72 mosaic tile)"))
    mpl_path, mpl_path_label = _site_file("matplotlib", "mpl-data/sample_data/s1045.ima.gz")
    import gzip
    with gzip.open(mpl_path) as f:
        s1045 = np.frombuffer(f.read(), np.uint16).reshape(256, 256).astype(np.float64)
    ood_entries.append(dict(modality="MRI", volume="sagittal_head", name="000",
                            x128=mr_from_magnitude(s1045, 1000 * BROAD_SOURCE_IDS["mpl_s1045"]),
                            maps="espirit", maps_seed=200, source=mpl_path_label, package="matplotlib (PyPI)",
                            licence=BROAD_LICENCES["matplotlib"], sha256_source=sha256(mpl_path),
                            kind="other subject, sagittal head MR (256x256 uint16)"))
    rat_path = os.path.join(ITK_DIR, "RatLungSlice1.mha")
    ood_entries.append(dict(modality="MRI", volume="rat_thorax", name="000",
                            x128=mr_from_magnitude(read_mha(rat_path).astype(np.float64),
                                                   1000 * BROAD_SOURCE_IDS["itk_ratlung"]),
                            maps="espirit", maps_seed=300, source=rat_path, package="insighttoolkit5-examples",
                            licence=LICENCES["insighttoolkit5-examples"], sha256_source=sha256(rat_path),
                            kind="other species and anatomy (rat thorax MR, 128x128 uint8)"))
    anat_path, anat_path_label = _site_file("nibabel", "tests/data/anatomical.nii")
    anat = np.asarray(nib.load(anat_path).dataobj).astype(np.float64)
    ka = anat.shape[2] // 2
    ood_entries.append(dict(modality="MRI", volume="t1_lowres", name=f"{ka:03d}",
                            x128=mr_from_magnitude(np.clip(np.flipud(anat[:, :, ka].T), 0, None),
                                                   1000 * BROAD_SOURCE_IDS["nib_anat"] + ka),
                            maps="espirit", maps_seed=400, source=anat_path_label, package="nibabel (PyPI)",
                            licence=BROAD_LICENCES["nibabel"], slice=ka, sha256_source=sha256(anat_path),
                            kind="other subject, low-resolution T1 (33x41x25, upsampled)"))

    for e in val_entries + ood_entries:
        e.setdefault("licence", LICENCES.get(e["package"], ""))
    if val is not None:
        man["val"] = sample_set(val, val_entries, "val samples")
        _write_sample_manifest(Path(val), man, "val", sample_size)
    if ood is not None:
        man["ood"] = sample_set(ood, ood_entries, "ood samples")
        _write_sample_manifest(Path(ood), man, "ood", sample_size)
    with open(outp / "manifest_broad.json", "w") as f:
        json.dump(man, f, indent=1)
    return man


def _write_sample_manifest(root: Path, man: dict, which: str, size: int) -> None:
    small = {"command": man["command"], "sample_resolution": [size, size],
             "processing": ("slice padded to a square, resampled to 128x128 (area down / bicubic up), "
                            "CT: HU window clip((HU + 1000) / 3000, 0, 1); MR: magnitude / 99.5th "
                            "percentile, clipped to [0, 1], smooth random phase (seed recorded); then "
                            f"area-resampled to {size}x{size} (real and imaginary parts separately)"),
             "maps": {"synthetic": f"physics.coils.synthetic_coil_maps({NUM_COILS}, {size}, {size}, seed=maps_seed)",
                      "espirit": (f"simulate {NUM_COILS}-coil k-space with synthetic_coil_maps(seed=maps_seed), "
                                  "estimate maps with physics.coils.espirit_maps(calib_width=24) (0 outside "
                                  "the object); slice = sum_c conj(S_c) coil_c")},
             "broad_prior_training_excludes": {"CT": {"cranium_heldout_blocks": [CT_HELDOUT, CT_VAL_BLOCK, CT_OOD_BLOCK],
                                                      "gap": GAP},
                                               "MRI": "none of these subjects/scans; Colin27 held-out block 60-71 ± gap"},
             "licences": man["licences"], "samples": man[which]}
    with open(root / "manifest.json", "w") as f:
        json.dump(small, f, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data", help="output folder (train/, heldout/, manifest.json)")
    ap.add_argument("--samples", default=None,
                    help="also write the shipped sample folder (e.g. indist_samples)")
    ap.add_argument("--sample_size", type=int, default=64,
                    help="resolution of the shipped samples (area-resampled from the 128² held-out slices; "
                         "64 matches the shipped priors)")
    ap.add_argument("--val", default=None, help="also write the validation sample folder (e.g. val_samples)")
    ap.add_argument("--ood", default=None, help="also write the out-of-distribution sample folder (e.g. ood_samples)")
    ap.add_argument("--broad", action="store_true",
                    help="also write <out>/train_broad (training set of the broad_*_64 priors); implied "
                         "by --val / --ood")
    ap.add_argument("--nilearn_wheel", default=NILEARN_WHEEL,
                    help=f"nilearn {NILEARN_VERSION} wheel holding the MNI152 template (pip download)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.sample_size < 8:
        raise SystemExit(f"--sample_size must be >= 8, got {args.sample_size}")
    command = " ".join([".venv/bin/python -m utils.prepare_data"] + argv)
    legacy = f".venv/bin/python -m utils.prepare_data --out {args.out}" + (
        f" --samples {args.samples}" if args.samples else "")  # the command recorded by indist_samples
    prepare(args.out, args.samples, command=legacy, sample_size=args.sample_size)
    if args.broad or args.val or args.ood:
        prepare_broad(args.out, args.val, args.ood, nilearn_wheel=args.nilearn_wheel,
                      sample_size=args.sample_size, command=command)


if __name__ == "__main__":
    main()
