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
  batched uDiG-DIP (else aSeqDIP) vs one slice at a time;
* ``prior_precision`` (only when named in ``--phases``): one prior call in float32 / TF32 / bf16 /
  fp16 autocast, channels-last on and off — speed and the Tweedie x̂₀ against float32 — and
  batched purification (``bench_prior.py``);
* ``paper_budget`` (only when named): seconds per slice of every solver at the papers' budget
  (DIP solvers: K·N = 20 000 steps, extrapolated from two measured lengths), naive vs optimised
  settings, and the uDiG-DIP : DDS ratio (``bench_budget.py``).

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

Which phases run: ``--phases`` (default :data:`DEFAULT_PHASES`), narrowed by ``--solvers``,
``--prior_phases`` and ``--skip_solve``; a failing phase is recorded under ``errors`` and the
others run.  Writes ``--out`` (JSON: machine, settings, rows) after every phase and prints
markdown tables (``bench_report.py``; ``docs/performance.md`` quotes them).
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

import bench_budget
from bench_report import markdown
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
    flags.DEFINE_string("compile_backends", "inductor,aot_eager", "--compile_check: torch.compile backends to try.")
    flags.DEFINE_float("compile_budget_s", 150.0, "--compile_check: seconds after which the remaining cases are "
                       "skipped.")
    flags.DEFINE_boolean("cudnn_benchmark", False, "torch.backends.cudnn.benchmark = True (autotuned "
                         "convolution algorithms; the solvers run with cudnn.deterministic and no benchmark).")
    flags.DEFINE_integer("profile_batch", 0, "Batched DIP-step table: profile the eager step at this B "
                         "(torch.profiler, top ops by GPU or CPU time; 0 = off).")
    flags.DEFINE_string("net_impls", "vmap", "Batched DIP-step table: comma list of models.stacked_dip.NET_IMPLS "
                        "(vmap, grouped, grouped_cl); each gets its own rows and B=1 reference.")
    flags.DEFINE_boolean("graph_only", False, "Batched DIP-step table on CUDA: only the CUDA-graph rows.")
    flags.DEFINE_string("phases", ",".join(DEFAULT_PHASES), "Comma list of phases to time, in this order: "
                        + ", ".join(PHASES) + ".")
    flags.DEFINE_boolean("cuda_graph", False, "Batched DIP-step table: also time each B with the step replayed "
                         "from a CUDA graph (perf.cuda_graph; CUDA only). Throughput is relative to B=1 of the "
                         "same variant.")
    flags.DEFINE_boolean("dip_fp32", False, "Batched DIP-step table: float32 rows too (graph-replayed on CUDA), "
                         "next to the bf16 rows of the optimised variant.")
    flags.DEFINE_boolean("profile_best", False, "Batched DIP-step table: profile the fastest setting (lowest time "
                         "per slice-step) after the table, eager and (when it is one) graph-replayed.")
    flags.DEFINE_string("budget_solvers", ",".join(bench_budget.SOLVERS), "paper_budget phase: comma list of solvers.")
    flags.DEFINE_string("budget_variants", ",".join(bench_budget.VARIANTS), "paper_budget phase: comma list of "
                        "variants, measured in this order: " + ", ".join(bench_budget.VARIANTS) + ".")
    flags.DEFINE_string("budget_outer", "3,20", "paper_budget phase: the two numbers of outer iterations measured "
                        "for uDiG-DIP / aSeqDIP (vanilla DIP: as many steps as they make).")
    flags.DEFINE_integer("budget_inner", bench_budget.PAPER_N, "paper_budget phase: Adam steps per outer iteration.")
    flags.DEFINE_string("budget_dm_steps", "5,50", "paper_budget phase: the two step counts measured for the "
                        "diffusion solvers (a solver whose configured count is reached runs in full).")
    flags.DEFINE_float("budget_s", 150.0, "paper_budget phase: seconds per device and modality after which the "
                       "remaining rows are skipped.")


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
    """One step of B independent DIP networks per ``--dip_batch_sizes`` B, net impl and graph mode
    (``--dip_fp32``: float32 rows too, graph-replayed on CUDA); ``--profile_best``: the fastest row
    profiled."""
    F = FLAGS
    dip_bss = sorted({int(b) for b in (F.dip_batch_sizes or F.batch_sizes).split(",") if b.strip()})
    one_flops = count_flops(dip_step_fns(c.A1, c.y1, c.device, c.net_cfg, False, False)[0])
    cuda = c.device.type == "cuda"
    graphs = [True] if F.graph_only and cuda else ([False, True] if F.cuda_graph and cuda else [False])
    impls = [v.strip() for v in F.net_impls.split(",") if v.strip()]
    combos = [(i, g, c.bf16) for i in impls for g in graphs]
    if F.dip_fp32 and c.bf16:
        combos += [(i, graphs[-1], False) for i in impls]
    base = None
    for (impl, graph, bf16), B in ((k, b) for k in combos for b in dip_bss):
        base = None if B == dip_bss[0] else base
        where = f"dip_batched B={B} graph={graph} bf16={bf16}"
        try:
            fn = batched_dip_step_fn(c.A, c.y, c.device, c.net_cfg, B, bf16, bool(F.compile), graph=graph, impl=impl)
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
        row = {"device": str(c.device), "modality": c.modality, "B": B, "bf16": bf16, "compile": bool(F.compile),
               "cuda_graph": graph, "net_impl": impl, "seconds_per_step": r["seconds"],
               "seconds_per_slice_step": per,
               "flops": one_flops * B, "tflops_per_s": one_flops * B / r["seconds"] / 1e12,
               "peak_mem_bytes": r["peak_mem_bytes"], "peak_mem_kind": r["peak_mem_kind"]}
        if base:
            row["throughput_vs_B1"] = base / per
        if c.peak:
            row["mfu"] = row["tflops_per_s"] / c.peak
        c.result["dip_batched"].append(row)
        if B == F.profile_batch and not graph and bf16 == c.bf16:
            c.result["dip_profile"].append({"device": str(c.device), "modality": c.modality, "B": B,
                                            "net_impl": impl, "top_ops": profile_ops(fn, c.device)})
    rows = [r for r in c.result["dip_batched"] if r["device"] == str(c.device) and r["modality"] == c.modality]
    if F.profile_best and rows:
        best = min(rows, key=lambda r: r["seconds_per_slice_step"])
        for graph in sorted({False, best["cuda_graph"]}):
            try:
                fn = batched_dip_step_fn(c.A, c.y, c.device, c.net_cfg, best["B"], best["bf16"], bool(F.compile),
                                         graph=graph, impl=best["net_impl"])
                for _ in range(5 if graph else 2):      # past the graph capture
                    fn()
                c.result["dip_profile"].append({"device": str(c.device), "modality": c.modality, "B": best["B"],
                                                "net_impl": best["net_impl"], "bf16": best["bf16"],
                                                "cuda_graph": graph, "best": True, "top_ops": profile_ops(fn, c.device)})
            except Exception as e:
                c.error(f"profile best graph={graph}", e)


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


def phase_prior_precision(c: Case) -> None:
    """The prior call in fp32 / TF32 / bf16 / fp16, channels-last on/off: speed and x̂₀ against
    float32; batched purification (``bench_prior``)."""
    from bench_prior import prior_precision

    trained = c.result["priors"].get(f"{c.device}/{c.modality}", {}).get("source") == "checkpoint"
    bss = sorted({int(b) for b in FLAGS.batch_sizes.split(",") if b.strip()})
    res = prior_precision(c.den_u, c.A, c.y, c.device, FLAGS.steps, FLAGS.warmup, bss, c.peak, trained, FLAGS.seed)
    c.result["prior_precision"].append({"device": str(c.device), "modality": c.modality, "size": FLAGS.size, **res})


def phase_paper_budget(c: Case) -> None:
    """Seconds per slice of every solver at the papers' budget, naive vs optimised (``bench_budget``)."""
    import solvers as solvers_pkg

    F = FLAGS
    ints = lambda s: tuple(int(v) for v in s.split(",") if v.strip())  # noqa: E731
    res = bench_budget.paper_budget(
        c.A, c.y, c.device, c.den_u, c.den_o, c.net_cfg, c.modality, F.budget_s, outer=ints(F.budget_outer),
        dm_steps=ints(F.budget_dm_steps), inner=F.budget_inner,
        variants=[v.strip() for v in F.budget_variants.split(",") if v.strip()],
        names=[solvers_pkg.canonical(v) for v in F.budget_solvers.split(",") if v.strip()])
    c.result["paper_budget"].append({"device": str(c.device), "modality": c.modality, "size": F.size, **res})


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
    # not in the default --phases: ask for them by name
    "prior_precision": (phase_prior_precision, lambda F, names: True, lambda names: True),
    "paper_budget": (phase_paper_budget, lambda F, names: True, lambda names: True),
}
#: the phases run when --phases is not given
DEFAULT_PHASES = ("dip_step", "dip_batched", "purify", "dds_step", "solve", "batched")


def selected_phases(F, names: list) -> list[str]:
    """The phases ``--phases`` asks for that the other flags and ``--solvers`` leave selected."""
    asked = [p.strip() for p in F.phases.split(",") if p.strip()]
    unknown = [p for p in asked if p not in PHASES]
    if unknown:
        raise app.UsageError(f"unknown phase(s) {unknown}; valid: {', '.join(PHASES)}")
    return [p for p in PHASES if p in asked and PHASES[p][1](F, names)]


def run(out: Optional[Path] = None) -> dict:
    """Every selected phase for every device and modality; the JSON written to ``out`` after each
    phase (a run stopped midway keeps what finished)."""
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
        "prior_precision": [], "paper_budget": [], "errors": [],
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
                try:
                    PHASES[p][0](case)
                except Exception as e:  # one failing phase must not hide the others
                    case.error(p, e)
                if out is not None:
                    write_json(out, result)
    return result


def write_json(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, out)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.compile_check:
        from bench_compile import compile_check

        compile_check(resolve_devices(FLAGS.device)[-1], Path(FLAGS.out), size=int(FLAGS.size),
                      budget_s=float(FLAGS.compile_budget_s),
                      backends=tuple(b.strip() for b in FLAGS.compile_backends.split(",") if b.strip()))
        print(f"wrote {FLAGS.out}")
        return
    out = Path(FLAGS.out)
    result = run(out)
    write_json(out, result)
    print(markdown(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
