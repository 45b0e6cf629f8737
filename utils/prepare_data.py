"""Extract real CT / MR training and held-out slices from installed Debian example packages
(command line of the whole data preparation, ``make data``).

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
Written by :func:`utils.prepare_broad.prepare_broad` after :func:`prepare` (its module docstring
documents the sources, hold-outs and processing); this command line runs both.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from utils.prepare_broad import NILEARN_VERSION, NILEARN_WHEEL, prepare_broad
# the shared helpers, importable from here as before (tests, notebooks)
from utils.prepare_common import (CT_HELDOUT, CT_PATH, CT_SAMPLES, COLIN_BET_PATH, COLIN_PATH,  # noqa: F401
                                  GAP, HU_MAX, HU_MIN, ITK_DIR, LICENCES, MR_HELDOUT, MR_PERCENTILE,
                                  MR_SAMPLES, NUM_COILS, RES, SOURCE_IDS, check_split, colin_slice,
                                  downsample, hu_to_unit, load_cranium, make_complex, match_colin_index,
                                  normalise_magnitude, pad_to_square, read_mha, resize_area, sha256,
                                  split_indices, split_indices_blocks)
from utils.prepare_ood_ct import DICOMPYLER_SDIST, DICOMPYLER_VERSION

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

    for k in CT_SAMPLES:
        a = np.load(data / "heldout" / "CT" / "cranium" / f"{k:03d}.npy")
        np.save(samples / "CT" / "cranium" / f"{k:03d}.npy", downsample(a, size))
    for k in MR_SAMPLES:
        a = np.load(data / "heldout" / "MRI" / "colin27" / "slice" / f"{k:03d}.npy")
        np.save(samples / "MRI" / "colin27" / "slice" / f"{k:03d}.npy", downsample(a, size))
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
    ap.add_argument("--rt_sdist", default=DICOMPYLER_SDIST,
                    help=f"dicompyler-core {DICOMPYLER_VERSION} sdist holding the breast radiotherapy CT "
                         "slice of ood_samples/CT/breast_rt (pip download --no-binary=:all:)")
    args = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.sample_size < 8:
        raise SystemExit(f"--sample_size must be >= 8, got {args.sample_size}")
    needed = [(args.nilearn_wheel, "--nilearn_wheel")] if args.broad or args.val or args.ood else []
    needed += [(args.rt_sdist, "--rt_sdist")] if args.ood else []
    for path, flag in needed:   # checked before anything is written
        if not os.path.exists(path):
            raise SystemExit(f"{path} not found: pass {flag} or run `make data` (downloads it to data/sources)")
    command = " ".join([".venv/bin/python -m utils.prepare_data"] + argv)
    legacy = f".venv/bin/python -m utils.prepare_data --out {args.out}" + (
        f" --samples {args.samples}" if args.samples else "")  # the command recorded by indist_samples
    prepare(args.out, args.samples, command=legacy, sample_size=args.sample_size)
    if args.broad or args.val or args.ood:
        prepare_broad(args.out, args.val, args.ood, nilearn_wheel=args.nilearn_wheel,
                      sample_size=args.sample_size, command=command, rt_sdist=args.rt_sdist)


if __name__ == "__main__":
    main()
