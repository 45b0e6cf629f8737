"""Real data from elsewhere through ``main.py`` with the shipped 64² priors, end to end, each with
at most two ``config.data`` fields: a 128² DICOM CT in HU, a fastMRI multi-coil ``.h5``, AAPM
``.npy`` stacks in HU and in [0, 1], a DDS folder at 128²; slice names that a lossy folder name
would merge; and a slice's result alone against the same slice inside a larger folder.

Tiny budgets (2 DDS steps, 2 uDiG-DIP steps with an 8-channel U-Net); the runs of this module are
started together, two at a time (tests/cli_batch.py)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.main_runs import ROOT, TINY, metrics_rows, run_all, slice_dir

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED_CT = ROOT / "indist_samples" / "CT" / "cranium"


def _fastmri_file(path: Path, S: int = 2, C: int = 4, H: int = 352, W: int = 336) -> Path:
    """A fastMRI-like multi-coil file: k-space ``[S, C, H, W]`` of a shipped 64² MRI slice placed,
    up-sampled 5×, in the middle of an ``H × W`` field of view (readout oversampled as in fastMRI,
    so the default 320 crop applies)."""
    import h5py

    from physics.mri import fft2c
    from utils.data import load_dds_folder
    from utils.synthetic import simulate_multicoil

    x64 = load_dds_folder(ROOT / "indist_samples", "MRI", max_samples=1)[0].x_ref.numpy()
    img = np.zeros((H, W), np.complex64)
    big = np.kron(x64, np.ones((5, 5), np.float32))
    t, l = (H - 320) // 2, (W - 320) // 2
    img[t:t + 320, l:l + 320] = big
    coils, _ = simulate_multicoil(torch.from_numpy(img), num_coils=C, seed=3)
    k = fft2c(coils).numpy()
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=np.stack([k * (1 + 0.1 * s) for s in range(S)]))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_data")
    u48, u50 = np.load(SHIPPED_CT / "048.npy"), np.load(SHIPPED_CT / "050.npy")
    up = lambda a: np.kron(a, np.ones((2, 2)))  # noqa: E731  (area-averages back to a exactly)
    np.save(tmp / "aapm_hu_128.npy", np.stack([up(u48), up(u50)]) * 3000.0 - 1000.0)
    np.save(tmp / "aapm_unit_64.npy", u48)
    (tmp / "dds128" / "CT" / "cranium").mkdir(parents=True)
    np.save(tmp / "dds128" / "CT" / "cranium" / "048.npy", up(u48).astype(np.float32))
    (tmp / "alone" / "CT" / "cranium").mkdir(parents=True)
    shutil.copy(SHIPPED_CT / "050.npy", tmp / "alone" / "CT" / "cranium" / "050.npy")
    for vol, name in (("a_b", "c"), ("a", "b_c"), ("völ", "1"), ("väl", "1")):
        (tmp / "names" / "CT" / vol).mkdir(parents=True)
        np.save(tmp / "names" / "CT" / vol / f"{name}.npy", u48)
    _fastmri_file(tmp / "knee.h5")
    return tmp


DIP = ["--config.solver_cfg.udigdip.log_every=1"]
RUNS = {
    # name: (arguments, degradation, slice names expected)
    "dicom": (["--deg=SV-CT", "--solver=udigdip,dds", "--data=tests/data/ct_hu_128.dcm",
               "--config.data.image_size=64"], "SV-CT", ["ct_hu_128"]),
    "fastmri": (["--deg=MRI-multi", "--solver=dds", "--data={tmp}/knee.h5", "--config.data.image_size=64",
                 "--max_slices=0"], "MRI-multi", ["knee/000", "knee/001"]),
    "aapm_hu": (["--deg=SV-CT", "--solver=dds", "--data={tmp}/aapm_hu_128.npy", "--config.data.units=hu",
                 "--config.data.image_size=64", "--max_slices=0"], "SV-CT", ["aapm_hu_128/000", "aapm_hu_128/001"]),
    "aapm_unit": (["--deg=SV-CT", "--solver=dds", "--data={tmp}/aapm_unit_64.npy"], "SV-CT", ["aapm_unit_64/000"]),
    "dds128": (["--deg=SV-CT", "--solver=dds", "--data={tmp}/dds128", "--config.data.image_size=64"], "SV-CT",
               ["cranium/048"]),
    "names": (["--deg=SV-CT", "--solver=dds", "--data={tmp}/names", "--max_slices=0"], "SV-CT",
              ["a/b_c", "a_b/c", "väl/1", "völ/1"]),
    "alone": (["--deg=SV-CT", "--solver=udigdip,dds", "--data={tmp}/alone"], "SV-CT", ["cranium/050"]),
    "folder": (["--deg=SV-CT", "--solver=udigdip,dds", "--max_slices=2"], "SV-CT", ["cranium/048", "cranium/050"]),
}


@pytest.fixture(scope="module")
def runs(data):
    cases = {name: [f"--workdir={data / 'work' / name}", *TINY, *DIP, *(a.format(tmp=data) for a in args)]
             for name, (args, _, _) in RUNS.items()}
    out = run_all(cases, workers=2, timeout=900)
    dirs = {}
    for name, proc in out.items():
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        dirs[name] = Path(re.findall(r"^run folder: (.+)$", proc.stdout, flags=re.M)[-1].strip())
    return dirs


@pytest.mark.parametrize("name", list(RUNS))
def test_real_data_runs_with_the_shipped_priors(runs, name):
    args, deg, names = RUNS[name]
    run_dir = runs[name]
    solvers = [s for a in args if a.startswith("--solver=") for s in a.split("=")[1].split(",")]
    rows = metrics_rows(run_dir)
    assert sorted((r["solver"], r["slice"]) for r in rows) == sorted((s, f"{deg}_{n}") for s in solvers for n in names)
    folders = set()
    for r in rows:
        d = slice_dir(run_dir, r["solver"], r["slice"])
        assert (d / "DONE").is_file() and (d / "result.json").is_file()
        folders.add(d)
        rec = np.load(d / "recon.npy")
        assert rec.shape == (64, 64) and np.isfinite(rec).all() and np.iscomplexobj(rec) == (deg == "MRI-multi")
        # the data reached the prior on its scale: the input (zero-filled / FBP) and DDS are sensible
        # (an HU image read as [0, 1] would give a few dB)
        assert float(r["input_psnr"]) > 14, r
        if r["solver"] == "dds":
            assert float(r["psnr"]) > 10, r
    assert len(folders) == len(rows)            # distinct names → distinct folders, none skipped


def test_hu_data_equals_the_unit_data_it_was_made_from(runs):
    """The 128² HU DICOM / .npy / DDS folder, resampled to 64², reconstruct the same problems as
    the shipped 64² slices they were made from: the same FBP input quality (to HU rounding)."""
    ref = {r["slice"]: float(r["input_psnr"]) for r in metrics_rows(runs["folder"]) if r["solver"] == "dds"}
    pairs = [("dicom", "SV-CT_ct_hu_128", "SV-CT_cranium/048"), ("aapm_hu", "SV-CT_aapm_hu_128/000", "SV-CT_cranium/048"),
             ("aapm_hu", "SV-CT_aapm_hu_128/001", "SV-CT_cranium/050"), ("dds128", "SV-CT_cranium/048", "SV-CT_cranium/048"),
             ("aapm_unit", "SV-CT_aapm_unit_64/000", "SV-CT_cranium/048")]
    for run, key, shipped in pairs:
        got = {r["slice"]: float(r["input_psnr"]) for r in metrics_rows(runs[run]) if r["solver"] == "dds"}
        assert got[key] == pytest.approx(ref[shipped], abs=0.05), (run, key)


def test_a_slice_is_solved_the_same_alone_and_inside_a_larger_folder(runs):
    """Seeds follow the slice's name, not its position: cranium/050 alone in its folder and as the
    second slice of the shipped folder gives bit-identical reconstructions (uDiG-DIP and DDS)."""
    key = "SV-CT_cranium/050"
    for s in ("udigdip", "dds"):
        a = np.load(slice_dir(runs["alone"], s, key) / "recon.npy")
        b = np.load(slice_dir(runs["folder"], s, key) / "recon.npy")
        assert a.tobytes() == b.tobytes(), s
