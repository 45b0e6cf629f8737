"""Reports of the benchmarks: ``bench.py``'s markdown tables, and for ``bench_gpu.sh`` the bundling
of result parts into a few JSON files and ``summary.md``, the deciding numbers of one GPU run.

    python bench_report.py bundle OUT.json KEY=part.json [KEY=tests.xml ...]   # add parts to OUT.json
    python bench_report.py errors PART.json ...     # exit 1 and list them when a part recorded errors
    python bench_report.py summary DIR                                          # DIR/summary.md

A part ending in ``.xml`` is a pytest JUnit report and is stored as its counts and failures.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional


def fmt_ms(s):
    return "–" if s is None else f"{1e3 * s:.2f}"


def _pct(v: Optional[float], digits: int = 1) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _e(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1e}"


# ------------------------------------------------------------------------------ bench.py tables
def markdown(result: dict) -> str:
    """The tables of one ``bench.py`` result."""
    m = result["machine"]
    lines = [f"Machine: {m['cpu']} ({m['threads']} threads)"
             + (f", GPU {', '.join(g['name'] for g in m['gpus'])}" if m["gpus"] else "")
             + f", torch {m['torch']}; size {result['settings']['size']}², {result['settings']['steps']} timed calls."]
    if result["speedups"]:
        lines += ["", "| device | modality | solver | phase | unopt ms | opt ms | ratio | GFLOP/call | TFLOP/s (opt) "
                  "| MFU (opt) | peak mem (opt) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {(r["device"], r["modality"], r["solver"], r["phase"], r["variant"]): r for r in result["phases"]}
    for s in result["speedups"]:
        o = rows.get((s["device"], s["modality"], s["solver"], s["phase"], "opt"), {})
        fl = o.get("flops")
        gf = "–" if not fl else f"{fl / 1e9:.3f}"
        tf = "–" if "tflops_per_s" not in o else f"{o['tflops_per_s']:.4f}"
        lines.append(f"| {s['device']} | {s['modality']} | {s['solver']} | {s['phase']} | {fmt_ms(s['unopt_s'])} | "
                     f"{fmt_ms(s['opt_s'])} | {s['ratio']:.2f}× | {gf} | {tf} | {_pct(o.get('mfu'), 2)} | "
                     f"{o.get('peak_mem_bytes', 0) / 2 ** 20:.0f} MiB |")
    if result["batched"]:
        lines += ["", "| device | modality | solver | B | s/slice batched | s/slice one-at-a-time | speedup |",
                  "|---|---|---|---|---|---|---|"]
        for b in result["batched"]:
            lines.append(f"| {b['device']} | {b['modality']} | {b['solver']} | {b['B']} | {b['seconds_per_slice']:.3f} | "
                         f"{b['sequential_seconds_per_slice']:.3f} | {b['speedup_vs_sequential']:.2f}× |")
    if result.get("dip_batched"):
        lines += ["", "| device | modality | net impl | B | bf16 | CUDA graph | ms / step | ms / slice-step | "
                  "throughput vs B=1 | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for b in result["dip_batched"]:
            thr = "–" if "throughput_vs_B1" not in b else f"{b['throughput_vs_B1']:.2f}×"
            lines.append(f"| {b['device']} | {b['modality']} | {b.get('net_impl', 'vmap')} | {b['B']} | {b['bf16']} | "
                         f"{b.get('cuda_graph', False)} | {1e3 * b['seconds_per_step']:.2f} | "
                         f"{1e3 * b['seconds_per_slice_step']:.2f} | {thr} | {b['tflops_per_s']:.2f} | "
                         f"{_pct(b.get('mfu'))} |")
    for p in result.get("dip_profile", []):
        if p.get("best"):
            lines += ["", f"Top ops, {p['modality']} B={p['B']} {p['net_impl']} graph={p['cuda_graph']} "
                      "(µs per step):", "", "| op | calls | self µs |", "|---|---|---|"]
            lines += [f"| {o['name'][:70]} | {o['count']} | {o['self_us_per_call']:.0f} |" for o in p["top_ops"][:12]]
    for pp in result.get("prior_precision", []):
        lines += prior_table(pp)
    for pb in result.get("paper_budget", []):
        lines += budget_table(pb)
    if result["errors"]:
        lines += ["", f"{len(result['errors'])} phase(s) failed; see 'errors' in the JSON."]
    return "\n".join(lines)


def prior_table(pp: dict) -> list[str]:
    t = [str(v) for v in pp["probe_t"]]
    lines = ["", f"Prior call, {pp['device']} {pp['modality']} {pp['size']}² (trained weights: {pp['trained_weights']};"
             f" x̂₀ within {pp['tweedie_rtol']:.0e} of fp32_strict → ok):", "",
             "| variant | ms / call | vs fp32 | MFU | " + " | ".join(f"x̂₀ rel t={v}" for v in t) + " | ok |",
             "|---|---|---|---|" + "---|" * len(t) + "---|"]
    for r in pp["variants"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['error'][:60]} |")
            continue
        tw = r["tweedie_vs_fp32_strict"]
        sp = r.get("speedup_vs_fp32")
        lines.append(f"| {r['variant']} | {fmt_ms(r['seconds'])} | {'–' if sp is None else f'{sp:.2f}×'} | "
                     f"{_pct(r.get('mfu'))} | " + " | ".join(_e(tw[v]["rel"]) for v in t)
                     + f" | {'yes' if r['within_tol'] else 'no'} |")
    lines += ["", "| purify variant | B | ms / slice | throughput vs B=1 | slice 0 vs one-slice rel |", "|---|---|---|---|---|"]
    for r in pp["batched_purify"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['B']} | {r['error'][:60]} |")
            continue
        thr = r.get("throughput_vs_B1")
        lines.append(f"| {r['variant']} | {r['B']} | {fmt_ms(r['seconds_per_slice'])} | "
                     f"{'–' if thr is None else f'{thr:.2f}×'} | {_e(r['slice0_vs_one_slice_call']['rel'])} |")
    return lines


def budget_table(pb: dict) -> list[str]:
    lines = ["", f"Paper budget, {pb['device']} {pb['modality']} {pb['size']}² (DIP: K·N = {pb['dip_steps']} steps; "
             "* = extrapolated from the measured lengths):", "",
             "| solver | variant | B | measured (units: s) | s / slice at budget | purify s / outer |", "|---|---|---|---|---|---|"]
    for r in pb["rows"]:
        meas = ", ".join(f"{m['units']}: {m['seconds']:.2f}" for m in r.get("measured", []))
        if r.get("skipped") or r.get("error"):
            val = (r.get("skipped") or r.get("error"))[:60]
        else:
            val = f"{r['seconds_per_slice']:.2f}{'*' if r.get('extrapolated') else ''}" if "seconds_per_slice" in r else "–"
        pur = r.get("purify_s_per_outer")
        lines.append(f"| {r['solver']} | {r['variant']} | {r['B']} | {meas} | {val} | "
                     f"{'–' if pur is None else f'{pur:.4f}'} |")
    rat = pb.get("ratios", {})
    if rat.get("udigdip_to_dds"):
        lines += ["", "uDiG-DIP : DDS seconds per slice: " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                   rat["udigdip_to_dds"].items())]
    return lines


# ------------------------------------------------------------------------------ bench_gpu.sh
def junit(path: Path) -> dict:
    """Counts and failures of a pytest JUnit XML report."""
    root = ET.parse(path).getroot()
    out: dict[str, Any] = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skips": []}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"] += 1
            out["failures"].append({"test": name, "message": (bad.get("message") or "")[:500],
                                    "text": (bad.text or "")[-3000:]})
        elif skip is not None:
            out["skipped"] += 1
            out["skips"].append({"test": name, "reason": (skip.get("message") or "")[:200]})
        else:
            out["passed"] += 1
    return out


def bundle(out: Path, parts: list[str]) -> dict:
    """``out`` (JSON object) with ``KEY=path`` parts added (a missing part is recorded as such)."""
    data = json.loads(out.read_text()) if out.exists() else {}
    for spec in parts:
        key, _, path = spec.partition("=")
        p = Path(path)
        if not p.exists():
            data[key] = {"missing": f"{p.name} was not written (section failed or skipped; see log.txt)"}
        elif p.suffix == ".xml":
            data[key] = junit(p)
        else:
            try:
                data[key] = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                data[key] = {"unreadable": str(e)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return data


def errors_in(obj, where: str = "") -> list[str]:
    """Where a result records a failure: every non-empty ``error`` value and every entry of an
    ``errors`` list, at any depth (``bench.py``, ``bench_checks.py`` and their rows)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "error" and v:
                out.append(f"{where}: {str(v)[:200]}")
            elif k == "errors" and isinstance(v, list):
                out += [f"{where}/errors: {json.dumps(e, default=str)[:200]}" for e in v]
            else:
                out += errors_in(v, f"{where}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += errors_in(v, f"{where}[{i}]")
    return out


def _load(d: Path, name: str) -> dict:
    p = d / name
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


#: the DIP-step targets per slice-step (seconds) by modality
STEP_TARGET_S = {"CT": 1.0e-3, "MRI": 1.5e-3}
#: the prior's reduced precision pays when it is at least this much faster than float32
PRIOR_MIN_SPEEDUP = 1.5


def _checks_lines(checks: dict) -> tuple[list[str], dict]:
    """Tests and correctness diagnostics; returns the lines and the facts the decisions use."""
    lines, facts = ["## Correctness (deciding checks first)", ""], {}
    tests = checks.get("pytest", {})
    if tests and "passed" not in tests:
        lines.append(f"pytest (CUDA tests): not run ({tests.get('missing') or tests.get('unreadable')})")
    elif tests:
        lines.append(f"pytest (CUDA tests): {tests.get('passed', 0)} passed, {tests.get('failed', 0)} failed, "
                     f"{tests.get('skipped', 0)} skipped")
        lines += [f"- FAILED {f['test']}: {f['message'][:200]}" for f in tests.get("failures", [])]
        facts["tests_failed"] = [f["test"] for f in tests.get("failures", [])]
    sec = checks.get("diagnostics", {}).get("sections", {})
    env = checks.get("diagnostics", {})
    if env and "sections" not in env:
        lines.append(f"bench_checks.py: not run ({env.get('missing') or env.get('unreadable')})")
    elif env:
        facts["device"] = env.get("device")
        mm = sec.get("matmul", {})
        lines += ["", f"Device {env.get('device')}; torch {env.get('machine', {}).get('torch')}; backend defaults "
                  f"{env.get('backend_defaults')}; bf16 matmul 8192³: "
                  + (f"{mm['tflops_per_s']:.0f} TFLOP/s" if "tflops_per_s" in mm else mm.get("skipped", "–"))]
    ni = sec.get("net_impls", {})
    if ni.get("rows"):
        lines += ["", "Networks against vmap on the device and against float64 (relative L2; test thresholds "
                  f"fwd {ni['thresholds']['fwd_rel']:.0e}, after 3 Adam steps {ni['thresholds']['adam3_rel']:.0e}):",
                  "", "| setting | net | fwd vs vmap | grad vs vmap | Adam×3 vs vmap | fwd vs f64 | Adam×3 vs f64 | "
                  "within |", "|---|---|---|---|---|---|---|---|"]
        for r in ni["rows"]:
            lines.append(f"| {r['setting']} | {r['net_impl']} | {_e(r.get('fwd_vs_vmap', {}).get('rel'))} | "
                         f"{_e(r.get('grad_rel_vs_vmap_max'))} | {_e(r.get('adam3_vs_vmap', {}).get('rel'))} | "
                         f"{_e(r['fwd_vs_f64']['rel'])} | {_e(r['adam3_vs_f64']['rel'])} | "
                         f"{r.get('within_test_tolerance', '')} |")
            if r["setting"] == "fp32_tf32_off" and r["net_impl"] != "vmap":
                facts[f"net_ok_{r['net_impl']}"] = bool(r.get("within_test_tolerance"))
    sv = sec.get("solve_vs_cpu", {})
    if sv.get("rows"):
        lines += ["", f"Solves on the device against CPU (tolerance {sv['tolerance_rel']:.0e} relative):", "",
                  "| case | net | TF32 | rel | max abs | within |", "|---|---|---|---|---|---|"]
        for r in sv["rows"]:
            lines.append(f"| {r['case']} | {r['net_impl']} | {r['tf32']} | {_e(r['rel'])} | {_e(r['max_abs'])} | "
                         f"{r['within_tolerance']} |")
            if r["tf32"] is False:
                facts.setdefault(f"solve_ok_{r['net_impl']}", True)
                facts[f"solve_ok_{r['net_impl']}"] &= bool(r["within_tolerance"])
    de = sec.get("determinism", {})
    if de.get("rows"):
        lines += ["", "Same seeds twice on the device:", "", "| solver | modality | perf | bit-identical | max abs |",
                  "|---|---|---|---|---|"]
        for r in de["rows"]:
            lines.append(f"| {r['solver']} | {r['modality']} | {r['perf'] or 'defaults'} | {r['bit_identical']} | "
                         f"{_e(r['max_abs'])} |")
            key = "det_" + (r["perf"].get("net_impl", "default") if not r["perf"].get("bf16") else "bf16")
            if not r["perf"].get("bf16"):
                facts.setdefault(key, True)
                facts[key] &= bool(r["bit_identical"])
    ge = sec.get("graph_vs_eager", {})
    for r in ge.get("rows", []):
        lines.append(f"- graph vs eager step, {r['modality']} {r['net_impl']}: graph used {r['graph_used']}, "
                     f"losses max abs {_e(r['losses']['max_abs'])}, params {_e(r['params']['max_abs'])}, "
                     f"bit-identical {r['bit_identical']}")
    for r in sec.get("operators", {}).get("rows", []):
        lines.append(f"- operator {r['operator']} {r['size']}²: forward rel {_e(r['forward']['rel'])}, adjoint rel "
                     f"{_e(r['adjoint']['rel'])}, adjointness (f64, device) {_e(r['adjointness_f64_on_device'])}")
    for name, v in sec.items():
        if "error" in v or "skipped" in v:
            lines.append(f"- section {name}: {v.get('error') or v.get('skipped')}")
    return lines, facts


def _dip_lines(dip: dict) -> tuple[list[str], dict]:
    """Per part: the fastest setting against the target, and per (net, graph, precision) the B=1
    time and the best B."""
    lines, facts = ["", "## DIP step per slice-step"], {}
    for key, res in dip.items():
        rows = res.get("dip_batched", []) if isinstance(res, dict) else []
        if not rows:
            continue
        mod = rows[0]["modality"]
        best = min(rows, key=lambda r: r["seconds_per_slice_step"])
        target = STEP_TARGET_S[mod]
        ms = lambda r: f"{1e3 * r['seconds_per_slice_step']:.2f}"  # noqa: E731
        lines += ["", f"{key} ({rows[0]['device']}): best {ms(best)} ms per slice-step ({best['net_impl']}, "
                  f"B={best['B']}, {'bf16' if best['bf16'] else 'fp32'}, graph {best['cuda_graph']}, MFU "
                  f"{_pct(best.get('mfu'))}); target {1e3 * target:.1f} ms "
                  f"{'met' if best['seconds_per_slice_step'] <= target else 'not met'}", "",
                  "| net | CUDA graph | precision | B=1 ms | best B | ms at best B | MFU at best B |",
                  "|---|---|---|---|---|---|---|"]
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["net_impl"], bool(r["cuda_graph"]), bool(r["bf16"])), []).append(r)
        for (impl, graph, bf16), rs in groups.items():
            one = next((r for r in rs if r["B"] == 1), None)
            b = min(rs, key=lambda r: r["seconds_per_slice_step"])
            lines.append(f"| {impl} | {graph} | {'bf16' if bf16 else 'fp32'} | {ms(one) if one else '–'} | "
                         f"{b['B']} | {ms(b)} | {_pct(b.get('mfu'))} |")
        facts[f"step_best_{mod}"] = best
    return lines, facts


def _prior_lines(prior: dict) -> tuple[list[str], dict]:
    lines, facts = ["", "## Prior call"], {}
    for key, res in prior.items():
        for pp in res.get("prior_precision", []) if isinstance(res, dict) else []:
            lines += [f"", f"{key}:"] + prior_table(pp)
            best = pp.get("best_within_tol")
            row = next((r for r in pp["variants"] if r["variant"] == best), {})
            if pp.get("trained_weights") is False and pp["size"] >= 256:
                facts.setdefault("prior_best", []).append((pp["modality"], best, row.get("speedup_vs_fp32")))
    return lines, facts


def _budget_lines(budget: dict) -> list[str]:
    lines = ["", "## Paper-budget timings"]
    for key, res in budget.items():
        for pb in res.get("paper_budget", []) if isinstance(res, dict) else []:
            lines += [f"", f"{key}:"] + budget_table(pb)
    return lines


def _multiproc_lines(mg: dict) -> list[str]:
    """``torchrun`` ranks against one process: the ``compare_runs`` verdict and the wall times."""
    wall, cmp = mg.get("wall", {}), mg.get("compare", {})
    n = wall.get("nproc", "several")
    lines = ["", f"## torchrun: {n} processes against 1 process", ""]
    if not cmp or "slices" not in cmp:
        return lines + [f"not run or incomplete: {json.dumps(mg, default=str)[:300] if mg else 'no result'}"]
    lines.append(f"{cmp['slices']} (solver, slice) results; metrics equal {cmp['metrics_equal']}, reconstructions "
                 f"bit-identical {cmp['recons_bit_identical']} (max abs {_e(cmp['max_abs_recon_diff'])}), merged "
                 f"summary equal {cmp['summary_equal']} (max rel {_e(cmp['summary_max_rel_diff'])})"
                 + (f"; missing {cmp['missing']}" if cmp.get("missing") else ""))
    if wall.get("one_process_s") and wall.get("ranks_s"):
        lines.append(f"wall: 1 process {wall['one_process_s']:.1f} s, {n} processes {wall['ranks_s']:.1f} s "
                     f"(the ranks {wall['one_process_s'] / wall['ranks_s']:.2f}× as fast; start-up included)")
    return lines


def read_sections(path: Path) -> list[dict]:
    """Rows of ``bench_gpu.sh``'s ``sections.tsv``: name, status, seconds, timeout, what."""
    rows = []
    try:
        text = path.read_text()
    except OSError:
        return rows
    for line in text.splitlines():
        f = line.split("\t")
        if len(f) >= 4:
            rows.append({"name": f[0], "status": f[1], "seconds": f[2], "timeout": f[3],
                         "what": f[4] if len(f) > 4 else ""})
    return rows


def _sections_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Sections (bench_gpu.sh)", "", "| section | status | seconds | timeout | measures |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']} | {r['timeout']} | {r['what']} |" for r in rows]
    return lines + [""]


def _ratio_lines(budget: dict) -> list[str]:
    out = []
    for key, res in budget.items():
        for pb in res.get("paper_budget", []) if isinstance(res, dict) else []:
            r = pb.get("ratios", {}).get("udigdip_to_dds", {})
            if r:
                out.append(f"- uDiG-DIP : DDS seconds per slice, {pb['modality']} {pb['size']}²: "
                           + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    return out


def summary_sections(parts: dict) -> list[str]:
    """Markdown of the parts (``checks``, ``dip_step``, ``prior``, ``budget``, ``multigpu``,
    ``compile_check``) and what they decide against the criteria of ``docs/performance.md``."""
    lines = ["# GPU check: deciding numbers", ""] + _sections_lines(parts.get("sections", []))
    c_lines, facts = _checks_lines(parts.get("checks", {}))
    d_lines, d_facts = _dip_lines(parts.get("dip_step", {}))
    p_lines, p_facts = _prior_lines(parts.get("prior", {}))
    facts.update(d_facts, **p_facts)
    lines += ["## Decisions (criteria: docs/performance.md, \"GPU run\")", ""]
    dev = facts.get("device") or "the device"
    for impl in ("grouped_cl", "grouped"):
        ok = [facts.get(f"net_ok_{impl}"), facts.get(f"solve_ok_{impl}"), facts.get(f"det_{impl}")]
        verdict = "all met" if all(v is True for v in ok) else "not all met" if any(v is False for v in ok) \
            else "not measured"
        lines.append(f"- net_impl {impl} on {dev} (net vs vmap, solve vs CPU, bit-identical reruns): {ok} → {verdict}")
    lines.append(f"- default path bit-identical reruns: {facts.get('det_default')}")
    for mod, best, sp in facts.get("prior_best", []):
        pays = sp is not None and sp >= PRIOR_MIN_SPEEDUP
        lines.append(f"- prior {mod}: fastest variant within tolerance {best} at {'–' if sp is None else f'{sp:.2f}'}× "
                     f"fp32 → {'use it' if best and pays else 'keep fp32'} (needs ≥ {PRIOR_MIN_SPEEDUP}×)")
    lines += _ratio_lines(parts.get("budget", {}))
    lines.append("")
    lines += c_lines + d_lines + p_lines + _budget_lines(parts.get("budget", {}))
    lines += _multiproc_lines(parts.get("multigpu", {}))
    cc = parts.get("compile_check", {})
    lines += ["", "## torch.compile against eager", ""]
    for r in cc.get("cases", []):
        lines.append(f"- {r['case']} / {r['backend']}: " + ", ".join(f"{k} {v}" for k, v in r.items()
                                                                  if k not in ("case", "backend")))
    return lines


def summary(d: Path) -> str:
    """The deciding numbers of one ``bench_gpu.sh`` run in ``d`` as markdown."""
    parts: dict[str, Any] = {n: _load(d, f"{n}.json") for n in
                             ("checks", "dip_step", "prior", "budget", "multigpu", "compile_check")}
    parts["sections"] = read_sections(d / "sections.tsv")
    return "\n".join(summary_sections(parts))


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "bundle":
        bundle(Path(argv[1]), argv[2:])
        return 0
    if len(argv) >= 2 and argv[0] == "errors":
        found = []
        for f in argv[1:]:
            try:
                found += errors_in(json.loads(Path(f).read_text()), Path(f).name)
            except (OSError, json.JSONDecodeError) as e:
                found.append(f"{f}: unreadable ({e})")
        print(f"{len(found)} error(s) recorded")
        print("\n".join(found[:20]) + (f"\n... {len(found) - 20} more" if len(found) > 20 else ""))
        return 1 if found else 0
    if len(argv) == 2 and argv[0] == "summary":
        text = summary(Path(argv[1]))
        (Path(argv[1]) / "summary.md").write_text(text + "\n")
        print(text)
        return 0
    sys.stderr.write(__doc__.split("\n\n")[1] + "\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
