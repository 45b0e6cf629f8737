"""What ``bench.py``'s ``paper_budget`` phase measures: seconds per slice of every solver at the
budget of the papers' code, naive against optimised settings, in one process.

* DIP solvers at K·N = :data:`DIP_STEPS` Adam steps (K = :data:`PAPER_K` outer iterations of
  N = :data:`PAPER_N` steps: the scale of the aSeqDIP authors' CT code).  Measured: two short solves
  (``--budget_outer`` outer iterations of N steps; vanilla DIP the same numbers of steps), a line
  ``t = a + b·units`` through the two, **extrapolated** to K (labelled ``extrapolated``).
  uDiG-DIP is measured with purification in every outer iteration; the difference of its slope
  and aSeqDIP's (same settings) is the purification cost per outer iteration, and the paper-budget
  time counts it in K·(purify_stop/num_outer) of the K iterations (the solver default's window);
  one purification call is also timed directly (``purify_call_s``).
* Diffusion solvers (DDS, DPS, Score-MRI, MCG) at their configured numbers of steps: run in full
  when ``--budget_dm_steps`` reaches it, else two shorter runs extrapolated the same way.
* Classical solvers (CG-SENSE, TV, L1-wavelet) in full.

Every row starts with one untimed short solve (kernels loaded, allocator warm).  Variants
(:data:`VARIANTS`), the same problem and prior: ``naive`` (float32, one slice, eager,
losses read every step: ``log_every=1``, vmap networks, no CUDA graph), ``default`` (the defaults
of ``main.py``), ``fast`` (bf16 autocast and channels-last for the DIP networks (``grouped_cl``)
and the prior), ``batched`` (defaults, B slices per solve; time per slice).  Rows are measured in
priority order (every solver's ``default`` first) until ``--budget_s`` is spent.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Optional

import torch

#: the aSeqDIP authors' CT code: 2000 outer iterations × 10 Adam steps
PAPER_K, PAPER_N = 2000, 10
DIP_STEPS = PAPER_K * PAPER_N
VARIANTS = ("default", "naive", "fast", "batched")
DIP_SOLVERS = ("udigdip", "aseqdip", "dip")
DM_SOLVERS = ("dds", "dps", "scoremri", "mcg")
#: every solver, in the order its rows are measured within one variant
SOLVERS = ("udigdip", "aseqdip", "dds", "dip", "dps", "scoremri", "mcg", "cgsense", "tv", "l1wavelet")


def purify_window() -> float:
    """uDiG-DIP's default share of outer iterations with purification (purify_stop / num_outer)."""
    from solvers.udig_dip import default_config

    c = default_config()
    return (int(c.purify_stop) - int(c.purify_start)) / int(c.num_outer)


def _settings(name: str, variant: str, den_u, den_o, bmax: int) -> Optional[dict]:
    """``{perf, log_every, den, B}`` of ``variant`` for solver ``name`` (``None``: no such variant)."""
    kind = "dip" if name in DIP_SOLVERS else "dm" if name in DM_SOLVERS else "classical"
    if variant == "fast" and kind == "classical":
        return None
    s = {"perf": {}, "log_every": None, "den": den_u, "B": 1}
    if variant == "naive":
        s.update(perf={"cuda_graph": "off", "net_impl": "vmap"}, log_every=1)
    elif variant == "fast":
        s.update(perf={"bf16": True, "net_impl": "grouped_cl"}, den=den_o)
    elif variant == "batched":
        s["B"] = bmax
    return s


def _units(name: str, outer: tuple, dm_steps: tuple, inner: int) -> tuple[str, tuple, int, str]:
    """(config field, measured lengths, target length, unit) of solver ``name``."""
    import solvers

    if name in ("udigdip", "aseqdip"):
        return "num_outer", tuple(outer), PAPER_K, f"outer iteration of N={inner} steps"
    if name == "dip":
        return "num_steps", tuple(k * inner for k in outer), DIP_STEPS, "Adam step"
    cls = solvers.solver_class(name)
    field = getattr(cls, "steps_field", "num_iters")
    target = int(solvers.default_config(name)[field])
    if name in DM_SOLVERS:
        lens = tuple(min(int(n), target) for n in dm_steps)
        return field, (target,) if max(lens) >= target else lens, target, "step"
    return field, (target,), target, "iteration"


def _solve_fn(name, field, units, s, A, y, device, net_cfg, inner) -> Callable[[], Any]:
    import solvers

    cfg: dict = {field: int(units)}
    if name in DIP_SOLVERS:
        cfg.update(net=dict(net_cfg), disable_progress=True)
        if name != "dip":
            cfg["inner_steps"] = int(inner)
        if name == "udigdip":
            cfg.update(purify_start=0, purify_stop=int(units))
    else:
        cfg["progress"] = False
    if s["log_every"]:
        cfg["log_every"] = s["log_every"]
    B = s["B"]
    den = s["den"] if solvers.needs_prior(name) else None

    def fn():
        solver = solvers.make_solver(name, cfg, den, seeds=list(range(B)), device=device, perf=s["perf"])
        return solver(y[:B], A if B == y.shape[0] else _first(A, B, y)).x_hat
    return fn


def _first(A, B: int, y):
    """The operator of the first ``B`` slices of batched operator ``A``."""
    from bench_steps import slice_physics
    from physics import stack_physics

    return slice_physics(A, 0) if B == 1 else stack_physics([slice_physics(A, b) for b in range(B)])


def _purify_call(den, A, y, device, t: int = 100) -> float:
    from utils.timing import time_calls

    x = A.input_image(y)[:1] if y.shape[0] > 1 else A.input_image(y)
    g = torch.Generator(device=device).manual_seed(0)
    return time_calls(lambda: den.purify(x, t, num_steps=1, noise=g), device, 3, 1, False)["seconds"]


def paper_budget(A, y, device, den_u, den_o, net_cfg, modality: str, budget_s: float, outer=(3, 20),
                 dm_steps=(5, 50), inner: int = PAPER_N, variants=VARIANTS, names=SOLVERS) -> dict:
    """The rows of the phase (module docstring) for the batched problem ``A``, ``y``."""
    import solvers
    from utils.timing import time_calls

    bmax = int(y.shape[0])
    t0 = time.perf_counter()
    rows: list[dict] = []
    for variant in variants:
        for name in names:
            if modality not in getattr(solvers.solver_class(name), "modalities", ("MRI", "CT")):
                continue
            s = _settings(name, variant, den_u, den_o, bmax)
            if s is None or (variant == "batched" and bmax == 1):
                continue
            field, lens, target, unit = _units(name, outer, dm_steps, inner)
            row: dict[str, Any] = {"modality": modality, "solver": name, "variant": variant, "B": s["B"],
                                   "perf": s["perf"], "log_every": s["log_every"] or "default",
                                   "prior": None if not solvers.needs_prior(name) else
                                   ("optimised (bf16, channels-last)" if s["den"] is den_o else "float32"),
                                   "unit": unit, "target_units": target, "measured": []}
            if time.perf_counter() - t0 > budget_s:
                row["skipped"] = f"budget of {budget_s:.0f} s spent"
                rows.append(row)
                continue
            try:
                # one untimed short solve first: kernels loaded and tuned, allocator warm
                _solve_fn(name, field, 1 if name != "dip" else inner, s, A, y, device, net_cfg, inner)()
                for n in lens:
                    fn = _solve_fn(name, field, n, s, A, y, device, net_cfg, inner)
                    r = time_calls(fn, device, 1, 0, False)
                    row["measured"].append({"units": int(n), "seconds": r["seconds"],
                                            "peak_mem_bytes": r["peak_mem_bytes"]})
                if name == "udigdip" and s["den"] is not None:
                    row["purify_call_s"] = _purify_call(s["den"], A, y, device)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                row["trace"] = traceback.format_exc(limit=3)
            rows.append(row)
    for r in rows:
        extrapolate(r, rows)
    return {"paper_K": PAPER_K, "paper_N": PAPER_N, "dip_steps": DIP_STEPS, "purify_window": purify_window(),
            "inner_steps_measured": int(inner), "rows": rows, "ratios": ratios(rows),
            "seconds": time.perf_counter() - t0}


def _line(m: list) -> tuple[float, float]:
    """(intercept, slope) of seconds over units through the first and last measurement."""
    if len(m) < 2:
        return 0.0, m[0]["seconds"] / m[0]["units"]
    (u1, t1), (u2, t2) = (m[0]["units"], m[0]["seconds"]), (m[-1]["units"], m[-1]["seconds"])
    slope = (t2 - t1) / (u2 - u1)
    return t1 - slope * u1, slope


def extrapolate(r: dict, rows: list) -> None:
    """``seconds_per_slice`` at the row's target (measured, or extrapolated along the line)."""
    m = r.get("measured") or []
    if r.get("error") or r.get("skipped") or not m:
        return
    B = r["B"]
    if m[-1]["units"] == r["target_units"]:
        r.update(seconds_per_slice=m[-1]["seconds"] / B, extrapolated=False)
        return
    a, b = _line(m)
    r.update(intercept_s=a, slope_s_per_unit=b, extrapolated=True)
    total = a + b * r["target_units"]
    if r["solver"] == "udigdip":
        seq = next((q for q in rows if q["solver"] == "aseqdip" and q["variant"] == r["variant"]
                    and q.get("measured") and not q.get("error") and not q.get("skipped")), None)
        if seq is not None and len(seq["measured"]) > 1:
            b_seq = _line(seq["measured"])[1]
            k_p = round(purify_window() * r["target_units"])
            r.update(purify_s_per_outer=b - b_seq, purified_outer_iterations=k_p)
            total = a + b_seq * r["target_units"] + (b - b_seq) * k_p
        else:
            r["note"] = "purification counted in every outer iteration (no aSeqDIP row): an upper bound"
    r["seconds_per_slice"] = total / B


def ratios(rows: list) -> dict:
    """uDiG-DIP : DDS seconds per slice per variant and best against best; naive : optimised per solver."""
    by = {(r["solver"], r["variant"]): r.get("seconds_per_slice") for r in rows}
    out: dict[str, Any] = {"udigdip_to_dds": {}, "naive_to_best": {}}
    for v in VARIANTS:
        u, d = by.get(("udigdip", v)), by.get(("dds", v))
        if u and d:
            out["udigdip_to_dds"][v] = u / d
    best = {}
    for (name, v), s in by.items():
        if s:
            best[name] = min(best.get(name, s), s)
    if best.get("udigdip") and best.get("dds"):
        out["udigdip_to_dds"]["best_vs_best"] = best["udigdip"] / best["dds"]
    for name in best:
        if by.get((name, "naive")):
            out["naive_to_best"][name] = by[(name, "naive")] / best[name]
    return out
