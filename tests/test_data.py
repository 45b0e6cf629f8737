"""utils/data.py readers, utils/synthetic.py, the shipped indist_samples and the data split."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils import prepare_broad, prepare_data
from utils.data import (HU_MAX, HU_MIN, Sample, hu_to_unit, load_aapm_npy, load_dataset,
                        load_dds_folder, load_dicom, load_fastmri_h5)
from utils.synthetic import simulate_multicoil, smooth_random_phase

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "indist_samples"


def _phantom(H, W, seed=0):
    """Smooth real magnitude (ellipse-ish blobs) times a smooth random phase, complex64."""
    yy, xx = np.mgrid[:H, :W]
    cy, cx = H / 2, W / 2
    mag = ((yy - cy) ** 2 / (0.35 * H) ** 2 + (xx - cx) ** 2 / (0.3 * W) ** 2 < 1).astype(float) * 0.6
    mag += 0.4 * np.exp(-((yy - cy - 3) ** 2 + (xx - cx + 4) ** 2) / 20.0)
    return (mag * np.exp(1j * smooth_random_phase(H, W, seed))).astype(np.complex64)


# ----------------------------------------------------------------------------------------------
# CT window
# ----------------------------------------------------------------------------------------------
def test_hu_window():
    assert (HU_MIN, HU_MAX) == (-1000.0, 2000.0)
    np.testing.assert_allclose(hu_to_unit([-2000, -1000, 0, 40, 2000, 3000]),
                               [0, 0, 1 / 3, 1040 / 3000, 1, 1])
    assert prepare_data.hu_to_unit is hu_to_unit  # one definition shared with prepare_data
    assert prepare_broad.hu_to_unit is hu_to_unit  # ... and with the val / OOD sample sets


# ----------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------
def test_smooth_random_phase():
    a, b, c = (smooth_random_phase(64, 48, s) for s in (1, 1, 2))
    assert a.shape == (64, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.1
    # smooth: per-pixel increments are small compared with the total variation across the FOV
    assert np.abs(np.diff(a, axis=0)).max() < 0.3 and np.abs(np.diff(a, axis=1)).max() < 0.3


def test_simulate_multicoil():
    x = torch.from_numpy(_phantom(32, 32))
    coils, maps = simulate_multicoil(x, num_coils=4, seed=3)
    assert coils.shape == maps.shape == (4, 32, 32)
    torch.testing.assert_close((maps.abs() ** 2).sum(0), torch.ones(32, 32), atol=1e-5, rtol=0)
    torch.testing.assert_close((maps.conj() * coils).sum(0), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="complex"):
        simulate_multicoil(x.abs(), 4, 0)


# ----------------------------------------------------------------------------------------------
# DDS folders
# ----------------------------------------------------------------------------------------------
def _write_dds(root: Path):
    for i in (3, 1):
        x = _phantom(16, 16, i)
        m = np.ones((2, 16, 16), np.complex64) / np.sqrt(2) * np.exp(1j * i)
        (root / "MRI" / "vol" / "slice").mkdir(parents=True, exist_ok=True)
        (root / "MRI" / "vol" / "mps").mkdir(parents=True, exist_ok=True)
        np.save(root / "MRI" / "vol" / "slice" / f"{i:03d}.npy", x)
        np.save(root / "MRI" / "vol" / "mps" / f"{i:03d}.npy", m.astype(np.complex64))
        (root / "CT" / "head").mkdir(parents=True, exist_ok=True)
        np.save(root / "CT" / "head" / f"{i:03d}.npy", np.full((16, 16), 0.1 * i, np.float32))


def test_dds_roundtrip(tmp_path):
    _write_dds(tmp_path)
    mri = load_dds_folder(tmp_path, "MRI")
    assert [s.name for s in mri] == ["vol/001", "vol/003"]
    for s, i in zip(mri, (1, 3)):
        assert isinstance(s, Sample) and s.modality == "MRI"
        assert s.x_ref.dtype == torch.complex64 and s.x_ref.shape == (16, 16)
        np.testing.assert_array_equal(s.x_ref.numpy(), _phantom(16, 16, i))
        assert s.sens_maps.shape == (2, 16, 16) and s.sens_maps.dtype == torch.complex64
    ct = load_dds_folder(tmp_path, "ct")
    assert [s.name for s in ct] == ["head/001", "head/003"] and ct[0].sens_maps is None
    assert ct[1].x_ref.dtype == torch.float32 and float(ct[1].x_ref[0, 0]) == pytest.approx(0.3)
    assert len(load_dataset(tmp_path, "MRI")) == 2
    assert len(load_dds_folder(tmp_path, "MRI", max_samples=1)) == 1


def test_dds_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_dds_folder(tmp_path / "nope", "MRI")
    (tmp_path / "MRI").mkdir()
    with pytest.raises(ValueError, match="no volume"):
        load_dds_folder(tmp_path, "MRI")
    (tmp_path / "MRI" / "v" / "slice").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .npy"):
        load_dds_folder(tmp_path, "MRI")
    # real slice where a complex one is expected
    np.save(tmp_path / "MRI" / "v" / "slice" / "000.npy", np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="complex"):
        load_dds_folder(tmp_path, "MRI")
    np.save(tmp_path / "MRI" / "v" / "slice" / "000.npy", np.ones((8, 8), np.complex64))
    with pytest.raises(FileNotFoundError, match="sensitivity maps"):
        load_dds_folder(tmp_path, "MRI")
    assert load_dds_folder(tmp_path, "MRI", require_maps=False)[0].sens_maps is None
    (tmp_path / "MRI" / "v" / "mps").mkdir()
    np.save(tmp_path / "MRI" / "v" / "mps" / "000.npy", np.ones((2, 8, 9), np.complex64))
    with pytest.raises(ValueError, match="sensitivity maps must be"):
        load_dds_folder(tmp_path, "MRI")
    np.save(tmp_path / "MRI" / "v" / "slice" / "000.npy", np.ones((2, 8, 8), np.complex64))
    with pytest.raises(ValueError, match="2-D"):
        load_dds_folder(tmp_path, "MRI")
    (tmp_path / "CT" / "h").mkdir(parents=True)
    np.save(tmp_path / "CT" / "h" / "000.npy", np.ones((8, 8), np.complex64))
    with pytest.raises(ValueError, match="real"):
        load_dds_folder(tmp_path, "CT")
    with pytest.raises(ValueError, match="modality"):
        load_dds_folder(tmp_path, "PET")


# ----------------------------------------------------------------------------------------------
# fastMRI h5
# ----------------------------------------------------------------------------------------------
def _write_h5(path, H=64, W=56, inner=40, C=6):
    import h5py

    from physics.mri import fft2c

    x = np.zeros((H, W), np.complex64)
    t, l = (H - inner) // 2, (W - inner) // 2
    x[t:t + inner, l:l + inner] = _phantom(inner, inner, 5)
    coils, _ = simulate_multicoil(torch.from_numpy(x), num_coils=C, seed=11)
    k = fft2c(coils).numpy()
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.stack([k, 2 * k]))  # two slices, second one scaled
    return x[t:t + inner, l:l + inner]


def test_fastmri_h5_rss_roundtrip(tmp_path):
    p = tmp_path / "file1.h5"
    x = _write_h5(p)
    out = load_fastmri_h5(p, crop=40, maps="rss")
    assert len(out) == 2 and out[0].name == "file1/000"
    s = out[0]
    assert s.x_ref.shape == (40, 40) and s.x_ref.dtype == torch.complex64
    assert s.sens_maps.shape == (6, 40, 40)
    # RSS maps: combined image = RSS = |x| (Σ|S|² = 1), normalised to max 1
    np.testing.assert_allclose(s.x_ref.abs().numpy(), np.abs(x) / np.abs(x).max(), atol=1e-5)
    assert float(s.x_ref.abs().max()) == pytest.approx(1.0, abs=1e-6)
    assert s.meta["scale"] == pytest.approx(np.abs(x).max(), rel=1e-4)
    assert out[1].meta["scale"] == pytest.approx(2 * s.meta["scale"], rel=1e-5)
    torch.testing.assert_close(out[1].x_ref, s.x_ref, atol=1e-5, rtol=0)
    assert len(load_fastmri_h5(p, slices=[1], crop=40, maps="rss")) == 1


def test_fastmri_h5_espirit(tmp_path):
    p = tmp_path / "f.h5"
    x = _write_h5(p)
    s = load_fastmri_h5(p, slices=[0], crop=40, maps="espirit", calib_width=16)[0]
    ref = np.abs(x) / np.abs(x).max()
    inside = ref > 0.2
    # ESPIRiT maps are defined up to a per-pixel phase: compare magnitudes inside the object
    err = np.abs(s.x_ref.abs().numpy() - ref)[inside]
    assert err.max() < 0.05
    m2 = (s.sens_maps.abs() ** 2).sum(0).numpy()[inside]
    assert np.abs(m2 - 1).max() < 0.05


def test_fastmri_h5_errors(tmp_path):
    import h5py

    with pytest.raises(FileNotFoundError):
        load_fastmri_h5(tmp_path / "missing.h5")
    p = tmp_path / "single.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=np.ones((2, 8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"\[S, C, H, W\]"):
        load_fastmri_h5(p)
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="complex"):
        load_fastmri_h5(p)
    with h5py.File(p, "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 2, 8, 8), np.complex64))
    with pytest.raises(ValueError, match="crop"):
        load_fastmri_h5(p, crop=320)


# ----------------------------------------------------------------------------------------------
# AAPM npy and DICOM
# ----------------------------------------------------------------------------------------------
def test_aapm_npy(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.random((3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    np.save(tmp_path / "one.npy", stack[0])
    out = load_aapm_npy(tmp_path / "stack.npy")
    assert len(out) == 3 and out[2].name == "stack/002" and out[0].modality == "CT"
    np.testing.assert_array_equal(out[1].x_ref.numpy(), stack[1])
    assert len(load_aapm_npy(tmp_path / "one.npy")) == 1
    # the same stack in HU (window [-1000, 2000] ↔ [0, 1]) reads back as the unit stack
    np.save(tmp_path / "stack_hu.npy", stack * 3000.0 - 1000.0)
    hu = load_aapm_npy(tmp_path / "stack_hu.npy", units="hu")
    np.testing.assert_allclose(hu[0].x_ref.numpy(), stack[0], atol=1e-6)
    np.testing.assert_allclose(hu[0].x_ref.numpy(), hu_to_unit(stack[0] * 3000.0 - 1000.0), atol=1e-7)
    # a units mismatch is refused both ways, naming the setting that fixes it
    with pytest.raises(ValueError, match="units='hu'.*--config.data.units=hu"):
        load_aapm_npy(tmp_path / "stack_hu.npy")
    with pytest.raises(ValueError, match="units='unit'.*--config.data.units=unit"):
        load_aapm_npy(tmp_path / "stack.npy", units="hu")
    assert load_aapm_npy(tmp_path / "stack.npy", size=8)[0].x_ref.shape == (8, 8)
    assert [s.name for s in load_aapm_npy(tmp_path / "stack.npy", slices=[2, 0])] == ["stack/002", "stack/000"]
    with pytest.raises(ValueError, match="out of range.*--config.data.slices"):
        load_aapm_npy(tmp_path / "stack.npy", slices=[3])
    np.save(tmp_path / "c.npy", stack.astype(np.complex64))
    with pytest.raises(ValueError, match="real"):
        load_aapm_npy(tmp_path / "c.npy")
    np.save(tmp_path / "4d.npy", stack[None])
    with pytest.raises(ValueError, match="shape"):
        load_aapm_npy(tmp_path / "4d.npy")
    with pytest.raises(FileNotFoundError):
        load_aapm_npy(tmp_path / "none.npy")


def test_dicom_ct_and_mr(tmp_path):
    """DICOM CT → HU → [0, 1]; a series sorted by InstanceNumber; MR magnitude → complex (our own
    fixture, tests/dicom_fixture.py, made from a shipped slice)."""
    import pydicom

    from tests.dicom_fixture import FIXTURE, source_hu, write_ct_dicom

    ds = pydicom.dcmread(FIXTURE)
    out = load_dicom(FIXTURE)
    assert len(out) == 1 and out[0].modality == "CT"
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(hu, source_hu(), atol=0.5 + 1e-9)       # 16-bit rounding of the HU values
    assert out[0].x_ref.shape == ds.pixel_array.shape == (128, 128) and out[0].x_ref.dtype == torch.float32
    np.testing.assert_allclose(out[0].x_ref.numpy(), hu_to_unit(hu), atol=1e-6)
    # area averaging back to 64² gives the shipped 64² slice it was made from (HU rounding: 0.5/3000)
    small = load_dicom(FIXTURE, size=64)[0].x_ref.numpy()
    np.testing.assert_allclose(small, np.load(ROOT / "indist_samples/CT/cranium/048.npy"), atol=0.5 / 3000 + 1e-6)
    # a folder of two slices, sorted by InstanceNumber, one of them re-labelled MR
    d = tmp_path / "series"
    d.mkdir()
    for inst, name in ((2, "a.dcm"), (1, "b.dcm")):
        write_ct_dicom(d / name, source_hu(), instance=inst, uid_suffix=str(inst))
    (d / "notes.txt").write_text("not dicom")
    series = load_dicom(d)
    assert [s.meta["file"].endswith(n) for s, n in zip(series, ("b.dcm", "a.dcm"))] == [True, True]
    ds.Modality = "MR"
    ds.save_as(tmp_path / "mr.dcm")
    mr = load_dicom(tmp_path / "mr.dcm")[0]
    assert mr.modality == "MRI" and mr.x_ref.dtype == torch.complex64
    assert float(mr.x_ref.abs().max()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(mr.x_ref.abs().numpy(), np.abs(hu) / np.abs(hu).max(), atol=1e-6)
    mr_ph = load_dicom(tmp_path / "mr.dcm", phase_seed=4)[0]
    torch.testing.assert_close(mr_ph.x_ref.abs(), mr.x_ref.abs(), atol=1e-6, rtol=0)
    assert float(mr_ph.x_ref.angle().abs().max()) > 0.1
    assert load_dicom(tmp_path / "mr.dcm", size=64)[0].x_ref.shape == (64, 64)
    with pytest.raises(FileNotFoundError):
        load_dicom(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no files"):
        load_dicom(tmp_path / "empty")
    with pytest.raises(ValueError, match="DICOM"):
        load_dicom(d / "notes.txt")


# ----------------------------------------------------------------------------------------------
# Shipped samples and the train / held-out split
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest():
    with open(SAMPLES / "manifest.json") as f:
        return json.load(f)


def test_shipped_mri_samples(manifest):
    from physics.coils import synthetic_coil_maps

    mri = load_dds_folder(SAMPLES, "MRI")
    idx = manifest["volumes"]["MRI/colin27"]["sample_slices"]
    n = manifest["sample_resolution"][0]
    assert n == 64  # the resolution of the shipped priors
    assert len(mri) >= 6 and [s.name for s in mri] == [f"colin27/{k:03d}" for k in idx]
    for s, k in zip(mri, idx):
        assert s.x_ref.shape == (n, n) and s.x_ref.dtype == torch.complex64
        mag = s.x_ref.abs()
        assert float(mag.max()) <= 1.0 + 1e-5 and float(mag.max()) > 0.9  # max 1 at 128², area-resampled
        assert float((mag > 0.1).float().mean()) > 0.3  # a real head slice, not an empty one
        assert float(s.x_ref.angle().std()) > 0.1  # complex, not a real image stored as complex
        assert s.sens_maps.shape == (8, n, n) and s.sens_maps.dtype == torch.complex64
        torch.testing.assert_close(s.sens_maps, synthetic_coil_maps(8, n, n, seed=k).to(torch.complex64))


def test_shipped_ct_samples(manifest):
    ct = load_dds_folder(SAMPLES, "CT")
    idx = manifest["volumes"]["CT/cranium"]["sample_slices"]
    n = manifest["sample_resolution"][0]
    assert len(ct) >= 6 and [s.name for s in ct] == [f"cranium/{k:03d}" for k in idx]
    for s in ct:
        x = s.x_ref
        assert x.shape == (n, n) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert float(x.max()) > 0.6  # skull (bone) present
        centre = x[n * 11 // 32: n * 21 // 32, n * 11 // 32: n * 21 // 32]
        assert 0.3 < float(centre.median()) < 0.4  # brain ≈ (40 + 1000) / 3000


def test_manifest_split_has_gap(manifest):
    gap = manifest["gap"]
    assert gap >= 5
    assert manifest["ct_window"]["hu_min"] == HU_MIN and manifest["ct_window"]["hu_max"] == HU_MAX
    for key in ("CT/cranium", "MRI/colin27"):
        v = manifest["volumes"][key]
        held, train = v["heldout_slices"], v["train_slices"]
        assert held == list(range(held[0], held[-1] + 1)), "held-out block must be contiguous"
        assert len(train) > 50 and len(held) >= 6
        # no overlap, and at least `gap` unused slices between training and held-out slices
        assert min(abs(t - h) for t in train for h in held) >= gap + 1
        assert set(v["sample_slices"]) <= set(held)
        assert set(v["excluded_gap_slices"]).isdisjoint(train)
        prepare_data.check_split(train, held, gap)  # the script's own check agrees
        assert "licence" in v and v["licence"]
    # ITK BrainWeb slices (same Colin27 anatomy) used for training lie far from the held-out block
    held = manifest["volumes"]["MRI/colin27"]["heldout_slices"]
    for e in manifest["extra_training"]:
        if "colin27_match_index" in e and "dropped" not in e:
            k = e["colin27_match_index"]
            assert k < held[0] - gap or k > held[-1] + gap, e["file"]
    assert set(manifest["licences"]) == {"invesalius-examples", "mricron-data", "insighttoolkit5-examples"}


def test_split_logic():
    held = list(range(10, 14))
    train = prepare_data.split_indices(range(30), held, gap=5)
    assert train == list(range(0, 5)) + list(range(19, 30))
    prepare_data.check_split(train, held, 5)
    with pytest.raises(ValueError, match="neighbour"):
        prepare_data.check_split(train + [18], held, 5)
    with pytest.raises(ValueError, match="neighbour"):
        prepare_data.check_split([11], held, 5)
    with pytest.raises(ValueError, match="contiguous"):
        prepare_data.check_split([0], [10, 12], 5)


# ----------------------------------------------------------------------------------------------
# val_samples / ood_samples and the hold-outs of the broad priors
# ----------------------------------------------------------------------------------------------
VAL, OOD = ROOT / "val_samples", ROOT / "ood_samples"


def _sample_manifest(root):
    with open(root / "manifest.json") as f:
        return json.load(f)


@pytest.mark.parametrize("root", [VAL, OOD], ids=["val", "ood"])
def test_shipped_val_and_ood_samples(root):
    import hashlib

    from physics.coils import synthetic_coil_maps

    man = _sample_manifest(root)
    n = man["sample_resolution"][0]
    assert n == 64
    rows = {r["file"]: r for r in man["samples"]}
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.npy") if "/mps/" not in str(p))
    assert files == sorted(rows), "manifest and folder disagree"
    for mod in ("CT", "MRI"):
        samples = load_dds_folder(root, mod)
        assert len(samples) >= 6
        for s in samples:
            r = next(r for r in rows.values() if r["modality"] == mod and f"{r['volume']}/{r['name']}" == s.name)
            a = np.load(root / r["file"])
            assert hashlib.sha256(a.tobytes()).hexdigest() == r["sha256"]
            assert r["licence"] and r["source"] and r["package"]
            x = s.x_ref
            assert x.shape == (n, n)
            if mod == "CT":
                assert x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
                assert float((x > 0.2).float().mean()) > 0.05   # a head, not an empty slice
                continue
            assert x.dtype == torch.complex64 and 0.9 < float(x.abs().max()) <= 1.05
            assert float(x.angle()[x.abs() > 0.2].std()) > 0.05  # complex, with a phase
            S = s.sens_maps
            assert S.shape == (8, n, n) and S.dtype == torch.complex64
            m2 = (S.abs() ** 2).sum(0)
            if r["maps"] == "synthetic":
                torch.testing.assert_close(S, synthetic_coil_maps(8, n, n, seed=r["maps_seed"]).to(torch.complex64))
            else:
                assert r["maps"] == "espirit"
                inside = x.abs() > 0.1 * float(x.abs().max())
                assert float((m2[inside] - 1).abs().median()) < 0.05      # Σ|S|² ≈ 1 on the object
                # the image is the coil combination of the maps: no signal where the maps vanish
                out = x.abs()[m2 < 1e-6]
                assert out.numel() == 0 or float(out.max()) < 1e-6


def test_val_and_ood_are_disjoint_from_training_and_test():
    """Slice-level: the ID validation slices are held-out slices of the training volumes that are
    not in indist_samples; scan/region-level: the OOD volumes are not the validation volumes, and
    the broad CT prior's training slices keep GAP slices from every held-out block."""
    val, ood, ind = _sample_manifest(VAL), _sample_manifest(OOD), json.loads((SAMPLES / "manifest.json").read_text())
    ct_held = ind["volumes"]["CT/cranium"]["heldout_slices"]
    mr_held = ind["volumes"]["MRI/colin27"]["heldout_slices"]
    for r in val["samples"]:
        if r["volume"] == "cranium_heldout":
            assert r["slice"] in ct_held and r["slice"] not in ind["volumes"]["CT/cranium"]["sample_slices"]
        if r["volume"] == "colin27_heldout":
            assert r["slice"] in mr_held and r["slice"] not in ind["volumes"]["MRI/colin27"]["sample_slices"]
    val_vols = {(r["modality"], r["volume"]) for r in val["samples"]}
    ood_vols = {(r["modality"], r["volume"]) for r in ood["samples"]}
    assert not val_vols & ood_vols
    val_src = {r["source"] for r in val["samples"] if r["modality"] == "MRI"}
    assert not val_src & {r["source"] for r in ood["samples"] if r["modality"] == "MRI"}
    assert {r["maps"] for r in ood["samples"] if r["modality"] == "MRI"} == {"espirit"}
    # CT: one training scan only, so the broad prior holds out whole regions (with a gap) of it for
    # val / OOD; the other OOD CT slices come from another scan (tests/test_ood_ct.py)
    blocks = val["broad_prior_training_excludes"]["CT"]["cranium_heldout_blocks"]
    gap = val["broad_prior_training_excludes"]["CT"]["gap"]
    train = prepare_data.split_indices_blocks(range(101), blocks, gap)
    ct_rows = [r for r in val["samples"] + ood["samples"] if r["modality"] == "CT"]
    for r in ct_rows:
        if r["source"] != ind["volumes"]["CT/cranium"]["source"]:
            assert r in ood["samples"] and "slice" not in r     # not a slice of the training scan
            continue
        assert any(r["slice"] in b for b in blocks)
        assert min(abs(r["slice"] - k) for k in train) > gap
    assert sum(r["source"] != ind["volumes"]["CT/cranium"]["source"] for r in ct_rows) >= 3
    assert set(prepare_broad.CT_OOD) <= set(prepare_broad.CT_OOD_BLOCK)
    assert set(prepare_broad.CT_VAL_REGION) <= set(prepare_broad.CT_VAL_BLOCK)


def test_split_indices_blocks():
    train = prepare_data.split_indices_blocks(range(40), [range(0, 4), range(20, 24)], gap=2)
    assert train == list(range(6, 18)) + list(range(26, 40))   # |k - block| > gap
    with pytest.raises(ValueError, match="contiguous"):
        prepare_data.split_indices_blocks(range(40), [[1, 3]], gap=2)


def test_resize_to_and_downsample():
    img = np.arange(12.0).reshape(3, 4)
    up = prepare_broad.resize_to(img, 8)
    assert up.shape == (8, 8) and up.min() >= 0
    big = np.ones((40, 20))
    down = prepare_broad.resize_to(big, 10)
    np.testing.assert_allclose(down[:, 3:7], 1.0)          # the centred non-square image
    np.testing.assert_allclose(down[:, :2], 0.0)           # zero padding left and right
    z = (np.ones((8, 8)) * (1 + 2j)).astype(np.complex64)
    d = prepare_broad.downsample(z, 4)
    assert d.dtype == np.complex64 and np.allclose(d, 1 + 2j)


def test_espirit_from_image_on_a_phantom():
    x = np.zeros((32, 32), np.complex64)
    x[6:26, 8:24] = _phantom(20, 16, 2)
    maps, x_ref = prepare_broad.espirit_from_image(x, seed=3, calib_width=16)
    assert maps.shape == (8, 32, 32) and maps.dtype == np.complex64 and x_ref.dtype == np.complex64
    inside = np.abs(x) > 0.2
    np.testing.assert_allclose(np.abs(x_ref)[inside], np.abs(x)[inside], atol=0.05)
    m2 = (np.abs(maps) ** 2).sum(0)
    assert np.abs(m2[inside] - 1).max() < 0.05
    assert (m2[:2] < 1e-6).all()                           # maps vanish in the empty border
