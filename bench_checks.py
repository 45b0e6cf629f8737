"""``python bench_checks.py``: the numbers that decide the device defaults of ``solvers/perf.py``.

    python bench_checks.py --device=cuda --out=exp/checks.json          # on a CUDA machine
    python bench_checks.py --device=cpu --quick --out=/tmp/checks.json  # every section at toy size
    python bench_checks.py --compare_runs RUN_A RUN_B --out=/tmp/same.json   # two run folders equal?

Sections, in this order (each is timed, written to ``--out`` as soon as it ends, and skipped once
``--budget_s`` is spent):

* ``net_impls``: the B networks evaluated by ``grouped`` / ``grouped_cl`` against ``vmap`` on the
  device, and each against a float64 CPU reference, in settings that each change one suspect:
  TF32 off (the setting of ``tests/test_engines.py::test_grouped_nets_on_cuda_match_vmap``) and
  on, cuDNN's autotuned algorithms, no normalisation, bf16 autocast, bf16 with BatchNorm in
  float32, bf16 without normalisation.  Per setting and network: max-abs and relative errors of
  the first forward, the parameter gradients and the output after 3 Adam steps.
* ``solve_vs_cpu``: a batched aSeqDIP solve on the device against the same solve on CPU, per
  ``net_impl`` and TF32 setting, and a uDiG-DIP solve with the demo prior (default ``perf``);
  :data:`SOLVE_RTOL` is the documented tolerance.
* ``determinism``: the same solve twice on the device with the same seeds, bit for bit.
* ``graph_vs_eager``: 12 steps of :class:`solvers.engines.DIPEngine` replayed from a CUDA graph
  against the same steps run eagerly (CUDA only).
* ``operators``: MRI / CT operators on the device against CPU at the paper's sizes.
* ``matmul``: the measured bf16 matrix-product rate (8192³; CUDA only), the ceiling for MFU.

Without CUDA every section still runs (device results compared with CPU results are then
trivially equal); the CUDA-only parts say so in the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from utils.timing import machine_info, sync

#: relative tolerance of a float32 device solve against the CPU solve (aSeqDIP, a few Adam steps):
#: Adam normalises the gradient, so float32 rounding differences grow over the steps
SOLVE_RTOL = 1e-2
#: the thresholds of test_grouped_nets_on_cuda_match_vmap: first forward, output after 3 Adam steps
NET_FWD_RTOL, NET_ADAM_RTOL = 1e-4, 1e-2

#: (name, settings): each changes one suspect against the first
NET_SETTINGS = [
    ("fp32_tf32_off", {}),
    ("fp32_tf32_on", {"tf32": True}),
    ("fp32_tf32_off_cudnn_benchmark", {"benchmark": True}),
    ("fp32_tf32_off_no_norm", {"norm": "none"}),
    ("bf16", {"bf16": True}),
    ("bf16_batchnorm_fp32", {"bf16": True, "bn_fp32": True}),
    ("bf16_no_norm", {"bf16": True, "norm": "none"}),
]
SECTIONS = ("net_impls", "solve_vs_cpu", "determinism", "graph_vs_eager", "operators", "matmul")


# --------------------------------------------------------------------------------- helpers
def backend_flags() -> dict:
    b = torch.backends
    out = {"cudnn_allow_tf32": b.cudnn.allow_tf32, "matmul_allow_tf32": b.cuda.matmul.allow_tf32,
           "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "cudnn_deterministic": b.cudnn.deterministic, "cudnn_benchmark": b.cudnn.benchmark}
    with contextlib.suppress(Exception):
        out["cudnn_version"] = b.cudnn.version()
    return out


@contextlib.contextmanager
def backend_setting(tf32: bool = False, benchmark: bool = False):
    """TF32 for convolutions and matmuls on/off; cuDNN autotuning (``benchmark``, then not
    deterministic) or deterministic algorithms.  Restored on exit."""
    b = torch.backends
    old = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic)
    b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = bool(tf32)
    b.cudnn.benchmark, b.cudnn.deterministic = bool(benchmark), not benchmark
    try:
        yield
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark, b.cudnn.deterministic = old


@contextlib.contextmanager
def batch_norm_fp32():
    """Every ``F.batch_norm`` computes in float32 (statistics and normalisation) and returns its
    input's dtype: isolates BatchNorm under bf16 autocast."""
    import torch.nn.functional as F

    orig = F.batch_norm

    def bn(x, *args, **kw):
        args = [a.float() if isinstance(a, torch.Tensor) else a for a in args]
        kw = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        with torch.autocast(device_type=x.device.type, enabled=False):
            return orig(x.float(), *args, **kw).to(x.dtype)

    F.batch_norm = bn
    try:
        yield
    finally:
        F.batch_norm = orig


def errors(got: torch.Tensor, ref: torch.Tensor) -> dict:
    """``max_abs`` = max |got − ref|, ``rel`` = ‖got − ref‖ / ‖ref‖ (in float64, on CPU)."""
    g, r = got.detach().cpu(), ref.detach().cpu()
    if torch.is_complex(g) or torch.is_complex(r):
        g, r = torch.view_as_real(g.to(torch.complex128)), torch.view_as_real(r.to(torch.complex128))
    g, r = g.double(), r.double()
    d = g - r
    return {"max_abs": float(d.abs().max()) if d.numel() else 0.0,
            "rel": float(d.norm() / r.norm().clamp_min(1e-300))}


def _quiet(fn: Callable, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ----------------------------------------------------------------------------------- sections
def _net_run(impl: str, device, dtype, x, net: dict, norm: str, bf16: bool, bn_fp32: bool, steps: int = 3):
    """First forward, parameter gradients of the first loss, forward after ``steps`` Adam steps."""
    from models.stacked_dip import StackedDIPNets
    from solvers.optim import StackedAdam

    nets = StackedDIPNets({**net, "norm": norm}, True, [0, 1], device=device, dtype=dtype, impl=impl)
    opt = StackedAdam(nets.parameters(), 2, lr=1e-3)
    ctx = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)) if bf16 \
        else contextlib.nullcontext
    first = grads = None
    with batch_norm_fp32() if bn_fp32 else contextlib.nullcontext():
        for _ in range(steps):
            opt.zero_grad()
            with ctx():
                out = nets(x).to(dtype)
            out.square().mean().backward()
            if first is None:
                first, grads = out.detach().clone(), [p.grad.detach().clone() for p in nets.parameters()]
            opt.step()
        with torch.no_grad(), ctx():
            last = nets(x).to(dtype)
    return first, grads, last


def section_net_impls(device, quick: bool) -> dict:
    from models.stacked_dip import NET_IMPLS

    size, net = (16, {"channels": (4, 8)}) if quick else (64, {"channels": (32, 64, 128, 128)})
    x = torch.randn(2, 2, size, size, generator=torch.Generator().manual_seed(0))
    refs = {norm: _net_run("vmap", torch.device("cpu"), torch.float64, x.double(), net, norm, False, False)
            for norm in ("batch", "none")}
    xd = x.to(device)
    rows = []
    for name, s in NET_SETTINGS:
        norm = s.get("norm", "batch")
        res = {}
        with backend_setting(tf32=s.get("tf32", False), benchmark=s.get("benchmark", False)):
            for impl in NET_IMPLS:
                res[impl] = _net_run(impl, device, torch.float32, xd, net, norm, s.get("bf16", False),
                                     s.get("bn_fp32", False))
        ref = refs[norm]
        for impl in NET_IMPLS:
            f, g, last = res[impl]
            fv, gv, lv = res["vmap"]
            row = {"setting": name, "net_impl": impl, **{k: v for k, v in s.items()},
                   "fwd_vs_f64": errors(f, ref[0]), "adam3_vs_f64": errors(last, ref[2]),
                   "grad_rel_vs_f64_max": max(errors(a, b)["rel"] for a, b in zip(g, ref[1]))}
            if impl != "vmap":
                row.update(fwd_vs_vmap=errors(f, fv), adam3_vs_vmap=errors(last, lv),
                           grad_rel_vs_vmap_max=max(errors(a, b)["rel"] for a, b in zip(g, gv)))
                row["within_test_tolerance"] = (row["fwd_vs_vmap"]["rel"] < NET_FWD_RTOL
                                                and row["adam3_vs_vmap"]["rel"] < NET_ADAM_RTOL)
            rows.append(row)
    return {"size": size, "net": net, "batch": 2, "thresholds": {"fwd_rel": NET_FWD_RTOL, "adam3_rel": NET_ADAM_RTOL},
            "rows": rows, "note": "f64 = vmap in float64 on CPU from the same initialisation"
            + ("" if device.type == "cuda" else "; no CUDA: TF32 / cuDNN settings have no effect")}


def _solve(name: str, cfg: dict, problem: tuple, device, perf: dict, den=None, seeds=(0, 1)):
    """``name`` with ``cfg`` on ``problem = (modality, size)`` (2 slices of ``bench_steps.make_problem``,
    built on ``device``) → ``x_hat`` on the CPU."""
    import solvers
    from bench_steps import make_problem

    A, y, _ = make_problem(problem[0], problem[1], device, batch=2)
    s = _quiet(solvers.make_solver, name, cfg, den, seeds=list(seeds), device=device, perf=perf)
    return _quiet(s, y, A).x_hat.cpu()


def _demo_prior(modality: str, device):
    from bench_steps import load_bench_prior

    return load_bench_prior(modality, device, "demo")[0]


def section_solve_vs_cpu(device, quick: bool) -> dict:
    from models.stacked_dip import NET_IMPLS

    cpu = torch.device("cpu")
    cases = [("aseqdip_tiny", 16, (4, 8, 8), 2, 2)]
    if not quick:
        cases.append(("aseqdip_demo_net", 64, (32, 64, 128, 128), 5, 4))
    rows = []
    for case, size, ch, outer, inner in cases:
        cfg = {"net": {"channels": ch}, "num_outer": outer, "inner_steps": inner, "disable_progress": True}
        for impl in NET_IMPLS:
            ref = _solve("aseqdip", cfg, ("MRI", size), cpu, {"net_impl": impl})
            for tf32 in (False, True):
                with backend_setting(tf32=tf32):
                    got = _solve("aseqdip", cfg, ("MRI", size), device, {"net_impl": impl})
                e = errors(got, ref)
                rows.append({"case": case, "size": size, "net_impl": impl, "tf32": tf32, "steps": outer * inner,
                             **e, "within_tolerance": e["rel"] < SOLVE_RTOL})
    size = 32 if quick else 64
    cfg = {"net": {"channels": (8, 16) if quick else (32, 64, 128, 128)}, "num_outer": 3, "inner_steps": 4,
           "disable_progress": True, "t_start": 100, "t_end": 20, "purify_stop": 3}
    ref = _solve("udigdip", cfg, ("MRI", size), cpu, {}, _demo_prior("MRI", cpu))
    got = _solve("udigdip", cfg, ("MRI", size), device, {}, _demo_prior("MRI", device))
    e = errors(got, ref)
    rows.append({"case": "udigdip_demo_prior_default_perf", "size": size, "net_impl": "auto", "tf32": "default",
                 "steps": 12, **e, "within_tolerance": e["rel"] < SOLVE_RTOL})
    return {"tolerance_rel": SOLVE_RTOL, "rows": rows}


def section_determinism(device, quick: bool) -> dict:
    """The same seeds twice on ``device``: bit-identical? (default ``perf`` first: the device default)."""
    size = 32 if quick else 64
    net = {"channels": (8, 16) if quick else (64, 128, 256, 256)}
    dip = {"net": net, "num_outer": 3, "inner_steps": 4, "disable_progress": True, "t_start": 100, "t_end": 20,
           "purify_stop": 3}
    cases = [("udigdip", "MRI", {}), ("udigdip", "CT", {}), ("udigdip", "MRI", {"net_impl": "grouped_cl"}),
             ("udigdip", "MRI", {"bf16": True}), ("udigdip", "MRI", {"bf16": True, "net_impl": "grouped_cl"}),
             ("dds", "MRI", {}), ("dds", "CT", {})]
    rows = []
    for name, mod, perf in cases:
        den = _demo_prior(mod, device)
        cfg = dip if name == "udigdip" else {"nfe": 10, "progress": False}
        a, b = (_solve(name, cfg, (mod, size), device, perf, den, seeds=(3, 4)) for _ in range(2))
        rows.append({"solver": name, "modality": mod, "perf": perf, "bit_identical": bool(torch.equal(a, b)),
                     **errors(a, b)})
    return {"size": size, "rows": rows, "note": "perf {} = the defaults (on CUDA: vmap networks, CUDA graph)"}


def graph_rollback_run(A, y, z, cplx: bool, impl: str, device, graph: bool, channels=(8, 16, 16)):
    """12 steps of two stacked DIP networks through ``DIPEngine`` (eager with the capturable Adam,
    or replayed from a CUDA graph), with a snapshot at step 6 and, at step 9, a roll-back of slice
    0 and its lr halved: ``(losses [12, 2], flat parameters, graph_used, graph_error)``.  The CUDA
    test of the engine and ``section_graph_vs_eager`` run this same scenario."""
    from models.stacked_dip import StackedDIPNets
    from physics import finite_checks
    from solvers.dip_loop import dip_loss
    from solvers.engines import DIPEngine
    from solvers.optim import StackedAdam
    from utils.complex import from_channels, to_channels

    nets = StackedDIPNets({"channels": tuple(channels)}, cplx, [0, 1], device=device, impl=impl)
    eng = DIPEngine(nets, lambda net, zz: from_channels(net(to_channels(zz)), cplx),
                    lambda xx, zz: dip_loss(xx, y, A, 1.0, zz), lr=3e-3, cuda_graph=graph)
    if not graph:     # the same (capturable) Adam arithmetic as the graph
        eng.opts = [StackedAdam(nets.parameters(), 2, lr=3e-3, capturable=True)]
    losses = []
    with finite_checks(A, False):
        for i in range(12):
            if i == 6:
                snap = eng.snapshot()
            if i == 9:
                eng.restore(snap, [True, False])
                eng.scale_lr(0, 0.5)
            losses.append(eng.step(z).total.clone())
    params = torch.cat([p.detach().flatten() for p in nets.parameters()])
    return torch.stack(losses), params, eng.graph_used, eng.graph_error


def section_graph_vs_eager(device, quick: bool) -> dict:
    """Without CUDA the eager step is compared with itself (the code path only)."""
    from bench_steps import make_problem
    from models.stacked_dip import NET_IMPLS

    cuda = device.type == "cuda"
    rows = []
    for mod in ("MRI", "CT"):
        A, y, _ = make_problem(mod, 32, device, batch=2)
        z, cplx = A.input_image(y), bool(A.is_complex)
        for impl in NET_IMPLS:
            outs = [graph_rollback_run(A, y, z, cplx, impl, device, graph and cuda) for graph in (False, True)]
            (l0, p0, _, _), (l1, p1, used, err) = outs
            rows.append({"modality": mod, "net_impl": impl, "graph_used": used, "graph_error": err,
                         "losses": errors(l1, l0), "params": errors(p1, p0),
                         "bit_identical": bool(torch.equal(l0, l1) and torch.equal(p0, p1))})
    return {"rows": rows, **({} if cuda else {"note": "no CUDA: eager steps against eager steps (code path only)"})}


def section_operators(device, quick: bool) -> dict:
    from physics.coils import synthetic_coil_maps
    from physics.ct import ParallelBeamCT
    from physics.masks import get_mask
    from physics.mri import MultiCoilMRI

    n_mri, n_ct = (32, 32) if quick else (320, 256)
    g = torch.Generator().manual_seed(0)
    rows = []
    mri = MultiCoilMRI(get_mask("uniform1d", (n_mri, n_mri), 4.0, 0.08), synthetic_coil_maps(8, n_mri, n_mri))
    x = torch.randn(2, n_mri, n_mri, 2, generator=g)
    x = torch.view_as_complex(x)
    mri_d = MultiCoilMRI(get_mask("uniform1d", (n_mri, n_mri), 4.0, 0.08), synthetic_coil_maps(8, n_mri, n_mri))
    ops = [("MRI", mri, mri_d, x),
           ("CT", ParallelBeamCT(n_ct, num_views=30), ParallelBeamCT(n_ct, num_views=30),
            torch.rand(2, n_ct, n_ct, generator=g))]
    for name, op, opd, img in ops:
        y = op(img)
        opd = opd.to(device)
        yd = opd(img.to(device))
        row = {"operator": name, "size": img.shape[-1], "forward": errors(yd, y),
               "adjoint": errors(opd.adjoint(yd), op.adjoint(y)),
               "adjointness_f64_on_device": float(opd.adjointness_test())}
        if name == "CT":
            row["fbp"] = errors(opd.fbp(yd), op.fbp(y))
        rows.append(row)
    return {"rows": rows}


def section_matmul(device, quick: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "the bf16 matrix-product rate is measured on CUDA only"}
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    s = (time.perf_counter() - t0) / 10
    return {"n": n, "seconds": s, "tflops_per_s": 2 * n ** 3 / s / 1e12}


# --------------------------------------------------------------------------------------- main
def run_checks(device: torch.device, out: Path, quick: bool = False, budget_s: float = 240.0,
               sections=SECTIONS) -> dict:
    """Every section in order, written to ``out`` after each; the sections left when
    ``budget_s`` is spent are recorded as skipped."""
    res: dict[str, Any] = {"machine": machine_info(), "device": str(device), "quick": bool(quick),
                           "backend_defaults": backend_flags(), "sections": {}}
    t_start = time.perf_counter()
    fns = {n: globals()[f"section_{n}"] for n in SECTIONS}
    for name in sections:
        if time.perf_counter() - t_start > budget_s:
            res["sections"][name] = {"skipped": f"budget of {budget_s:.0f} s spent"}
        else:
            t0 = time.perf_counter()
            try:
                res["sections"][name] = fns[name](device, quick)
            except Exception as e:  # one broken section must not hide the others
                res["sections"][name] = {"error": f"{type(e).__name__}: {e}"[:800],
                                         "trace": traceback.format_exc(limit=4)}
            sync(device)
            res["sections"][name]["seconds"] = time.perf_counter() - t0
            print(f"[checks] {name}: {res['sections'][name]['seconds']:.1f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return res


#: keys of a run's summary that differ between equal runs (names, wall-clock times)
TIME_KEYS = ("seconds", "run", "timings_seconds", "total_slice_seconds")


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k not in TIME_KEYS}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _max_rel_diff(a, b) -> float:
    """Largest relative difference of the numbers in two equally shaped JSON values (``inf``
    when their structure, keys or non-numbers differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return float("inf")
        return max((_max_rel_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return float("inf")
        return max((_max_rel_diff(x, y) for x, y in zip(a, b)), default=0.0)
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        if a == b or (a != a and b != b):              # equal, or both NaN
            return 0.0
        return abs(a - b) / max(abs(a), abs(b))
    return 0.0 if a == b else float("inf")


#: the merged summary of a multi-process run sums its slices in completion order: equal to a
#: one-process summary up to float summation order
SUMMARY_RTOL = 1e-12


def compare_runs(a: Path, b: Path) -> dict:
    """Two run folders of the same slices (e.g. one process against ``torchrun`` ranks): equal
    per-slice metrics (psnr, ssim, nmse, exactly), equal reconstructions (``recon.npy``, bit for
    bit) and equal summaries — timings and names aside, groups matched by (solver, deg), numbers
    within :data:`SUMMARY_RTOL` (a merged run averages its slices in another order)?"""
    from utils.run_dir import RunDir

    def rows(p):
        return {(str(r["solver"]), str(r["deg"]), str(r["slice"])): r for r in RunDir(p).read_metrics()}

    ra, rb = rows(a), rows(b)
    keys = sorted(set(ra) | set(rb))
    missing = [list(k) for k in keys if k not in ra or k not in rb]
    metric_diff, recon_diff, recon_equal = 0.0, 0.0, True
    for k in keys:
        if k in ra and k in rb:
            for m in ("psnr", "ssim", "nmse"):
                metric_diff = max(metric_diff, abs(float(ra[k][m]) - float(rb[k][m])))
            xa, xb = (np.load(Path(p) / RunDir.slice_folder(k[0], k[2]) / "recon.npy") for p in (a, b))
            if xa.shape != xb.shape:
                recon_equal, recon_diff = False, float("inf")
                continue
            recon_equal &= bool(np.array_equal(xa, xb))
            recon_diff = max(recon_diff, float(np.abs(xa.astype(np.complex128) - xb).max()) if xa.size else 0.0)

    def summary(p):
        s = _strip_times(json.loads((Path(p) / "summary.json").read_text()))
        groups = {f"{g.get('solver')}/{g.get('deg')}": g for g in s.pop("groups", [])}
        return {**s, "groups": groups}

    s_diff = _max_rel_diff(summary(a), summary(b))
    return {"run_a": str(a), "run_b": str(b), "slices": len(keys), "missing": missing,
            "metrics_equal": not missing and metric_diff == 0.0, "max_abs_metric_diff": metric_diff,
            "recons_bit_identical": not missing and recon_equal, "max_abs_recon_diff": recon_diff,
            "summary_equal": s_diff <= SUMMARY_RTOL, "summary_max_rel_diff": s_diff}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="exp/checks.json")
    p.add_argument("--quick", action="store_true", help="toy sizes (a dry run of every section)")
    p.add_argument("--budget_s", type=float, default=240.0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    p.add_argument("--compare_runs", nargs=2, metavar=("RUN_A", "RUN_B"),
                   help="only compare two run folders of the same slices and write --out")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    if a.compare_runs:
        res = compare_runs(Path(a.compare_runs[0]), Path(a.compare_runs[1]))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + "\n")
        print(json.dumps(res, indent=1))
        return
    secs = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in secs if s not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {bad}; valid: {', '.join(SECTIONS)}")
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda but CUDA is not available; use --device=cpu")
    run_checks(dev, out, a.quick, a.budget_s, secs)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
