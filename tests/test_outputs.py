"""Tests of the output side: run folders, atomic writes, resume, summaries, plots, callback."""
from __future__ import annotations

import json
import math
import shutil

import matplotlib.image as mimage
import numpy as np
import pytest
import torch

from utils import plots
from utils.fileio import atomic_write_text, atomic_writer, read_csv, write_csv
from utils.provenance import git_info
from utils.run_dir import METRIC_COLUMNS, make_run_dir
from utils.run_log import MetricsCallback, summarize, summary_markdown


def _psnr_standin(x_hat, x_ref):
    """Magnitude PSNR with data_range = max|ref| (fastMRI convention), per batch mean."""
    a, b = x_hat.abs().double(), x_ref.abs().double()
    mse = ((a - b) ** 2).flatten(1).mean(1)
    dr = b.flatten(1).amax(1)
    return 10 * torch.log10(dr ** 2 / mse)


def _compute_standin(x_hat, x_ref):
    a, b = x_hat.abs().double(), x_ref.abs().double()
    nmse = ((a - b) ** 2).sum() / (b ** 2).sum()
    return {"psnr": _psnr_standin(x_hat, x_ref), "ssim": torch.tensor(0.5), "nmse": nmse}


def _metrics_fn():
    """The real utils.metrics.compute_metrics if present, else the local stand-in."""
    try:
        from utils.metrics import compute_metrics  # noqa: F401
        return None  # MetricsCallback default
    except ImportError:
        return _compute_standin


def _img(seed=0, n=16, complex_=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, n, n, generator=g)
    return torch.complex(x, 0.1 * torch.rand(1, n, n, generator=g)) if complex_ else x


def _tiny_pair():
    ref = torch.ones(1, 8, 8)
    ref[0, 2:6, 2:6] = 0.5
    return ref, ref + 0.1  # MSE 0.01, data_range 1 -> PSNR 20 dB


# ------------------------------------------------------------------------------------ run dir
def test_run_dir_never_overwritten(tmp_path):
    a = make_run_dir(tmp_path, name="same", write_meta=False)
    atomic_write_text(a.path / "marker.txt", "first")
    b = make_run_dir(tmp_path, name="same", write_meta=False)
    c = make_run_dir(tmp_path, name="same", write_meta=False)
    assert len({a.path, b.path, c.path}) == 3
    assert (a.path / "marker.txt").read_text() == "first"
    assert not (b.path / "marker.txt").exists()
    assert all(p.path.name.split("_", 1)[1].startswith("same") for p in (a, b, c))
    # resume reopens the same folder
    r = make_run_dir(tmp_path, resume=a.path, write_meta=False)
    assert r.path == a.path
    with pytest.raises(FileNotFoundError):
        make_run_dir(tmp_path, resume=tmp_path / "nope", write_meta=False)


def test_meta_and_config(tmp_path, monkeypatch):
    rd = make_run_dir(tmp_path, name="m", config={"lr": 1e-3, "steps": 3}, device="cpu",
                      argv=["main.py", "--deg", "SV-CT"])
    meta = json.loads((rd.path / "meta.json").read_text())
    assert meta["argv"] == ["main.py", "--deg", "SV-CT"] and "--deg SV-CT" in meta["command"]
    assert meta["torch"] == torch.__version__ and meta["device"] == "cpu"
    assert "commit" in meta["git"] and "dirty" in meta["git"]
    assert json.loads((rd.path / "config.json").read_text()) == {"lr": 1e-3, "steps": 3}
    # not a git repository: no exception, commit None
    info = git_info(tmp_path)
    assert info["available"] is False and info["commit"] is None and info["error"]


# ------------------------------------------------------------------------------- atomic writes
def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.json"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(p, "w") as f:
            f.write("new, half written")
            raise RuntimeError("killed midway")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]  # no temp files left
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.json"]


# -------------------------------------------------------------------------------------- resume
def _run(rd, slices, solver="dip", crash_after=None, crash_before_csv=False, monkeypatch=None):
    done = []
    for i, name in enumerate(slices):
        if rd.is_done(solver, name):
            continue
        if crash_after is not None and i >= crash_after:
            raise KeyboardInterrupt  # simulated kill
        ref, rec = _img(i), _img(i + 10)
        cb = MetricsCallback(ref, compute=_compute_standin)
        for step in range(3):
            cb(step, rec + (2 - step) * 0.05, {"loss": torch.tensor(1.0 / (step + 1))})
        rd.save_slice(solver, name, deg="MRI-multi", recon=rec, ref=ref, inp=ref * 0.5,
                      metrics={"psnr": 30.0 + i, "ssim": 0.9, "nmse": 0.01},
                      input_metrics={"psnr": 20.0, "ssim": 0.5}, history=cb, seconds=1.0,
                      input_label="zero-filled", plots=False)
        done.append(name)
    return done


def test_resume_skips_finished_and_no_duplicates(tmp_path):
    slices = ["s0", "s1", "s2"]
    rd = make_run_dir(tmp_path, name="res", write_meta=False)
    with pytest.raises(KeyboardInterrupt):
        _run(rd, slices, crash_after=2)
    assert [r["slice"] for r in rd.read_metrics()] == ["s0", "s1"]
    # also simulate a kill between DONE and the CSV update of s1: drop its row
    rows = rd.read_metrics()
    write_csv(rd.metrics_csv, rows[:1], METRIC_COLUMNS)
    # a half-written s2 (files but no DONE marker) must be redone
    (rd.slice_dir("dip", "s2", create=True) / "recon.npy").write_bytes(b"garbage")

    rd2 = make_run_dir(tmp_path, resume=rd.path, write_meta=False)
    assert [r["slice"] for r in rd2.read_metrics()] == ["s0", "s1"]  # s1 restored from JSON
    done = _run(rd2, slices)
    assert done == ["s2"]  # the two finished slices were skipped
    rows = read_csv(rd2.metrics_csv)
    assert len(rows) == 3 and sorted(r["slice"] for r in rows) == slices
    assert list(rows[0].keys())[: len(METRIC_COLUMNS)] == list(METRIC_COLUMNS)
    assert np.load(rd2.slice_dir("dip", "s2") / "recon.npy").shape == (16, 16)
    # resuming again and re-appending a row changes nothing
    rd3 = make_run_dir(tmp_path, resume=rd.path, write_meta=False)
    assert rd3.append_metrics_row(rows[0]) is False
    assert len(rd3.read_metrics()) == 3
    assert not list(rd.path.rglob("*.tmp"))


# ------------------------------------------------------------------------------------ summary
def test_summary_mean_std_and_oracle_separate(tmp_path):
    rows = [
        {"solver": "a", "deg": "SV-CT", "slice": "0", "psnr": 30.0, "ssim": 0.8,
         "oracle_best_psnr": 33.0, "oracle_best_iter": 10},
        {"solver": "a", "deg": "SV-CT", "slice": "1", "psnr": "32.0", "ssim": "0.9",
         "oracle_best_psnr": "35.0", "oracle_best_iter": "20"},
        {"solver": "b", "deg": "SV-CT", "slice": "0", "psnr": 25.0, "ssim": None,
         "oracle_best_psnr": None, "oracle_best_iter": None},
    ]
    s = summarize(rows)
    ga, gb = s["groups"]
    assert (ga["solver"], ga["n"], gb["solver"], gb["n"]) == ("a", 2, "b", 1)
    assert ga["final"]["psnr"]["mean"] == pytest.approx(31.0)
    assert ga["final"]["psnr"]["std"] == pytest.approx(1.0)  # population std of {30, 32}
    assert ga["final"]["ssim"]["mean"] == pytest.approx(0.85)
    assert gb["final"]["psnr"] == {"mean": 25.0, "std": 0.0, "n": 1}
    assert gb["final"]["ssim"]["mean"] is None
    # oracle only in the labelled block, never in the headline
    assert not any(k.startswith("oracle") for k in ga["final"])
    orc = ga["oracle_best_over_iterations"]
    assert orc["oracle_best_psnr"]["mean"] == pytest.approx(34.0)
    assert orc["oracle_best_iter"]["mean"] == pytest.approx(15.0)
    assert "ORACLE" in orc["note"]
    assert s["groups"][0]["final"]["psnr"]["mean"] != orc["oracle_best_psnr"]["mean"]
    md = summary_markdown(s)
    assert "31.00 ± 1.00" in md and "Oracle" not in md
    assert "Oracle best PSNR*" in summary_markdown(s, oracle=True)
    # sample std option
    assert summarize(rows, ddof=1)["groups"][0]["final"]["psnr"]["std"] == pytest.approx(
        math.sqrt(2.0))


def test_run_summary_json(tmp_path):
    rd = make_run_dir(tmp_path, name="sum", write_meta=False)
    _run(rd, ["s0", "s1"])
    with rd.timer("load") as t:
        pass
    assert t.seconds >= 0
    s = rd.write_summary()
    disk = json.loads((rd.path / "summary.json").read_text())
    g = disk["groups"][0]
    assert g["final"]["psnr"]["mean"] == pytest.approx(30.5)
    assert g["oracle_best_over_iterations"]["oracle_best_psnr"]["n"] == 2
    assert "load" in disk["timings_seconds"] and s["run"] == rd.name
    res = json.loads((rd.slice_dir("dip", "s0") / "result.json").read_text())
    assert res["row"]["oracle_best_iter"] == 2  # psnr increases with step in _run
    assert (rd.slice_dir("dip", "s0") / "curves.csv").exists()


# -------------------------------------------------------------------------------------- plots
def _check_png(path):
    img = mimage.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 10 and img.shape[1] > 10


def test_pngs_valid(tmp_path):
    ref, rec = _img(0), _img(1)
    plots.save_image_png(tmp_path / "rec.png", rec)
    assert mimage.imread(str(tmp_path / "rec.png")).shape[:2] == (16, 16)
    plots.comparison_figure(tmp_path / "cmp.png", ref, ref * 0.5, rec,
                            input_metrics={"psnr": 20.0, "ssim": 0.5},
                            rec_metrics={"psnr": torch.tensor(30.0), "ssim": 0.9},
                            input_label="zero-filled", suptitle="slice 0")
    plots.comparison_figure(tmp_path / "cmp_ct.png", ref.real, None, rec.real)  # CT, no input
    hist = {"step": [0, 10, 20], "psnr": [20.0, 25.0, 24.0], "ssim": [0.5, 0.7, 0.6],
            "loss": [1.0, 0.5, 0.2], "phase": ["a", "a", "b"]}
    plots.curves_png(tmp_path / "curves.png", hist, title="t")
    plots.loss_curve_png(tmp_path / "loss.png", [1.0, 0.8, 0.5, 0.4, 0.3], smooth=2)
    plots.loss_curve_png(tmp_path / "loss2.png", {"train": [1, 0.5], "val": [0.9, 0.7]})
    for n in ("cmp.png", "cmp_ct.png", "curves.png", "loss.png", "loss2.png"):
        _check_png(tmp_path / n)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError):
        plots.save_image_png(tmp_path / "bad.png", torch.zeros(2, 4, 4))


def test_done_without_result_json_is_recomputed_not_dropped(tmp_path, caplog):
    """A slice whose ``DONE`` exists but whose ``result.json`` is missing or unreadable is NOT
    finished: it is reported, left out of the rebuilt metrics.csv and computed again; names that
    a lossy folder name would merge get their own folders."""
    slices = ["CT/a_b/c.npy", "CT/a/b_c.npy", "völ/1", "väl/1"]
    rd = make_run_dir(tmp_path, name="done", write_meta=False)
    _run(rd, slices)
    assert len({rd.slice_dir("dip", n) for n in slices}) == 4
    assert sorted(r["slice"] for r in rd.read_metrics()) == sorted(slices)
    (rd.slice_dir("dip", "völ/1") / "result.json").unlink()
    (rd.slice_dir("dip", "CT/a/b_c.npy") / "result.json").write_text("{torn")
    with caplog.at_level("WARNING"):
        rd2 = make_run_dir(tmp_path, resume=rd.path, write_meta=False)
        assert sorted(r["slice"] for r in rd2.read_metrics()) == sorted(["CT/a_b/c.npy", "väl/1"])
        assert not rd2.is_done("dip", "völ/1") and not rd2.is_done("dip", "CT/a/b_c.npy")
    assert "without a readable result.json" in caplog.text
    assert sorted(_run(rd2, slices)) == sorted(["völ/1", "CT/a/b_c.npy"])    # computed again
    assert sorted(r["slice"] for r in rd2.read_metrics()) == sorted(slices)
    assert all(rd2.is_done("dip", n) for n in slices)


def test_run_folders_of_the_flat_layout_are_still_resumable(tmp_path):
    """A run written when slice folders were ``safe_name(slice)`` (flat): its finished slices are
    recognised by the slice name in their result.json, and only those."""
    from utils.fileio import safe_name

    rd = make_run_dir(tmp_path, name="old", write_meta=False)
    _run(rd, ["vol/000"])
    new, old = rd.slice_dir("dip", "vol/000"), rd.path / "slices" / "dip" / safe_name("vol/000")
    shutil.move(str(new), str(old))
    assert rd.is_done("dip", "vol/000") and not rd.is_done("dip", "vol_000")


def test_save_slice_writes_all_files(tmp_path):
    rd = make_run_dir(tmp_path, name="files", write_meta=False)
    ref, rec = _img(0), _img(1)
    cb = MetricsCallback(ref, compute=_compute_standin)
    cb(0, rec, {"loss": 1.0})
    cb(5, rec, {"loss": 0.5})
    row = rd.save_slice("udig", "file1/slice 3", deg="MRI-multi", recon=rec, ref=ref,
                        inp=ref * 0.5, metrics={"psnr": 30.0, "ssim": 0.9, "nmse": 0.1},
                        input_metrics={"psnr": 20.0, "ssim": 0.5}, history=cb, seconds=2.0,
                        solver_history={"loss": [1.0, 0.5]})
    d = rd.slice_dir("udig", "file1/slice 3")
    for n in ("recon.npy", "recon.png", "comparison.png", "curves.csv", "curves.png",
              "solver_history.csv", "result.json", "DONE"):
        assert (d / n).exists(), n
    for n in ("recon.png", "comparison.png", "curves.png"):
        _check_png(d / n)
    arr = np.load(d / "recon.npy")
    assert arr.dtype == np.complex64 and np.allclose(arr, rec[0].numpy())
    assert rd.is_done("udig", "file1/slice 3") and not rd.is_done("udig", "other")
    assert row["slice"] == "file1/slice 3" and row["oracle_best_iter"] in (0, 5)
    assert read_csv(rd.metrics_csv)[0]["psnr"] == 30.0
    # metrics omitted: computed from ref with utils.metrics (if available), no history
    pytest.importorskip("utils.metrics")
    row2 = rd.save_slice("udig", "s2", deg="SV-CT", recon=ref.real + 0.1, ref=ref.real,
                         inp=ref.real, plots=False)
    assert row2["input_psnr"] == math.inf or row2["input_psnr"] > 100
    assert row2["oracle_best_psnr"] is None and row2["ssim"] is not None
    assert len(read_csv(rd.metrics_csv)) == 2
    rd.save_slice("udig", "s2", deg="SV-CT", recon=ref.real, metrics={"psnr": 99.0}, plots=False)
    rows = read_csv(rd.metrics_csv)  # re-saving a slice replaces its row, never duplicates
    assert len(rows) == 2 and rows[-1]["psnr"] == 99.0


# ---------------------------------------------------------------------------------- callback
def test_metrics_callback_no_mutation_and_right_psnr():
    ref, x = _tiny_pair()
    x_before = x.clone()
    cb = MetricsCallback(ref, every=2, compute=_metrics_fn())
    for step in range(5):
        cb(step, x, {"loss": torch.tensor(0.25), "data_fit": 3, "phase": "dip", "x_gt": ref,
                     "big": torch.zeros(4)})
    assert torch.equal(x, x_before)
    assert [r["step"] for r in cb.records] == [0, 2, 4]
    rec = cb.last()
    assert rec["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert rec["loss"] == 0.25 and rec["data_fit"] == 3.0 and rec["phase"] == "dip"
    assert "x_gt" not in rec and "big" not in rec
    h = cb.history
    assert h["step"] == [0, 2, 4] and len(h["psnr"]) == 3
    assert cb.oracle() == {"oracle_best_psnr": pytest.approx(20.0, abs=1e-4),
                           "oracle_best_iter": 0}


def test_metrics_callback_oracle_and_inplace_compute():
    """A compute function that mutates its input must not reach the solver's tensor."""
    ref = torch.ones(1, 4, 4)

    def evil(x_hat, x_ref):
        out = _compute_standin(x_hat, x_ref)
        x_hat.mul_(0)
        return out

    cb = MetricsCallback(ref, compute=evil)
    xs = [ref + 0.3, ref + 0.1, ref + 0.2]
    keep = [x.clone() for x in xs]
    for i, x in enumerate(xs):
        cb(i * 10, x, {})
    assert all(torch.equal(a, b) for a, b in zip(xs, keep))
    assert cb.oracle()["oracle_best_iter"] == 10
    assert cb.oracle()["oracle_best_psnr"] == pytest.approx(20.0, abs=1e-4)
