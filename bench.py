"""Benchmark of the reconstruction phases: time, peak memory, FLOPs, MFU, batched throughput.

    python bench.py                                     # CPU (+ CUDA when present), 64², demo priors
    python bench.py --device=cuda --size=256 --batch_sizes=1,4,16 --peak_tflops=989
    python bench.py --size=16 --steps=2 --batch_sizes=1,2 --out=/tmp/b.json   # smoke test

Per device (``--device``: ``auto`` = cpu and cuda if available) and modality (MRI: complex,
4 synthetic coils, 4× uniform1d mask; CT: 23-view parallel beam), the phases of :data:`PHASES`:

* ``dip_step``: one DIP optimiser step (forward + backward + Adam) of ``models.dip_unet.DIPUNet``
  (demo widths by default) with the physics data term ‖A f_θ(z) − y‖² + λ‖f_θ(z) − z‖²;
* ``dip_batched``: one step of B independent DIP networks (``--dip_batch_sizes``, ``--net_impls``,
  ``--cuda_graph``): time per slice-step and throughput against B = 1;
* ``purify``: one ``Denoiser.purify`` call (forward noise + one Tweedie step = one prior call);
* ``dds_step``: one DDS step (prior ε + Tweedie + 5-iteration CG data consistency + DDIM update);
* ``solve``: a short full solve per slice (uDiG-DIP / aSeqDIP: ``num_outer=--steps``,
  ``inner_steps=2``; DDS: ``nfe=--steps``);
* ``batched``: seconds per slice for ``B`` slices (``--batch_sizes``) solved together by the
  batched uDiG-DIP (else aSeqDIP) vs one slice at a time.

Each phase is timed in two variants in the same run, and their ratio is reported:

* ``unopt``: float32, default memory format, eager, a ``.item()`` host sync after every call
  (for ``solve``: the one-slice-at-a-time solver with ``log_every=1``, i.e. a sync every step);
* ``opt``: bf16 autocast (CUDA; on CPU only with ``--bf16_cpu``), channels_last, ``torch.compile``
  with ``--compile``, fused Adam on CUDA, no per-step sync (one sync at the end of the timed
  loop; for ``solve``: one solve of all ``--batch_sizes[-1]`` slices at once, time per
  slice).

FLOPs of one DIP step and one prior call come from ``torch.utils.flop_counter.FlopCounterMode``
(convolutions / matmuls / attention only — FFTs, CT sparse products and element-wise ops are not
counted); achieved FLOP/s = FLOPs / time, MFU = achieved / ``--peak_tflops`` (default 989 =
H100/H200 SXM bf16 dense when the CUDA device is one, else unset → MFU omitted).  Peak memory:
``torch.cuda.max_memory_allocated`` per phase on CUDA; on CPU the process high-water mark
``ru_maxrss`` after the phase (monotone over the run, so an upper bound per phase).

Which phases run: ``--phases`` (default all of :data:`PHASES`), narrowed by ``--solvers``,
``--prior_phases`` and ``--skip_solve``.  Writes ``--out`` (JSON: machine, settings, rows) and
prints markdown tables (``docs/performance.md`` quotes them).
"""
from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from absl import app, flags

from bench_steps import (batched_dip_step_fn, dds_step_fns, dip_step_fns, load_bench_prior, make_problem,
                         optimised_denoiser, purify_fns, slice_physics, solve_fns)
from utils.timing import count_flops, cpu_model, default_peak_tflops, machine_info, profile_ops, time_calls

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so that tests can import the
    phase helpers next to other absl programs)."""
    flags.DEFINE_string("device", "auto", "Comma list of devices: cpu, cuda, cuda:N; auto = cpu (+ cuda if present).")
    flags.DEFINE_integer("size", 64, "Image size H = W.")
    flags.DEFINE_string("solvers", "udigdip,aseqdip,dds", "Comma list of solvers whose phases are timed.")
    flags.DEFINE_integer("steps", 5, "Timed calls per phase (after --warmup), and the length of the short solve.")
    flags.DEFINE_integer("warmup", 1, "Untimed warm-up calls per phase.")
    flags.DEFINE_string("batch_sizes", "1,2,4,8", "Batch sizes B of the batched-throughput table.")
    flags.DEFINE_string("modalities", "MRI,CT", "Comma list: MRI, CT.")
    flags.DEFINE_string("out", "exp/bench.json", "Output JSON path.")
    flags.DEFINE_string("prior", "demo", "'demo' (demo_mri_64 / demo_ct_64), 'untrained', or 'MRI_NAME,CT_NAME' "
                        "(prior registry names or checkpoint paths).")
    flags.DEFINE_float("peak_tflops", None, "Peak TFLOP/s for MFU (default: 989 on an H100/H200, else unset).")
    flags.DEFINE_boolean("compile", False, "torch.compile the networks in the optimised variant (timing only: "
                         "outputs are not checked; the DIP solvers refuse compile on CUDA, see solvers/perf.py).")
    flags.DEFINE_boolean("bf16_cpu", False, "Use bf16 autocast in the optimised variant on CPU too.")
    flags.DEFINE_string("net_channels", "32,64,128,128", "DIPUNet widths (demo default).")
    flags.DEFINE_integer("threads", None, "torch.set_num_threads (default: torch's).")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_string("dip_batch_sizes", "", "Batch sizes of the batched DIP-step table (B independent nets, "
                        "one vmapped step; default: --batch_sizes).")
    flags.DEFINE_boolean("skip_solve", False, "Skip the short-solve phase and the batched-solve table "
                         "(only per-call phases and the batched DIP-step table).")
    flags.DEFINE_boolean("prior_phases", True, "Time the prior phases (purify, dds_step).")
    flags.DEFINE_boolean("compile_check", False, "Only compare torch.compile'd DIP nets with eager ones "
                         "(outputs / gradients, several cases and backends; see compile_check) on the last "
                         "--device, write --out and exit.")
    flags.DEFINE_boolean("cudnn_benchmark", False, "torch.backends.cudnn.benchmark = True (autotuned "
                         "convolution algorithms; the solvers run with cudnn.deterministic and no benchmark).")
    flags.DEFINE_integer("profile_batch", 0, "Batched DIP-step table: profile the eager step at this B "
                         "(torch.profiler, top ops by GPU or CPU time; 0 = off).")
    flags.DEFINE_string("net_impls", "vmap", "Batched DIP-step table: comma list of models.stacked_dip.NET_IMPLS "
                        "(vmap, grouped, grouped_cl); each gets its own rows and B=1 reference.")
    flags.DEFINE_boolean("graph_only", False, "Batched DIP-step table on CUDA: only the CUDA-graph rows.")
    flags.DEFINE_string("phases", ",".join(PHASES), "Comma list of phases to time, in this order: "
                        + ", ".join(PHASES) + ".")
    flags.DEFINE_boolean("cuda_graph", False, "Batched DIP-step table: also time each B with the step replayed "
                         "from a CUDA graph (perf.cuda_graph; CUDA only). Throughput is relative to B=1 of the "
                         "same variant.")


def resolve_devices(spec: str) -> list[torch.device]:
    out = []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        if name == "auto":
            out.append(torch.device("cpu"))
            if torch.cuda.is_available():
                out.append(torch.device("cuda"))
            continue
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise app.UsageError(f"--device={name} but CUDA is not available")
        out.append(dev)
    return out


# ------------------------------------------------------------------------------------ the phases
@dataclass
class Case:
    """What the phases of one (device, modality) pass share; rows go into ``result``."""
    device: torch.device
    modality: str
    A: Any                    # operator of max(batch_sizes) slices, y its measurements
    y: torch.Tensor
    names: list               # solvers to time (udigdip, aseqdip, dds)
    net_cfg: dict
    bf16: bool                # the optimised variant's autocast
    peak: Optional[float]     # TFLOP/s for MFU
    result: dict
    den_u: Any = None         # the prior, and its optimised twin (None when no phase needs it)
    den_o: Any = None
    A1: Any = field(init=False)
    y1: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.A1, self.y1 = slice_physics(self.A, 0), self.y[:1]

    def error(self, phase: str, e: BaseException, trace: bool = True, **where) -> None:
        row = {"device": str(self.device), "modality": self.modality, **where, "phase": phase,
               "error": f"{type(e).__name__}: {e}"}
        if trace:
            row["trace"] = traceback.format_exc(limit=3)
        self.result["errors"].append(row)

    def record(self, solver: str, phase: str, fns, flops: Optional[int] = None, per_slice_div: int = 1) -> None:
        """Time ``fns = (unopt, opt)``; one ``phases`` row per variant and their ratio in ``speedups``."""
        F, row_pair = FLAGS, {}
        for variant, fn, sync_each in (("unopt", fns[0], True), ("opt", fns[1], False)):
            try:
                r = time_calls(fn, self.device, F.steps if phase != "solve" else 1,
                               F.warmup if phase != "solve" else 0, sync_each)
            except Exception as e:
                self.error(phase, e, solver=solver, variant=variant)
                continue
            div = per_slice_div if variant == "opt" else 1
            row = {"device": str(self.device), "device_name": torch.cuda.get_device_name(self.device)
                   if self.device.type == "cuda" else cpu_model(), "modality": self.modality, "solver": solver,
                   "phase": phase, "variant": variant, "seconds": r["seconds"] / div,
                   "slices_per_call": div, "peak_mem_bytes": r["peak_mem_bytes"],
                   "peak_mem_kind": r["peak_mem_kind"]}
            if flops:
                row["flops"] = flops
                row["tflops_per_s"] = flops / r["seconds"] / 1e12
                if self.peak:
                    row["mfu"] = row["tflops_per_s"] / self.peak
                    row["peak_tflops"] = self.peak
            self.result["phases"].append(row)
            row_pair[variant] = row
        if len(row_pair) == 2:
            u, o = row_pair["unopt"]["seconds"], row_pair["opt"]["seconds"]
            self.result["speedups"].append({"device": str(self.device), "modality": self.modality, "solver": solver,
                                            "phase": phase, "unopt_s": u, "opt_s": o, "ratio": u / o})


def phase_dip_step(c: Case) -> None:
    """One DIP optimiser step, unoptimised vs optimised."""
    fns = dip_step_fns(c.A1, c.y1, c.device, c.net_cfg, c.bf16, bool(FLAGS.compile))
    c.record("udigdip/aseqdip", "dip_step", fns, count_flops(fns[0]))


def phase_dip_batched(c: Case) -> None:
    """One step of B independent DIP networks per ``--dip_batch_sizes`` B, net impl and graph mode."""
    F = FLAGS
    dip_bss = sorted({int(b) for b in (F.dip_batch_sizes or F.batch_sizes).split(",") if b.strip()})
    one_flops = count_flops(dip_step_fns(c.A1, c.y1, c.device, c.net_cfg, False, False)[0])
    cuda = c.device.type == "cuda"
    graphs = [True] if F.graph_only and cuda else ([False, True] if F.cuda_graph and cuda else [False])
    impls = [v.strip() for v in F.net_impls.split(",") if v.strip()]
    base = None
    for impl, graph, B in ((i, g, b) for i in impls for g in graphs for b in dip_bss):
        base = None if B == dip_bss[0] else base
        where = f"dip_batched B={B} graph={graph}"
        try:
            fn = batched_dip_step_fn(c.A, c.y, c.device, c.net_cfg, B, c.bf16, bool(F.compile), graph=graph,
                                     impl=impl)
            # a graph is captured after 3 eager steps: warm up past it
            r = time_calls(fn, c.device, F.steps, max(1, F.warmup) + (4 if graph else 0), False)
        except Exception as e:
            c.error(f"{where} impl={impl}", e)
            continue
        if graph and not fn.stepper.graph_used:
            c.result["errors"].append({"device": str(c.device), "modality": c.modality, "phase": where,
                                       "error": f"not captured: {fn.stepper.graph_error}"})
            continue
        per = r["seconds"] / B
        base = per if B == dip_bss[0] and B == 1 else base
        row = {"device": str(c.device), "modality": c.modality, "B": B, "bf16": c.bf16, "compile": bool(F.compile),
               "cuda_graph": graph, "net_impl": impl, "seconds_per_step": r["seconds"],
               "seconds_per_slice_step": per,
               "flops": one_flops * B, "tflops_per_s": one_flops * B / r["seconds"] / 1e12,
               "peak_mem_bytes": r["peak_mem_bytes"], "peak_mem_kind": r["peak_mem_kind"]}
        if base:
            row["throughput_vs_B1"] = base / per
        if c.peak:
            row["mfu"] = row["tflops_per_s"] / c.peak
        c.result["dip_batched"].append(row)
        if B == F.profile_batch and not graph:
            c.result["dip_profile"].append({"device": str(c.device), "modality": c.modality, "B": B,
                                            "net_impl": impl, "top_ops": profile_ops(fn, c.device)})


def phase_purify(c: Case) -> None:
    """One purification (forward noise + one Tweedie step)."""
    x = c.A1.input_image(c.y1)
    c.record("udigdip", "purify", purify_fns(c.den_u, c.den_o, c.A1, c.y1, c.device),
             count_flops(lambda: c.den_u.eps(x, 100)))


def phase_dds_step(c: Case) -> None:
    """One DDS step (prior, Tweedie, CG data consistency, DDIM update)."""
    c.record("dds", "dds_step", dds_step_fns(c.den_u, c.den_o, c.A1, c.y1, c.device))


def phase_solve(c: Case) -> None:
    """A short solve per solver: one slice at a time vs all ``max(batch_sizes)`` slices at once."""
    F = FLAGS
    for n in c.names:
        u, o, div = solve_fns(n, c.den_u, c.den_o, c.A, c.y, c.device, F.steps, c.net_cfg, c.bf16,
                              bool(F.compile), c.y.shape[0])
        c.record(n, "solve", (u, o), per_slice_div=div)


def phase_batched(c: Case) -> None:
    """Seconds per slice of B slices solved together vs one at a time (uDiG-DIP, else aSeqDIP)."""
    F = FLAGS
    bname = "udigdip" if "udigdip" in c.names else "aseqdip"
    bss = sorted({int(b) for b in F.batch_sizes.split(",") if b.strip()})
    args = (c.den_u, c.den_u, c.A, c.y, c.device, F.steps, c.net_cfg, False, False)
    seq_u, _, _ = solve_fns(bname, *args, 1)
    t_seq = time_calls(seq_u, c.device, 1, 0, True)["seconds"]
    for B in bss:
        _, bat, _ = solve_fns(bname, *args, B)
        try:
            r = time_calls(bat, c.device, 1, 0, False)
        except Exception as e:
            c.error(f"batched B={B}", e, trace=False)
            continue
        per = r["seconds"] / B
        c.result["batched"].append({"device": str(c.device), "modality": c.modality, "solver": bname, "B": B,
                                    "seconds_per_slice": per, "slices_per_s": 1.0 / per,
                                    "sequential_seconds_per_slice": t_seq, "speedup_vs_sequential": t_seq / per,
                                    "peak_mem_bytes": r["peak_mem_bytes"], "peak_mem_kind": r["peak_mem_kind"],
                                    "dip_steps": F.steps * 2, "float32": True})


def _dip(names) -> bool:
    return any(n in ("udigdip", "aseqdip") for n in names)


#: name → (function, whether the flags and ``--solvers`` select it, whether it needs the prior);
#: the phases run in this order for every device and modality.
PHASES: dict[str, tuple[Callable[[Case], None], Callable[[Any, list], bool], Callable[[list], bool]]] = {
    "dip_step": (phase_dip_step, lambda F, names: _dip(names), lambda names: False),
    "dip_batched": (phase_dip_batched, lambda F, names: _dip(names) and bool(
        (F.dip_batch_sizes or F.batch_sizes).strip(",")), lambda names: False),
    "purify": (phase_purify, lambda F, names: "udigdip" in names and F.prior_phases, lambda names: True),
    "dds_step": (phase_dds_step, lambda F, names: "dds" in names and F.prior_phases, lambda names: True),
    "solve": (phase_solve, lambda F, names: not F.skip_solve,
              lambda names: any(n in ("udigdip", "dds") for n in names)),
    "batched": (phase_batched, lambda F, names: not F.skip_solve and _dip(names),
                lambda names: "udigdip" in names),
}


def selected_phases(F, names: list) -> list[str]:
    """The phases ``--phases`` asks for that the other flags and ``--solvers`` leave selected."""
    asked = [p.strip() for p in F.phases.split(",") if p.strip()]
    unknown = [p for p in asked if p not in PHASES]
    if unknown:
        raise app.UsageError(f"unknown phase(s) {unknown}; valid: {', '.join(PHASES)}")
    return [p for p in PHASES if p in asked and PHASES[p][1](F, names)]


def run() -> dict:
    """Every selected phase for every device and modality; the JSON written to ``--out``."""
    F = FLAGS
    if F.threads:
        torch.set_num_threads(int(F.threads))
    devices = resolve_devices(F.device)
    if F.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    import solvers as solvers_pkg

    names = [solvers_pkg.canonical(s.strip()) for s in F.solvers.split(",") if s.strip()]
    for n in names:
        if n not in ("udigdip", "aseqdip", "dds"):
            raise app.UsageError(f"bench.py times udigdip, aseqdip, dds; got {n!r}")
    phases = selected_phases(F, names)
    mods = [m.strip().upper() for m in F.modalities.split(",") if m.strip()]
    if set(mods) - {"MRI", "CT"}:
        raise app.UsageError(f"--modalities: use MRI and/or CT, got {F.modalities!r}")
    bss = sorted({int(b) for b in F.batch_sizes.split(",") if b.strip()})
    net_cfg = {"channels": tuple(int(c) for c in F.net_channels.split(","))}
    result: dict = {
        "machine": machine_info(),
        "settings": {"devices": [str(d) for d in devices], "size": F.size, "solvers": names, "steps": int(F.steps),
                     "warmup": int(F.warmup), "batch_sizes": bss, "modalities": mods,
                     "net": {"channels": list(net_cfg["channels"])}, "compile": bool(F.compile),
                     "bf16_cpu": bool(F.bf16_cpu), "prior": F.prior, "cudnn_benchmark": bool(F.cudnn_benchmark),
                     "phases": phases},
        "notes": [
            "unopt = float32, default memory format, eager, .item() sync after every call/step; "
            "opt = bf16 autocast (CUDA, CPU only with --bf16_cpu), channels_last, --compile, fused Adam on CUDA, "
            "no per-step sync; solve/opt = one solve of max(batch_sizes) slices, time per slice",
            "FLOPs: torch.utils.flop_counter.FlopCounterMode (conv/matmul/attention only; FFT, sparse CT "
            "products and element-wise ops not counted)",
            "CPU peak memory = process ru_maxrss high-water mark after the phase (monotone over the run)",
        ],
        "priors": {}, "phases": [], "speedups": [], "batched": [], "dip_batched": [], "dip_profile": [],
        "errors": [],
    }
    need_prior = any(PHASES[p][2](names) for p in phases)
    for device in devices:
        peak = F.peak_tflops if F.peak_tflops is not None else default_peak_tflops(device)
        bf16 = device.type == "cuda" or bool(F.bf16_cpu)
        for mod in mods:
            A, y, _ = make_problem(mod, F.size, device, seed=F.seed, batch=max(bss))
            case = Case(device, mod, A, y, names, net_cfg, bf16, peak, result)
            if need_prior:
                case.den_u, result["priors"][f"{device}/{mod}"] = load_bench_prior(mod, device, F.prior)
                case.den_o = optimised_denoiser(case.den_u, device, bf16, bool(F.compile))
            for p in phases:
                PHASES[p][0](case)
    return result


# --------------------------------------------------------------------------------- report
def fmt_ms(s):
    return "–" if s is None else f"{1e3 * s:.2f}"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']} ({m['threads']} threads)"
             + (f", GPU {', '.join(g['name'] for g in m['gpus'])}" if m["gpus"] else "")
             + f", torch {m['torch']}; size {result['settings']['size']}², {result['settings']['steps']} timed calls.",
             "", "| device | modality | solver | phase | unopt ms | opt ms | ratio | GFLOP/call | TFLOP/s (opt) | MFU (opt) | peak mem (opt) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {(r["device"], r["modality"], r["solver"], r["phase"], r["variant"]): r for r in result["phases"]}
    for s in result["speedups"]:
        o = rows.get((s["device"], s["modality"], s["solver"], s["phase"], "opt"), {})
        fl = o.get("flops")
        mfu = "–" if "mfu" not in o else f"{100 * o['mfu']:.2f}%"
        gf = "–" if not fl else f"{fl / 1e9:.3f}"
        tf = "–" if "tflops_per_s" not in o else f"{o['tflops_per_s']:.4f}"
        lines.append(
            f"| {s['device']} | {s['modality']} | {s['solver']} | {s['phase']} | {fmt_ms(s['unopt_s'])} | "
            f"{fmt_ms(s['opt_s'])} | {s['ratio']:.2f}× | {gf} | "
            f"{tf} | "
            f"{mfu} | "
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
            mfu = "–" if "mfu" not in b else f"{100 * b['mfu']:.1f}%"
            lines.append(f"| {b['device']} | {b['modality']} | {b.get('net_impl', 'vmap')} | {b['B']} | {b['bf16']} | "
                         f"{b.get('cuda_graph', False)} | "
                         f"{1e3 * b['seconds_per_step']:.2f} | "
                         f"{1e3 * b['seconds_per_slice_step']:.2f} | {thr} | {b['tflops_per_s']:.2f} | {mfu} |")
    if result["errors"]:
        lines += ["", f"{len(result['errors'])} phase(s) failed; see 'errors' in the JSON."]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.compile_check:
        from bench_compile import compile_check

        compile_check(resolve_devices(FLAGS.device)[-1], Path(FLAGS.out), size=int(FLAGS.size))
        print(f"wrote {FLAGS.out}")
        return
    result = run()
    out = Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, out)
    print(markdown(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
