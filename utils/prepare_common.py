"""Constants, readers and helpers shared by :mod:`utils.prepare_data` (first training set,
held-out slices, ``indist_samples``) and :mod:`utils.prepare_broad` (broad training set,
``val_samples``, ``ood_samples``): the resolution, the split gap, the Debian source paths and
licences, resampling / normalisation helpers and the split checks.
"""
from __future__ import annotations

import hashlib
import os
import plistlib
import tarfile
from pathlib import Path

import numpy as np

from utils.data import HU_MAX, HU_MIN, hu_to_unit  # noqa: F401  (the single CT window; re-exported)
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


def downsample(a: np.ndarray, size: int) -> np.ndarray:
    """Area-resample a real or complex (real and imaginary parts separately) slice to ``size``;
    the dtype is kept."""
    if a.shape[-1] == size:
        return a
    if np.iscomplexobj(a):
        return (resize_area(a.real, size) + 1j * resize_area(a.imag, size)).astype(a.dtype)
    return resize_area(a, size).astype(a.dtype)

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


