"""ood_samples/CT/breast_rt (another patient and scanner than the CT training scan) and the code
that makes it: the crops, the HU window, the guard against the images reserved for evaluation."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from utils import prepare_broad, prepare_ood_ct
from utils.data import hu_to_unit, load_dds_folder
from utils.prepare_ood_ct import body_crop, check_not_reserved, ct_view

ROOT = Path(__file__).resolve().parents[1]
OOD = ROOT / "ood_samples"


@pytest.fixture(scope="module")
def rows():
    man = json.loads((OOD / "manifest.json").read_text())
    return [r for r in man["samples"] if r["volume"] == "breast_rt"]


def test_breast_rt_samples_are_real_ct_in_the_hu_window(rows):
    """Shapes, dtype, the manifest's sha256, and the window: air ≈ 0, soft tissue ≈ 1/3, bone
    below saturation (an original CT slice, max 1457 HU)."""
    assert [r["name"] for r in rows] == [f"zoom{z}" for z in prepare_ood_ct.RT_CT_ZOOMS]
    by_name = {s.name: s for s in load_dds_folder(OOD, "CT", volumes=["breast_rt"])}
    fovs = []
    for r in rows:
        a = np.load(OOD / r["file"])
        assert a.shape == (64, 64) and a.dtype == np.float32
        assert hashlib.sha256(a.tobytes()).hexdigest() == r["sha256"]
        np.testing.assert_array_equal(by_name[f"breast_rt/{r['name']}"].x_ref.numpy(), a)
        assert a.min() >= 0 and 0.5 < a.max() < 1.0
        corners = np.concatenate([a[:3, :3].ravel(), a[:3, -3:].ravel()])
        assert np.median(corners) < 0.01                                  # air: -1000 HU -> 0
        body = a[a > 0.2]
        assert body.size > 0.1 * a.size
        assert 0.30 < float(np.median(body)) < 0.37                      # soft tissue ~ 0..100 HU
        assert r["licence"].startswith("BSD-3-clause") and r["package"].startswith("dicompyler-core")
        assert r["dicom"]["ImageType"][0] == "ORIGINAL" and r["hu_range"][0] == -1000.0
        assert r["reserved_check"]["test_files_compared"] > 50
        assert r["reserved_check"]["pydicom_data_hashes_compared"] > 50
        fovs.append(r["field_of_view_mm"])
    assert fovs == sorted(fovs, reverse=True) and fovs[0] == pytest.approx(512 * 1.074219, abs=0.1)
    # the crops are views of the same slice: the zoomed-in image has more body pixels
    fill = [float((np.load(OOD / r["file"]) > 0.2).mean()) for r in rows]
    assert fill == sorted(fill)


def test_breast_rt_is_another_scan_than_every_ct_training_source(rows):
    man = json.loads((OOD / "manifest.json").read_text())
    train_sources = {r["source"] for r in man["samples"] if r["volume"].startswith("cranium")}
    assert {r["source"] for r in rows}.isdisjoint(train_sources)
    assert len({r["sha256_source"] for r in rows}) == 1 and "dicompyler-core" in man["licences"]


@pytest.mark.skipif(not Path(prepare_ood_ct.DICOMPYLER_SDIST).exists(),
                    reason="dicompyler-core sdist not downloaded (make data)")
def test_breast_rt_samples_are_reproduced_from_the_sdist(rows):
    hu, ds, prov = prepare_ood_ct.read_rt_ct()
    assert hu.shape == (512, 512) and ds.Modality == "CT"
    for r in rows:
        x128, crop = ct_view(hu, r["zoom"])
        assert crop == r["crop_px_top_left_side"] and prov["sha256_source"] == r["sha256_source"]
        x = prepare_broad.downsample(x128, 64)
        assert hashlib.sha256(x.tobytes()).hexdigest() == r["sha256"]


def test_body_crop_centres_on_the_largest_object_and_stays_inside():
    hu = np.full((100, 100), -1000.0)
    hu[20:40, 50:80] = 40.0          # body, bounding-box centre (30, 65)
    hu[90:92, 5:7] = 500.0           # a small bright object elsewhere (couch marker)
    assert body_crop(hu, 1) == (0, 0, 100)
    assert body_crop(hu, 2) == (5, 40, 50)
    assert body_crop(hu, 4) == (18, 52, 25)
    hu2 = np.full((100, 100), -1000.0)
    hu2[0:10, 90:100] = 0.0          # at the corner: the crop is moved inside the image
    assert body_crop(hu2, 2) == (0, 50, 50)
    with pytest.raises(ValueError, match="zoom"):
        body_crop(hu, 0.5)
    with pytest.raises(ValueError, match="square"):
        body_crop(hu[:50], 2)
    with pytest.raises(ValueError, match="no pixel"):
        body_crop(np.full((8, 8), -1000.0), 1)


def test_ct_view_pads_with_air_and_applies_the_window():
    """A water rectangle in a non-square air image: the padding is air (0), not water (1/3),
    and the window maps water to 1/3 after resampling."""
    hu = np.full((256, 128), -1000.0)
    hu[64:192, 32:96] = 0.0
    x, crop = ct_view(hu, 1)
    assert x.shape == (128, 128) and x.dtype == np.float32 and crop == [0, 0, 256]
    assert np.abs(x[:, :30]).max() == 0 and np.abs(x[:, -30:]).max() == 0   # padded columns: air
    np.testing.assert_allclose(x[40:90, 50:75], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(x, hu_to_unit(prepare_broad.resize_to(
        np.pad(hu + 1000, ((0, 0), (64, 64))), 128) - 1000), atol=1e-6)
    z, crop2 = ct_view(hu, 2)
    assert crop2 == [64, 64, 128] and z.shape == (128, 128)
    np.testing.assert_allclose(z[10:118, 40:88], 1 / 3, atol=1e-6)       # the crop is mostly water


def _dicom_bytes(tmp_path, study_uid, name):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, generate_uid(), "CT"
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes(), ds


def test_check_not_reserved_rejects_same_bytes_same_uids_and_listed_hashes(tmp_path):
    """On a stand-in for pydicom's data folder (synthetic files, not the reserved images)."""
    from pydicom.uid import generate_uid

    data = tmp_path / "data"
    (data / "test_files").mkdir(parents=True)
    study = generate_uid()
    reserved, _ = _dicom_bytes(data / "test_files", study, "reserved.dcm")
    (data / "test_files" / "notes.txt").write_text("not DICOM")
    listed, listed_ds = _dicom_bytes(tmp_path, generate_uid(), "listed.dcm")
    (data / "hashes.json").write_text(json.dumps({"big.dcm": hashlib.sha256(listed).hexdigest()}))
    fresh, fresh_ds = _dicom_bytes(tmp_path, generate_uid(), "fresh.dcm")
    out = check_not_reserved(fresh, fresh_ds, data)
    assert out["test_files_compared"] == 2 and out["pydicom_data_hashes_compared"] == 1
    import pydicom

    with pytest.raises(ValueError, match="test file reserved.dcm"):
        check_not_reserved(reserved, pydicom.dcmread(data / "test_files" / "reserved.dcm"), data)
    same_study, same_study_ds = _dicom_bytes(tmp_path, study, "same_study.dcm")
    with pytest.raises(ValueError, match="shares UIDs"):
        check_not_reserved(same_study, same_study_ds, data)
    with pytest.raises(ValueError, match="pydicom-data"):
        check_not_reserved(listed, listed_ds, data)


def test_cli_stops_on_a_missing_sdist_before_writing(tmp_path):
    from utils import prepare_data

    wheel = tmp_path / "nilearn.whl"
    wheel.write_bytes(b"")
    args = ["--out", str(tmp_path / "data"), "--ood", str(tmp_path / "ood"), "--nilearn_wheel", str(wheel)]
    with pytest.raises(SystemExit, match="--rt_sdist"):
        prepare_data.main(args + ["--rt_sdist", str(tmp_path / "missing.tar.gz")])
    with pytest.raises(SystemExit, match="--nilearn_wheel"):
        prepare_data.main(["--out", str(tmp_path / "data"), "--val", str(tmp_path / "val"),
                           "--nilearn_wheel", str(tmp_path / "missing.whl")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nilearn.whl"]   # nothing written
