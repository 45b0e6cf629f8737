"""The pure-python pieces of the GPU run (``bench_gpu.sh``): the paper-budget extrapolation, the
comparison of two run folders, the report bundling and summary, the process-group backend."""
from __future__ import annotations

import json

import numpy as np
import pytest

import bench_budget
import bench_report
from bench_checks import compare_runs
from utils.distributed import process_group_backend
from utils.run_dir import make_run_dir


# ------------------------------------------------------------------------ paper-budget lines
def _row(solver, variant, points, B=1, target=bench_budget.PAPER_K):
    return {"solver": solver, "variant": variant, "B": B, "target_units": target,
            "measured": [{"units": u, "seconds": t} for u, t in points]}


def test_extrapolation_is_exact_for_a_linear_input():
    a, b = 0.5, 0.25                       # seconds = a + b·units, exact in binary floating point
    seq = _row("aseqdip", "default", [(2, a + 2 * b), (12, a + 12 * b)])
    bench_budget.extrapolate(seq, [seq])
    K = bench_budget.PAPER_K
    assert seq["extrapolated"] is True
    assert (seq["intercept_s"], seq["slope_s_per_unit"]) == (a, b)
    assert seq["seconds_per_slice"] == a + b * K

    batched = _row("aseqdip", "batched", [(2, a + 2 * b), (12, a + 12 * b)], B=4)
    bench_budget.extrapolate(batched, [batched])
    assert batched["seconds_per_slice"] == (a + b * K) / 4


def test_udigdip_counts_purification_only_in_its_window():
    a, b_seq, b_u = 0.5, 0.25, 0.375       # uDiG-DIP measured with purification in every outer iteration
    seq = _row("aseqdip", "default", [(2, a + 2 * b_seq), (12, a + 12 * b_seq)])
    udig = _row("udigdip", "default", [(2, a + 2 * b_u), (12, a + 12 * b_u)])
    rows = [udig, seq]
    for r in rows:
        bench_budget.extrapolate(r, rows)
    K = bench_budget.PAPER_K
    k_p = round(bench_budget.purify_window() * K)
    assert 0 < k_p < K
    assert udig["purify_s_per_outer"] == b_u - b_seq
    assert udig["purified_outer_iterations"] == k_p
    assert udig["seconds_per_slice"] == a + b_seq * K + (b_u - b_seq) * k_p

    alone = _row("udigdip", "naive", [(2, a + 2 * b_u), (12, a + 12 * b_u)])
    bench_budget.extrapolate(alone, [alone])          # no aSeqDIP row: every iteration purified
    assert alone["seconds_per_slice"] == a + b_u * K and "upper bound" in alone["note"]


def test_measured_at_target_is_not_extrapolated_and_ratios():
    dds = _row("dds", "default", [(50, 2.0)], target=50)
    udig = _row("udigdip", "default", [(50, 30.0)], target=50)
    failed = {**_row("dps", "default", [(5, 1.0)], target=100), "error": "boom"}
    rows = [dds, udig, failed]
    for r in rows:
        bench_budget.extrapolate(r, rows)
    assert dds["seconds_per_slice"] == 2.0 and dds["extrapolated"] is False
    assert "seconds_per_slice" not in failed
    rat = bench_budget.ratios(rows)
    assert rat["udigdip_to_dds"]["default"] == 15.0 == rat["udigdip_to_dds"]["best_vs_best"]


# ------------------------------------------------------------------------ run-folder comparison
def _run(root, name, recons: dict, psnr: dict, seconds=1.0):
    """A run folder with one finished slice per entry of ``recons`` ({slice: array})."""
    rd = make_run_dir(root, name=name, write_meta=False)
    for sl, x in recons.items():
        rd.save_slice("udigdip", sl, deg="MRI-multi", recon=x, metrics={"psnr": psnr[sl], "ssim": 0.5, "nmse": 0.1},
                      input_metrics={"psnr": 10.0, "ssim": 0.2}, seconds=seconds, plots=False)
    rd.write_summary()
    return rd.path


@pytest.fixture
def slices():
    g = np.random.default_rng(0)
    return {f"vol/s{i}": (g.standard_normal((8, 8)) + 1j * g.standard_normal((8, 8))).astype(np.complex64)
            for i in range(3)}


def test_compare_runs_identical_pair(tmp_path, slices):
    psnr = {"vol/s0": 20.1, "vol/s1": 23.7, "vol/s2": 0.1 + 0.2}
    a = _run(tmp_path / "a", "one", slices, psnr, seconds=1.0)
    # another run of the same slices, finished in another order and slower: times and order aside, equal
    b = _run(tmp_path / "b", "ranks", dict(reversed(list(slices.items()))), psnr, seconds=7.0)
    res = compare_runs(a, b)
    assert res["slices"] == 3 and res["missing"] == []
    assert res["metrics_equal"] and res["recons_bit_identical"] and res["summary_equal"]
    assert res["max_abs_recon_diff"] == 0.0


def test_compare_runs_differing_pair(tmp_path, slices):
    psnr = {"vol/s0": 20.0, "vol/s1": 23.0, "vol/s2": 21.0}
    a = _run(tmp_path / "a", "one", slices, psnr)
    other = dict(slices)
    other["vol/s1"] = other["vol/s1"].copy()
    other["vol/s1"][3, 4] += np.float32(0.5)
    b = _run(tmp_path / "b", "two", other, {**psnr, "vol/s2": 21.5})
    res = compare_runs(a, b)
    assert not res["recons_bit_identical"] and res["max_abs_recon_diff"] == pytest.approx(0.5)
    assert not res["metrics_equal"] and res["max_abs_metric_diff"] == pytest.approx(0.5)
    assert not res["summary_equal"]

    c = _run(tmp_path / "c", "short", {k: slices[k] for k in ("vol/s0", "vol/s1")}, psnr)
    res = compare_runs(a, c)
    assert res["missing"] == [["udigdip", "MRI-multi", "vol/s2"]]
    assert not (res["metrics_equal"] or res["recons_bit_identical"] or res["summary_equal"])


# ------------------------------------------------------------------------------------ report
def _bench_part(device="cuda", modality="CT"):
    rows = []
    for impl, graph, bf16, B, s, mfu in [("vmap", False, True, 1, 0.0211, 0.011), ("vmap", True, True, 1, 0.00512, 0.044),
                                         ("grouped_cl", True, True, 1, 0.00326, 0.070),
                                         ("grouped_cl", True, True, 8, 0.00327, 0.069),
                                         ("grouped_cl", True, False, 1, 0.00611, 0.037)]:
        rows.append({"device": device, "modality": modality, "net_impl": impl, "cuda_graph": graph, "bf16": bf16,
                     "B": B, "seconds_per_step": s * B, "seconds_per_slice_step": s, "tflops_per_s": 1.0, "mfu": mfu})
    return {"dip_batched": rows}


def _budget_part():
    rows = [{"solver": "udigdip", "variant": "default", "B": 1, "measured": [{"units": 2, "seconds": 1.0},
                                                                            {"units": 12, "seconds": 4.0}],
             "seconds_per_slice": 612.5, "extrapolated": True, "purify_s_per_outer": 0.0123},
            {"solver": "dds", "variant": "default", "B": 1, "measured": [{"units": 50, "seconds": 49.0}],
             "seconds_per_slice": 49.0, "extrapolated": False}]
    return {"paper_budget": [{"device": "cuda", "modality": "CT", "size": 256, "dip_steps": 20000, "rows": rows,
                              "ratios": bench_budget.ratios(rows)}]}


def test_summary_renders_the_numbers_of_a_bundle(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "dip_ct256.json").write_text(json.dumps(_bench_part()))
    (tmp_path / "parts" / "budget_ct256.json").write_text(json.dumps(_budget_part()))
    (tmp_path / "parts" / "compare.json").write_text(json.dumps(
        {"run_a": "a", "run_b": "b", "slices": 8, "missing": [], "metrics_equal": True, "max_abs_metric_diff": 0.0,
         "recons_bit_identical": True, "max_abs_recon_diff": 0.0, "summary_equal": True, "summary_max_rel_diff": 0.0}))
    (tmp_path / "parts" / "wall.json").write_text(json.dumps({"nproc": 2, "ranks_s": 20.0, "one_process_s": 30.0}))
    P = tmp_path / "parts"
    bench_report.bundle(tmp_path / "dip_step.json", [f"ct256={P / 'dip_ct256.json'}", f"mri320={P / 'nope.json'}"])
    bench_report.bundle(tmp_path / "budget.json", [f"ct256={P / 'budget_ct256.json'}"])
    bench_report.bundle(tmp_path / "multigpu.json", [f"compare={P / 'compare.json'}", f"wall={P / 'wall.json'}"])
    (tmp_path / "sections.tsv").write_text("dip_ct256\tok\t61\t65\tDIP step\nmultiproc\ttimeout after 55 s\t55\t55\tx\n")

    text = bench_report.summary(tmp_path)
    assert "| dip_ct256 | ok | 61 | 65 | DIP step |" in text and "| multiproc | timeout after 55 s |" in text
    assert "best 3.26 ms per slice-step (grouped_cl, B=1, bf16, graph True, MFU 7.0%)" in text
    assert "| grouped_cl | True | fp32 | 6.11 | 1 | 6.11 | 3.7% |" in text          # fp32 rows kept apart
    assert "| vmap | False | bf16 | 21.10 | 1 | 21.10 | 1.1% |" in text
    assert "| udigdip | default | 1 | 2: 1.00, 12: 4.00 | 612.50* | 0.0123 |" in text
    assert "uDiG-DIP : DDS seconds per slice, CT 256²: default 12.5, best_vs_best 12.5" in text
    assert "8 (solver, slice) results; metrics equal True, reconstructions bit-identical True" in text
    assert "wall: 1 process 30.0 s, 2 processes 20.0 s (the ranks 1.50× as fast" in text
    assert json.loads((tmp_path / "dip_step.json").read_text())["mri320"]["missing"]


def test_bundle_reads_a_junit_report_and_errors_are_found(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="tests.test_a" name="test_ok"/>'
                   '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2">tb</failure>'
                   '</testcase><testcase classname="tests.test_a" name="test_skip"><skipped message="no CUDA"/>'
                   '</testcase></testsuite></testsuites>')
    data = bench_report.bundle(tmp_path / "checks.json", [f"pytest={xml}"])
    t = data["pytest"]
    assert (t["passed"], t["failed"], t["skipped"]) == (1, 1, 1)
    assert t["failures"][0]["test"] == "tests.test_a::test_bad" and "assert 1 == 2" in t["failures"][0]["message"]

    part = {"errors": [], "sections": {"a": {"rows": [{"ok": 1}]}, "b": {"error": "RuntimeError: x"}},
            "paper_budget": [{"rows": [{"error": ""}, {"error": "OOM"}]}]}
    found = bench_report.errors_in(part)
    assert len(found) == 2 and "RuntimeError: x" in found[0] and "OOM" in found[1]
    (tmp_path / "p.json").write_text(json.dumps(part))
    (tmp_path / "q.json").write_text(json.dumps({"errors": [], "rows": [{"error": None}]}))
    assert bench_report.main(["errors", str(tmp_path / "p.json")]) == 1
    assert bench_report.main(["errors", str(tmp_path / "q.json")]) == 0


# ------------------------------------------------------------------------------ torchrun
def test_process_group_backend_never_puts_two_nccl_ranks_on_one_gpu():
    assert process_group_backend(True, 8, 8) == "nccl"
    assert process_group_backend(True, 2, 1) == "gloo"          # 2 ranks sharing the only GPU
    assert process_group_backend(True, 2, 2, nccl_available=False) == "gloo"
    assert process_group_backend(False, 2, 0) == "gloo"
