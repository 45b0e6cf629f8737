"""Benchmark of the reconstruction phases: time, peak memory, FLOPs, MFU, batched throughput.

    python bench.py                                     # CPU (+ CUDA when present), 64², demo priors
    python bench.py --device=cuda --size=256 --batch_sizes=1,4,16 --peak_tflops=989
    python bench.py --size=16 --steps=2 --batch_sizes=1,2 --out=/tmp/b.json   # smoke test

Per device (``--device``: ``auto`` = cpu and cuda if available) and modality (MRI: complex,
4 synthetic coils, 4× uniform1d mask; CT: 23-view parallel beam):

* ``dip_step``: one DIP optimiser step (forward + backward + Adam) of ``models.dip_unet.DIPUNet``
  (demo widths by default) with the physics data term ‖A f_θ(z) − y‖² + λ‖f_θ(z) − z‖²;
* ``purify``: one ``Denoiser.purify`` call (forward noise + one Tweedie step = one prior call);
* ``dds_step``: one DDS step (prior ε + Tweedie + 5-iteration CG data consistency + DDIM update);
* ``solve``: a short full solve per slice (uDiG-DIP / aSeqDIP: ``num_outer=--steps``,
  ``inner_steps=2``; DDS: ``nfe=--steps``).

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

``--batch_sizes`` also gives the batched-throughput table: seconds per slice for ``B`` slices
solved together by one ``solvers.udig_dip.UDiGDIP`` solve vs one slice at a time.

Writes ``--out`` (JSON: machine, settings, rows) and prints markdown tables for the README.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import resource
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from absl import app, flags

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
                        "(configs/priors.py names or checkpoint paths).")
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
                         "(torch.profiler, top ops by device time; 0 = off).")
    flags.DEFINE_string("net_impls", "vmap", "Batched DIP-step table: comma list of models.stacked_dip.NET_IMPLS "
                        "(vmap, grouped, grouped_cl); each gets its own rows and B=1 reference.")
    flags.DEFINE_boolean("graph_only", False, "Batched DIP-step table on CUDA: only the CUDA-graph rows.")
    flags.DEFINE_boolean("cuda_graph", False, "Batched DIP-step table: also time each B with the step replayed "
                         "from a CUDA graph (perf.cuda_graph; CUDA only). Throughput is relative to B=1 of the "
                         "same variant.")


H100_BF16_DENSE_TFLOPS = 989.0


# ------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_bytes": int(p.total_memory)})
    return {"hostname": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def default_peak_tflops(device: torch.device) -> Optional[float]:
    # H100 and H200 SXM share the chip and its dense bf16 rate (datasheet 989 TFLOP/s)
    if device.type == "cuda" and any(k in torch.cuda.get_device_name(device) for k in ("H100", "H200")):
        return H100_BF16_DENSE_TFLOPS
    return None


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


# ------------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_mem_kind": "cuda_max_allocated"}
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss   # KiB on Linux
    return {"peak_mem_bytes": int(kib) * 1024, "peak_mem_kind": "cpu_process_maxrss"}


def time_calls(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int, sync_each: bool) -> dict:
    """Seconds per call of ``fn`` (mean over ``steps`` after ``warmup``) and peak memory.

    ``sync_each``: ``fn`` returns a tensor whose ``.item()`` is taken after every call (the
    unoptimised habit); otherwise one device sync at the end of the loop."""
    for _ in range(max(0, warmup)):
        out = fn()
        if sync_each and isinstance(out, torch.Tensor):
            out.item()
    sync(device)
    reset_peak(device)
    per = []
    t0 = time.perf_counter()
    for _ in range(max(1, steps)):
        t1 = time.perf_counter()
        out = fn()
        if sync_each and isinstance(out, torch.Tensor):
            out.item()
        per.append(time.perf_counter() - t1)
    sync(device)
    total = time.perf_counter() - t0
    n = max(1, steps)
    return {"seconds": total / n, "seconds_median": statistics.median(per) if sync_each else None,
            "calls": n, **peak_memory(device)}


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


# ----------------------------------------------------------------------------------- problems
def make_problem(modality: str, size: int, device: torch.device, seed: int = 0, batch: int = 1):
    """``(physics, y [B,...], x [B,H,W])`` for a smooth synthetic phantom (batched operator)."""
    from physics.coils import synthetic_coil_maps
    from physics.ct import ParallelBeamCT
    from physics.masks import get_mask
    from physics.mri import MultiCoilMRI

    H = W = int(size)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    imgs = []
    for b in range(batch):
        s = 0.05 * (b + seed)
        img = ((xx / (0.8 - s)) ** 2 + (yy / 0.6) ** 2 < 1).float() * 0.7
        img = img + ((xx - 0.2) ** 2 / 0.05 + (yy + 0.1 - s) ** 2 / 0.1 < 1).float() * 0.3
        imgs.append(img)
    x = torch.stack(imgs)
    if modality == "MRI":
        x = (x * torch.exp(1j * 0.5 * xx)).to(torch.complex64)
        mask = get_mask("uniform1d", (H, W), 4.0, 0.08, seed=seed)
        maps = synthetic_coil_maps(4, H, W, seed=seed)
        A = MultiCoilMRI(mask, maps)
    elif modality == "CT":
        A = ParallelBeamCT(H, num_views=23)
    else:
        raise app.UsageError(f"unknown modality {modality!r}; use MRI or CT")
    A = A.to(device)
    x = x.to(device)
    y = A(x)
    return A, y, x


def load_bench_prior(modality: str, device: torch.device, spec: str) -> tuple[Any, dict]:
    """The prior and a description of where it came from (untrained fallback on failure)."""
    from configs import priors as prior_configs
    from models.adm_unet import create_adm_model
    from models.denoiser import Denoiser, load_prior
    from models.diffusion import DiffusionSchedule

    demo = {"MRI": "demo_mri_64", "CT": "demo_ct_64"}[modality]
    if spec in ("demo", "untrained"):
        name = demo
    else:
        parts = [p.strip() for p in spec.split(",")]
        name = parts[0] if modality == "MRI" or len(parts) == 1 else parts[1]
    desc: dict = {"name": name}
    if spec != "untrained":
        try:
            den = load_prior(name, device=device)
            desc.update(source="checkpoint", checkpoint=getattr(den, "checkpoint_path", None))
            return den, desc
        except Exception as e:  # checkpoint being rewritten / missing: time an untrained twin
            desc["load_error"] = f"{type(e).__name__}: {e}"
    cfg = prior_configs.get_prior_config(name)
    unet = create_adm_model(prior_configs.model_kwargs(cfg)).to(device)
    den = Denoiser(unet, DiffusionSchedule(**dict(cfg.schedule)), is_complex=bool(cfg.is_complex),
                   learn_sigma=bool(cfg.learn_sigma))
    desc.update(source="untrained create_adm_model (same config; timings/FLOPs identical, outputs meaningless)")
    return den, desc


def optimised_denoiser(den, device: torch.device, bf16: bool, compile_: bool):
    """A copy of ``den`` with channels_last weights, bf16 autocast, optional compile."""
    from models.denoiser import Denoiser

    unet = copy.deepcopy(den.unet).to(memory_format=torch.channels_last)
    if compile_:
        unet = torch.compile(unet)
    return Denoiser(unet, den.schedule, is_complex=den.is_complex, learn_sigma=den.learn_sigma,
                    autocast_bf16=bool(bf16))


# ------------------------------------------------------------------------------------- phases
def dip_step_fns(A, y, device, net_cfg, bf16: bool, compile_: bool, lam: float = 1.0):
    """``(unopt_fn, opt_fn)``: one DIP Adam step each (fresh nets/optimisers per variant)."""
    from models.dip_unet import build_dip_net
    from solvers.common import initial_input, net_output
    from solvers.dip_loop import dip_loss
    from utils.complex import from_channels, to_channels

    is_complex = bool(A.is_complex)
    z = initial_input(y, A, "input_image")

    net_u = build_dip_net(net_cfg, is_complex, 0, device=device)
    opt_u = torch.optim.Adam(net_u.parameters(), lr=1e-4, foreach=False)

    def unopt():
        opt_u.zero_grad(set_to_none=True)
        x = net_output(net_u, z, is_complex)
        loss = dip_loss(x, y, A, lam, z)[0].sum()
        loss.backward()
        opt_u.step()
        return loss.detach()

    net_o = build_dip_net(net_cfg, is_complex, 0, device=device).to(memory_format=torch.channels_last)
    fused = device.type == "cuda"
    opt_o = torch.optim.Adam(net_o.parameters(), lr=1e-4, fused=fused) if fused else \
        torch.optim.Adam(net_o.parameters(), lr=1e-4, foreach=True)
    fwd_net = torch.compile(net_o) if compile_ else net_o
    zc = to_channels(z).contiguous(memory_format=torch.channels_last)

    def opt():
        opt_o.zero_grad(set_to_none=True)
        ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = fwd_net(zc)
        x = from_channels(out.float(), is_complex)
        loss = dip_loss(x, y, A, lam, z)[0].sum()
        loss.backward()
        opt_o.step()
        return loss.detach()

    return unopt, opt


def batched_dip_step_fn(A, y, device, net_cfg, B: int, bf16: bool, compile_: bool, lam: float = 1.0,
                        graph: bool = False, impl: str = "vmap"):
    """One optimiser step of ``B`` independent DIP nets on slices ``y[:B]`` — the solvers' own
    step (``solvers.engines.DIPEngine``: one forward/backward of the B nets, ``StackedAdam``),
    replayed from a CUDA graph when ``graph``; no host sync.  Returns the per-slice losses."""
    from models.stacked_dip import StackedDIPNets
    from physics import finite_checks, stack_physics
    from solvers.common import initial_input, net_output
    from solvers.dip_loop import dip_loss
    from solvers.engines import DIPEngine

    is_complex = bool(A.is_complex)
    Ab = stack_physics([_slice_physics(A, b % y.shape[0]) for b in range(B)])
    yb = torch.cat([y[b % y.shape[0]][None] for b in range(B)])
    z = initial_input(yb, Ab, "input_image")
    nets = StackedDIPNets(net_cfg, is_complex, list(range(B)), device=device, compile=compile_, impl=impl)
    engine = DIPEngine(nets, lambda net, zz: net_output(net, zz, is_complex), lambda x, zz: dip_loss(x, yb, Ab, lam, zz),
                       lr=1e-4, cuda_graph=graph, bf16=bf16)

    def step():
        with finite_checks(Ab, False):       # as in the solvers: no per-call host sync
            return engine.step(z).total

    step.stepper = engine
    return step


def profile_ops(fn: Callable[[], Any], device: torch.device, calls: int = 3, top: int = 15) -> list[dict]:
    """The ``top`` ops by total device (CUDA) or CPU self time over ``calls`` calls of ``fn``
    (``torch.profiler``), to see where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    evs = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    return [{"name": e.key[:120], "count": e.count, "self_us_per_call": getattr(e, key, 0.0) / calls,
             "self_cpu_us_per_call": e.self_cpu_time_total / calls} for e in evs]


def purify_fns(den_u, den_o, A, y, device):
    from solvers.common import initial_input

    x = initial_input(y, A, "input_image")
    g = torch.Generator(device=device).manual_seed(0)

    def unopt():
        return den_u.purify(x, 100, num_steps=1, noise=g).abs().sum()

    def opt():
        return den_o.purify(x, 100, num_steps=1, noise=g)

    return unopt, opt


def dds_step_fns(den_u, den_o, A, y, device):
    from solvers.dds import DDS

    x_t = torch.randn_like(A.adjoint(y))
    aty = A.adjoint(y)

    def make(den, sync_each):
        dds = DDS({"progress": False}, den, seed=0)
        sched = den.schedule

        def step():
            with torch.no_grad():
                eps = den.eps(x_t, 500)
                x0 = sched.tweedie_x0(x_t, eps, 500)
                x0p = dds.data_consistency(x0, y, A, aty)
                out = sched.ddim_step(x_t, x0p, eps, 500, 480, eta=0.0)
            return out.abs().sum() if sync_each else out
        return step

    return make(den_u, True), make(den_o, False)


def solve_fns(name, den_u, den_o, A, y, device, steps, net_cfg, bf16, compile_, batch):
    """``(unopt_fn, opt_fn, opt_batch)``: a short solve of one slice one at a time (sync every
    step) vs ``batch`` slices at once (time per slice = time / batch)."""
    import solvers

    if name == "dds":
        def unopt():
            s = solvers.make_solver("dds", {"nfe": steps, "log_every": 1, "progress": False}, den_u, seed=0)
            return s(y[:1], A).x_hat.abs().sum()

        def opt():
            s = solvers.make_solver("dds", {"nfe": steps, "log_every": 10 ** 9, "progress": False}, den_o, seed=0)
            return s(y, A).x_hat
        return unopt, opt, y.shape[0]

    cfg = {"net": dict(net_cfg), "num_outer": steps, "inner_steps": 2, "lr": 1e-3, "disable_progress": True}
    if name == "udigdip":
        cfg.update(t_start=100, t_end=10, purify_start=0, purify_stop=max(1, steps - 1))
    yb, Ab = y[:1], A

    def unopt():
        s = solvers.make_solver(name, {**cfg, "log_every": 1}, den_u if solvers.needs_prior(name) else None,
                                seed=0, device=device, perf={"cuda_graph": "off"})
        return s(yb, _slice_physics(Ab, 0)).x_hat.abs().sum()

    def opt():
        s = solvers.make_solver(name, {**cfg, "log_every": 10 ** 9}, den_o if solvers.needs_prior(name) else None,
                                seeds=list(range(batch)), device=device,
                                perf={"bf16": bf16, "bf16_cpu": bf16, "compile": compile_})
        return s(y[:batch], A).x_hat
    return unopt, opt, batch


def _slice_physics(A, b):
    """The operator of slice ``b`` of a batched operator (MRI with per-slice buffers)."""
    from physics.mri import MultiCoilMRI

    if isinstance(A, MultiCoilMRI) and (A.mask.ndim == 3 or (A.sens_maps is not None and A.sens_maps.ndim == 4)):
        m = A.mask[b] if A.mask.ndim == 3 else A.mask
        s = A.sens_maps
        s = None if s is None else (s[b] if s.ndim == 4 else s)
        return MultiCoilMRI(m, s)
    return A


# --------------------------------------------------------------------------------------- main
def fmt_ms(s):
    return "–" if s is None else f"{1e3 * s:.2f}"


def run(argv_flags=None) -> dict:
    F = FLAGS
    if F.threads:
        torch.set_num_threads(int(F.threads))
    devices = resolve_devices(F.device)
    if F.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    names = [s.strip() for s in F.solvers.split(",") if s.strip()]
    import solvers as solvers_pkg

    names = [solvers_pkg.canonical(n) for n in names]
    for n in names:
        if n not in ("udigdip", "aseqdip", "dds"):
            raise app.UsageError(f"bench.py times udigdip, aseqdip, dds; got {n!r}")
    mods = [m.strip().upper() for m in F.modalities.split(",") if m.strip()]
    bss = sorted({int(b) for b in F.batch_sizes.split(",") if b.strip()})
    net_cfg = {"channels": tuple(int(c) for c in F.net_channels.split(","))}
    steps, warm = int(F.steps), int(F.warmup)
    result: dict = {
        "machine": machine_info(),
        "settings": {"devices": [str(d) for d in devices], "size": F.size, "solvers": names, "steps": steps,
                     "warmup": warm, "batch_sizes": bss, "modalities": mods, "net": {"channels": list(net_cfg["channels"])},
                     "compile": bool(F.compile), "bf16_cpu": bool(F.bf16_cpu), "prior": F.prior,
                     "cudnn_benchmark": bool(F.cudnn_benchmark)},
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
    for device in devices:
        peak = F.peak_tflops if F.peak_tflops is not None else default_peak_tflops(device)
        bf16 = device.type == "cuda" or bool(F.bf16_cpu)
        for mod in mods:
            key = f"{device}/{mod}"
            A, y, _ = make_problem(mod, F.size, device, seed=F.seed, batch=max(bss))
            A1 = _slice_physics(A, 0)
            y1 = y[:1]
            need_prior = any(n in ("udigdip", "dds") for n in names) and (F.prior_phases or not F.skip_solve)
            den_u = den_o = None
            if need_prior:
                den_u, desc = load_bench_prior(mod, device, F.prior)
                result["priors"][key] = desc
                den_o = optimised_denoiser(den_u, device, bf16, bool(F.compile))

            def record(solver, phase, fns, flops=None, per_slice_div=1):
                unopt_fn, opt_fn = fns
                row_pair = {}
                for variant, fn, sync_each in (("unopt", unopt_fn, True), ("opt", opt_fn, False)):
                    try:
                        r = time_calls(fn, device, steps if phase != "solve" else 1,
                                       warm if phase != "solve" else 0, sync_each)
                    except Exception as e:
                        result["errors"].append({"device": str(device), "modality": mod, "solver": solver,
                                                 "phase": phase, "variant": variant,
                                                 "error": f"{type(e).__name__}: {e}",
                                                 "trace": traceback.format_exc(limit=3)})
                        continue
                    div = per_slice_div if variant == "opt" else 1
                    row = {"device": str(device), "device_name": torch.cuda.get_device_name(device)
                           if device.type == "cuda" else cpu_model(), "modality": mod, "solver": solver,
                           "phase": phase, "variant": variant, "seconds": r["seconds"] / div,
                           "slices_per_call": div, "peak_mem_bytes": r["peak_mem_bytes"],
                           "peak_mem_kind": r["peak_mem_kind"]}
                    if flops:
                        row["flops"] = flops
                        row["tflops_per_s"] = flops / r["seconds"] / 1e12
                        if peak:
                            row["mfu"] = row["tflops_per_s"] / peak
                            row["peak_tflops"] = peak
                    result["phases"].append(row)
                    row_pair[variant] = row
                if len(row_pair) == 2:
                    u, o = row_pair["unopt"]["seconds"], row_pair["opt"]["seconds"]
                    result["speedups"].append({"device": str(device), "modality": mod, "solver": solver,
                                               "phase": phase, "unopt_s": u, "opt_s": o, "ratio": u / o})

            if any(n in ("udigdip", "aseqdip") for n in names):
                fns = dip_step_fns(A1, y1, device, net_cfg, bf16, bool(F.compile))
                flops = count_flops(fns[0])
                record("udigdip/aseqdip", "dip_step", fns, flops)
            dip_bss = sorted({int(b) for b in (F.dip_batch_sizes or F.batch_sizes).split(",") if b.strip()})
            if any(n in ("udigdip", "aseqdip") for n in names) and dip_bss:
                one_flops = count_flops(dip_step_fns(A1, y1, device, net_cfg, False, False)[0])
                graphs = [False, True] if F.cuda_graph and device.type == "cuda" else [False]
                if F.graph_only and device.type == "cuda":
                    graphs = [True]
                impls = [v.strip() for v in F.net_impls.split(",") if v.strip()]
                base = None
                for impl, graph, B in ((i, g, b) for i in impls for g in graphs for b in dip_bss):
                    base = None if B == dip_bss[0] else base
                    try:
                        fn = batched_dip_step_fn(A, y, device, net_cfg, B, bf16, bool(F.compile), graph=graph,
                                                 impl=impl)
                        # a graph is captured after 3 eager steps: warm up past it
                        r = time_calls(fn, device, steps, max(1, warm) + (4 if graph else 0), False)
                    except Exception as e:
                        result["errors"].append({"device": str(device), "modality": mod,
                                                 "phase": f"dip_batched B={B} graph={graph} impl={impl}",
                                                 "error": f"{type(e).__name__}: {e}",
                                                 "trace": traceback.format_exc(limit=3)})
                        continue
                    if graph and not fn.stepper.graph_used:
                        result["errors"].append({"device": str(device), "modality": mod,
                                                 "phase": f"dip_batched B={B} graph=True",
                                                 "error": f"not captured: {fn.stepper.graph_error}"})
                        continue
                    per = r["seconds"] / B
                    base = per if B == dip_bss[0] and B == 1 else base
                    row = {"device": str(device), "modality": mod, "B": B, "bf16": bf16, "compile": bool(F.compile),
                           "cuda_graph": graph, "net_impl": impl, "seconds_per_step": r["seconds"],
                           "seconds_per_slice_step": per,
                           "flops": one_flops * B, "tflops_per_s": one_flops * B / r["seconds"] / 1e12,
                           "peak_mem_bytes": r["peak_mem_bytes"], "peak_mem_kind": r["peak_mem_kind"]}
                    if base:
                        row["throughput_vs_B1"] = base / per
                    if peak:
                        row["mfu"] = row["tflops_per_s"] / peak
                    result["dip_batched"].append(row)
                    if B == F.profile_batch and not graph:
                        result["dip_profile"].append({"device": str(device), "modality": mod, "B": B, "net_impl": impl,
                                                      "top_ops": profile_ops(fn, device)})
            if "udigdip" in names and F.prior_phases:
                fns = purify_fns(den_u, den_o, A1, y1, device)
                x = A1.input_image(y1)
                flops = count_flops(lambda: den_u.eps(x, 100))
                record("udigdip", "purify", fns, flops)
            if "dds" in names and F.prior_phases:
                record("dds", "dds_step", dds_step_fns(den_u, den_o, A1, y1, device))
            if F.skip_solve:
                continue
            for n in names:
                u, o, div = solve_fns(n, den_u, den_o, A, y, device, steps, net_cfg, bf16, bool(F.compile), max(bss))
                record(n, "solve", (u, o), per_slice_div=div)

            # batched throughput: B slices together vs one at a time (uDiG-DIP if requested, else aSeqDIP)
            bname = "udigdip" if "udigdip" in names else ("aseqdip" if "aseqdip" in names else None)
            if bname:
                seq_u, _, _ = solve_fns(bname, den_u, den_u, A, y, device, steps, net_cfg, False, False, 1)
                t_seq = time_calls(seq_u, device, 1, 0, True)["seconds"]
                for B in bss:
                    _, bat, _ = solve_fns(bname, den_u, den_u, A, y, device, steps, net_cfg, False, False, B)
                    try:
                        r = time_calls(bat, device, 1, 0, False)
                    except Exception as e:
                        result["errors"].append({"device": str(device), "modality": mod, "phase": f"batched B={B}",
                                                 "error": f"{type(e).__name__}: {e}"})
                        continue
                    per = r["seconds"] / B
                    result["batched"].append({"device": str(device), "modality": mod, "solver": bname, "B": B,
                                              "seconds_per_slice": per, "slices_per_s": 1.0 / per,
                                              "sequential_seconds_per_slice": t_seq, "speedup_vs_sequential": t_seq / per,
                                              "peak_mem_bytes": r["peak_mem_bytes"], "peak_mem_kind": r["peak_mem_kind"],
                                              "dip_steps": steps * 2, "float32": True})
    return result


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


def compile_check(device: torch.device, out: Path, size: int = 64, budget_s: float = 150.0) -> dict:
    """Bisect why ``torch.compile`` of the DIP nets gives wrong images on CUDA (issue 6): eager vs
    compiled outputs (and gradients) of the demo DIP U-Net, one case at a time, cheapest-to-explain
    first; the JSON is rewritten after every case so a timeout keeps what finished.

    Cases: ``vmap_fwd`` (StackedDIPNets, B=2, the failing setting), ``plain_fwd`` (one nn.Module,
    no vmap), ``vmap_fwd_norm_none`` (no BatchNorm), ``vmap_fwd_bwd`` (parameter gradients); backends
    ``inductor`` and ``aot_eager`` (no code generation).  ``rel_err`` = ‖compiled − eager‖ / ‖eager‖.
    """
    import time

    from models.dip_unet import build_dip_net
    from models.stacked_dip import StackedDIPNets

    net = {"channels": (32, 64, 128, 128)}
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 2, size, size, generator=g).to(device)
    x2 = torch.randn(2, 2, size, size, generator=g).to(device)
    rows: list = []
    res = {"machine": machine_info(), "device": str(device), "size": size, "cases": rows}
    t_start = time.perf_counter()

    def rel(a, b):
        a, b = a.detach().float(), b.detach().float()
        return float((a - b).norm() / b.norm())

    def vmap_case(norm):
        nets = StackedDIPNets({**net, "norm": norm}, True, [0, 1], device=device)
        return nets, lambda fn: fn(nets.params, nets.buffers, x2)

    def sgd_steps(fn, nets, n=5, lr=1e-3):
        # plain SGD, in place like the solvers' optimiser (Adam would amplify the rounding
        # differences of compiled kernels: on CPU 3e-6 → 5e-2 in 5 steps, vs 4e-6 with SGD)
        ps = list(nets.params.values())
        for _ in range(n):
            grads = torch.autograd.grad(fn(nets.params, nets.buffers, x2).square().mean(), ps)
            with torch.no_grad():
                torch._foreach_add_(ps, grads, alpha=-lr)
        with torch.no_grad():
            return fn(nets.params, nets.buffers, x2)

    cases = [("vmap_fwd", "inductor"), ("vmap_5_sgd_steps", "inductor"), ("plain_fwd", "inductor"),
             ("vmap_fwd_bf16", "inductor"), ("vmap_fwd", "aot_eager"), ("vmap_fwd_norm_none", "inductor"),
             ("vmap_fwd_bwd", "inductor")]
    for case, backend in cases:
        if time.perf_counter() - t_start > budget_s:
            rows.append({"case": case, "backend": backend, "skipped": "budget"})
            continue
        torch._dynamo.reset()
        row = {"case": case, "backend": backend}
        t0 = time.perf_counter()
        try:
            if case == "plain_fwd":
                m = build_dip_net(net, True, 0, device=device).train()
                m2 = copy.deepcopy(m)
                ref = m(x1)
                got = torch.compile(m2, backend=backend)(x1)
                row["rel_err"] = rel(got, ref)
            elif case == "vmap_5_sgd_steps":
                nets_a, _ = vmap_case("batch")
                nets_b, _ = vmap_case("batch")
                ref = sgd_steps(nets_a._fn, nets_a)
                got = sgd_steps(torch.compile(nets_b._fn, backend=backend, dynamic=False), nets_b)
                row["rel_err"] = rel(got, ref)
            elif case == "vmap_fwd_bf16":
                nets, call = vmap_case("batch")
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False):
                    ref = call(nets._fn)
                    got = call(torch.compile(nets._fn, backend=backend, dynamic=False))
                row["rel_err"] = rel(got, ref)
            else:
                norm = "none" if case.endswith("norm_none") else "batch"
                nets, call = vmap_case(norm)
                ref = call(nets._fn)
                got = call(torch.compile(nets._fn, backend=backend, dynamic=False))
                row["rel_err"] = rel(got, ref)
                if case.endswith("bwd"):
                    ps = list(nets.params.values())
                    g_ref = torch.autograd.grad(ref.square().sum(), ps)
                    g_got = torch.autograd.grad(got.square().sum(), ps)
                    row["grad_rel_err_max"] = max(rel(a, b) for a, b in zip(g_got, g_ref))
            sync(device)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.compile_check:
        dev = resolve_devices(FLAGS.device)[-1]
        compile_check(dev, Path(FLAGS.out), size=int(FLAGS.size))
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
