"""Training set of the ``broad_*_64`` priors and the validation / out-of-distribution sample
folders (``val_samples/``, ``ood_samples/``); run through ``python -m utils.prepare_data
--out data --samples indist_samples --val val_samples --ood ood_samples`` (``make data``).

:func:`prepare_broad` (needs the output of :func:`utils.prepare_data.prepare`, Debian
``dicom3tools``, the nilearn wheel and the dicompyler-core sdist in ``data/sources``, see
``make data``) writes::

    data/train_broad/CT/cranium_<k:03d>.npy     45 Cranium slices: 17–42, 65–83
    data/train_broad/MRI/*.npy                  the 163 slices of train/MRI + 133 MNI152 2009a slices
    data/manifest_broad.json
    <val>/, <ood>/                              DDS folders (64²) + manifest.json

* CT training: the Cranium scan is the only real CT *volume* found; besides the test block 48–59
  the broad prior holds out the jaw/teeth/maxilla region 0–11 (OOD test) and the vertex 89–100
  (validation), each with a gap of ``GAP`` slices.  Validation also gets held-out slices 49, 53, 57.
* CT OOD test, other patient and scanner: the top slice of a breast radiotherapy planning CT
  (``ct.0.dcm`` of the dicompyler-core 0.5.6 sdist's test data, BSD-3-clause; neck, shoulder,
  raised arm, couch; 512², 1.074 mm), read from the sdist (nothing is installed), at the full
  field of view and as square crops of 1/2 and 1/3 of the side centred on the body
  (:func:`ct_view`), each HU-windowed after resampling like the Cranium slices.  Before use its
  bytes and UIDs are checked against pydicom's test files and pydicom-data
  (:func:`check_not_reserved`), which are reserved for independent evaluation.
* MRI training adds the MNI ICBM152 2009a T1 template (nilearn wheel, BSD-3-Clause package;
  axial every 2nd slice, coronal and sagittal every 4th).  Validation: Colin27 held-out slices
  61, 65, 69 (synthetic maps) and a held-out subject (nibabel ``example4d.nii.gz`` EPI, ESPIRiT
  maps).  OOD test: Siemens PASL mosaic (dicom3tools ``0051.dcm``), sagittal head MR (matplotlib
  ``s1045.ima.gz``), rat thorax MR (ITK ``RatLungSlice1.mha``), low-resolution T1 (nibabel
  ``anatomical.nii``), all with ESPIRiT maps estimated from simulated 8-coil k-space
  (:func:`espirit_from_image`).

Every sample row of a manifest records its source, package, licence and the sha256 of the
stored array; these folders are test / validation data only (never training data).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from utils.prepare_common import (CT_HELDOUT, CT_PATH, COLIN_PATH, GAP, ITK_DIR, LICENCES, NUM_COILS,
                                  RES, downsample, hu_to_unit, load_cranium, make_complex,
                                  normalise_magnitude, read_mha, resize_area, resize_to, sha256,
                                  split_indices_blocks)
from utils.prepare_ood_ct import (DICOMPYLER_SDIST, DICOMPYLER_VERSION, OOD_LICENCES, RT_CT_MEMBER,
                                  RT_CT_ZOOMS, ct_view, read_rt_ct)

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


def mr_from_magnitude(mag2d: np.ndarray, seed: int) -> np.ndarray:
    """Real MR magnitude → complex64 ``RES²`` slice: pad, resample, /99.5th percentile, clip,
    smooth random phase (the convention of every MR slice of this script)."""
    return make_complex(normalise_magnitude(resize_to(mag2d)), seed)


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
                  nilearn_wheel: str = NILEARN_WHEEL, sample_size: int = 64, command: str = "",
                  rt_sdist: str = DICOMPYLER_SDIST) -> dict:
    """Training set of the ``broad_*_64`` priors (``<out>/train_broad/{CT,MRI}``, 128² like
    ``train/``) and the validation / out-of-distribution sample folders (``val`` / ``ood``; not
    written where None).

    * CT: the Cranium scan is the only real CT volume found; three regions are held out: the
      in-distribution test block (``CT_HELDOUT``), a validation region (``CT_VAL_BLOCK``, vertex)
      and an OOD region (``CT_OOD_BLOCK``, jaw/teeth/maxilla), each with ``GAP`` unused slices
      around it; the rest (45 slices) is the training set.  The OOD folder also gets the breast
      radiotherapy planning slice of the dicompyler-core sdist ``rt_sdist`` at ``RT_CT_ZOOMS``.
    * MRI: the legacy training slices (``<out>/train/MRI``, must exist: run
      :func:`utils.prepare_data.prepare` first) + the MNI ICBM152 2009a T1 template (nilearn
      wheel; axial slices every ``MNI_STEP_AXIAL``, coronal and sagittal every ``MNI_STEP_OTHER``,
      slices with ≥ 10 % of pixels above 10 % of the max). Validation: Colin27 held-out slices
      ``MR_VAL_ID`` (synthetic maps, as indist_samples) and a held-out subject, nibabel's
      ``example4d.nii.gz`` EPI (ESPIRiT maps). OOD test: a Siemens 3 T PASL mosaic (dicom3tools
      ``0051.dcm``), a sagittal head MR (matplotlib ``s1045.ima.gz``), a rat thorax MR (ITK
      ``RatLungSlice1``) and nibabel's ``anatomical.nii`` T1 (all ESPIRiT maps).
    """
    outp = Path(out)
    if not (outp / "train" / "MRI").is_dir() or not (outp / "heldout").is_dir():
        raise FileNotFoundError(f"{outp}/train and {outp}/heldout are missing: run prepare() first "
                                "(python -m utils.prepare_data --out data)")
    if ood is not None and not os.path.exists(rt_sdist):
        read_rt_ct(rt_sdist)  # the one-line error with the download command, before anything is written
    tb_ct, tb_mr = outp / "train_broad" / "CT", outp / "train_broad" / "MRI"
    for d in (tb_ct, tb_mr):
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*.npy"):
            f.unlink()
    man = {"command": command, "resolution": [RES, RES], "sample_resolution": [sample_size, sample_size],
           "gap": GAP, "licences": {**LICENCES, **BROAD_LICENCES}, "source_ids": BROAD_SOURCE_IDS,
           "train_broad": {}, "val": [], "ood": []}
    ct = _train_broad_ct(tb_ct, man, log)
    _train_broad_mri(outp, out, tb_mr, nilearn_wheel, man, log)
    if val is not None:
        man["val"] = _write_sample_set(val, _val_entries(outp, ct), sample_size, "val samples", log)
        _write_sample_manifest(Path(val), man, "val", sample_size, man["licences"])
    if ood is not None:
        man["ood"] = _write_sample_set(ood, _ood_entries(ct, rt_sdist), sample_size, "ood samples", log)
        _write_sample_manifest(Path(ood), man, "ood", sample_size, {**man["licences"], **OOD_LICENCES})
        man["licences"].update(OOD_LICENCES)
    with open(outp / "manifest_broad.json", "w") as f:
        json.dump(man, f, indent=1)
    return man


def _train_broad_ct(tb_ct: Path, man: dict, log) -> dict:
    """Cranium training slices of the broad CT prior; returns every candidate slice (128², [0, 1])."""
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
    return ct


def _train_broad_mri(outp: Path, out: str, tb_mr: Path, nilearn_wheel: str, man: dict, log) -> None:
    """Legacy MRI training slices + MNI152 2009a slices of the broad MRI prior."""
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



def _write_sample_set(root, entries: list[dict], size: int, title: str, log) -> list[dict]:
    """Write ``entries`` (dicts with modality, volume, name, x128 and provenance) as a DDS folder
    of ``size``² slices (the old ``CT`` / ``MRI`` sub-folders are replaced); the manifest rows."""
    root = Path(root)
    for sub in ("CT", "MRI"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    rows = []
    for e in entries:
        if e["modality"] == "CT":
            row = _write_dds(root, "CT", e["volume"], e["name"], downsample(e["x128"], size))
        else:
            x, maps = _mri_sample(e["x128"], size, e["maps"], e["maps_seed"])
            row = _write_dds(root, "MRI", e["volume"], e["name"], x, maps)
            row.update(maps=e["maps"], maps_seed=e["maps_seed"])
        row.update({k: v for k, v in e.items() if k not in ("x128",)})
        row.setdefault("licence", LICENCES.get(row["package"], ""))
        rows.append(row)
    log(f"{title}: {sum(r['modality'] == 'CT' for r in rows)} CT, "
        f"{sum(r['modality'] == 'MRI' for r in rows)} MRI slices -> {root}")
    return rows


def _val_entries(outp: Path, ct: dict) -> list[dict]:
    import nibabel as nib

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

    return val_entries


def _ood_entries(ct: dict, rt_sdist: str) -> list[dict]:
    import gzip

    import nibabel as nib
    import pydicom

    ood_entries = [dict(modality="CT", volume="cranium_skullbase", name=f"{k:03d}", x128=ct[k], source=CT_PATH,
                        package="invesalius-examples", slice=k,
                        kind="held-out anatomy (jaw/teeth/maxilla) of the training scan (the only real CT volume available)")
                   for k in CT_OOD]
    hu, rt, prov = read_rt_ct(rt_sdist)
    mm = float(rt.PixelSpacing[0])
    for zoom in RT_CT_ZOOMS:
        x128, crop = ct_view(hu, zoom)
        ood_entries.append(dict(
            modality="CT", volume="breast_rt", name=f"zoom{zoom}", x128=x128,
            source=f"dicompyler-core=={DICOMPYLER_VERSION} (PyPI sdist):{RT_CT_MEMBER}",
            package="dicompyler-core (PyPI)", licence=OOD_LICENCES["dicompyler-core"], zoom=zoom,
            crop_px_top_left_side=crop, field_of_view_mm=round(crop[2] * mm, 1), **prov,
            kind=("other patient, scanner and anatomy: top slice of a breast radiotherapy planning CT "
                  "(neck, shoulder, raised arm, couch), " + ("full field of view" if zoom == 1 else
                  f"square crop of 1/{zoom} of the side centred on the body"))))
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

    return ood_entries


def _write_sample_manifest(root: Path, man: dict, which: str, size: int, licences: dict) -> None:
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
             "licences": licences, "samples": man[which]}
    with open(root / "manifest.json", "w") as f:
        json.dump(small, f, indent=1)


