"""What ``bench.py``'s ``prior_precision`` phase measures: one call of the ADM prior (ε̂ and its
Tweedie x̂₀) in float32, TF32, bf16 and fp16 autocast, each with and without channels-last, and
batched purification (B slices in one call).

* Speed: seconds per ε̂ call of one slice (after warm-up, one device sync at the end), FLOPs
  (``utils.timing.count_flops``), MFU against the peak.
* Accuracy: x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t of each variant against float32 without TF32
  (``fp32_strict``), at the diffusion steps :data:`PROBE_T`, on the forward-noised input image of
  the benchmark problem: ``max_abs``, ``rel`` = ‖Δ‖/‖x̂₀‖ and ``max_abs_rel`` = max|Δ| / max|x̂₀|.
  A variant is ``within_tol`` when every ``rel`` ≤ :data:`TWEEDIE_RTOL`.
* A prior without a checkpoint (``load_bench_prior``'s untrained twin) has ADM's zero-initialised
  output layers, so ε̂ ≡ 0 and every difference would vanish: for the accuracy rows its all-zero
  layers are re-drawn (seeded, PyTorch's default bound 1/√fan_in); timings are unaffected.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Optional

import torch

#: largest relative L2 difference of x̂₀ to fp32_strict for a variant to count as the same output:
#: 1 % of the image norm, ~40 dB below it — well under the 25–35 dB the reconstructions reach
TWEEDIE_RTOL = 1e-2
#: diffusion steps at which x̂₀ is compared: a purification step and a mid-chain DDS step
PROBE_T = (100, 500)
#: (name, autocast dtype, channels-last, TF32 convolutions); the fp32 rows first, then bf16 / fp16
VARIANTS = (
    ("fp32_strict", None, False, False),
    ("fp32", None, False, True),
    ("bf16", torch.bfloat16, False, True),
    ("fp16", torch.float16, False, True),
    ("fp32_cl", None, True, True),
    ("bf16_cl", torch.bfloat16, True, True),
    ("fp16_cl", torch.float16, True, True),
)


def redraw_zero_layers(unet: torch.nn.Module, seed: int = 0) -> int:
    """Re-draw every parameter tensor of ``unet`` that is all zero (weight and bias of ADM's
    zero-initialised convolutions) from U(−1/√fan_in, 1/√fan_in); returns how many modules."""
    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for m in unet.modules():
            w = getattr(m, "weight", None)
            if not isinstance(w, torch.nn.Parameter) or w.ndim < 2 or bool(w.any()):
                continue
            bound = 1.0 / math.sqrt(w[0].numel())
            for p in (w, getattr(m, "bias", None)):
                if isinstance(p, torch.nn.Parameter) and not bool(p.any()):
                    p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=g))
            n += 1
    return n


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def prior_precision(den, A, y, device: torch.device, steps: int, warmup: int, batch_sizes, peak: Optional[float],
                    trained: bool, seed: int = 0) -> dict[str, Any]:
    """The rows of the phase (see the module docstring) for prior ``den`` on the input images of
    ``A``, ``y`` (slice 0 for the per-call rows, the first B slices for batched purification)."""
    from bench_checks import backend_setting, errors
    from utils.rng import NoiseStreams
    from utils.timing import count_flops, time_calls

    x_all = A.input_image(y).detach()
    x = x_all[:1]
    work = copy.deepcopy(den)
    redrawn = 0 if trained else redraw_zero_layers(work.unet, seed)
    sched = work.schedule
    noise = NoiseStreams(seed=seed, device=x.device)
    x_ts = {t: sched.q_sample(x, t, noise=noise.like(x)) for t in PROBE_T}
    t_time = PROBE_T[0]
    with backend_setting(tf32=False):
        flops = count_flops(lambda: work.eps(x_ts[t_time], t_time))
        ref = {t: work(x_ts[t], t).detach() for t in PROBE_T}
    rows, cl_done = [], False
    for name, dtype, cl, tf32 in VARIANTS:
        if cl and not cl_done:
            work.unet.to(memory_format=torch.channels_last)
            cl_done = True
        row: dict[str, Any] = {"variant": name, "autocast": None if dtype is None else str(dtype).split(".")[-1],
                               "channels_last": cl, "tf32": tf32}
        try:
            with backend_setting(tf32=tf32), torch.no_grad():
                with _autocast(device, dtype):
                    x0 = {t: work(x_ts[t], t).detach() for t in PROBE_T}

                def call():
                    with _autocast(device, dtype):
                        return work.eps(x_ts[t_time], t_time)

                r = time_calls(call, device, steps, warmup, False)
        except Exception as e:  # e.g. fp16 convolutions on a CPU without them
            row["error"] = f"{type(e).__name__}: {e}"[:300]
            rows.append(row)
            continue
        tw = {}
        for t in PROBE_T:
            e = errors(x0[t], ref[t])
            e["max_abs_rel"] = e["max_abs"] / max(float(ref[t].abs().max()), 1e-300)
            e["finite"] = bool(torch.isfinite(torch.view_as_real(x0[t]) if x0[t].is_complex() else x0[t]).all())
            tw[str(t)] = e
        row.update(seconds=r["seconds"], peak_mem_bytes=r["peak_mem_bytes"], flops=flops,
                   tflops_per_s=flops / r["seconds"] / 1e12, tweedie_vs_fp32_strict=tw,
                   within_tol=all(v["rel"] <= TWEEDIE_RTOL and v["finite"] for v in tw.values()))
        if peak:
            row["mfu"] = row["tflops_per_s"] / peak
        rows.append(row)
    base = {r["variant"]: r.get("seconds") for r in rows}
    for r in rows:
        if r.get("seconds"):
            for b in ("fp32", "fp32_strict"):
                if base.get(b):
                    r[f"speedup_vs_{b}"] = base[b] / r["seconds"]
    fast = [r for r in rows if r.get("within_tol") and r["variant"] not in ("fp32", "fp32_strict")]
    best = min(fast, key=lambda r: r["seconds"])["variant"] if fast else None
    purify = batched_purify(work, x_all, device, steps, warmup, batch_sizes, best, seed)
    return {"trained_weights": trained, "zero_layers_redrawn": redrawn, "probe_t": list(PROBE_T),
            "tweedie_rtol": TWEEDIE_RTOL, "variants": rows, "best_within_tol": best, "batched_purify": purify}


def batched_purify(den, x_all, device, steps, warmup, batch_sizes, best: Optional[str], seed: int = 0) -> list:
    """``den.purify`` (one Tweedie step from t = 100) of B slices in one call, per B, in float32
    (TF32 on) and in ``best`` (its autocast and layout); slice 0 of each batch against a one-slice
    call with the same noise stream."""
    from bench_checks import backend_setting, errors
    from utils.rng import NoiseStreams
    from utils.timing import time_calls

    spec = {n: (d, cl) for n, d, cl, _ in VARIANTS}
    rows = []
    for name in ["fp32"] + ([best] if best else []):
        dtype, cl = spec[name]
        den.unet.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        base = None
        for B in sorted(set(int(b) for b in batch_sizes)):
            if B > x_all.shape[0]:
                continue
            xb = x_all[:B]

            def call(xb=xb, B=B):
                streams = NoiseStreams.per_slice([seed + b for b in range(B)], xb.device)
                with _autocast(device, dtype):
                    return den.purify(xb, 100, num_steps=1, noise=streams)

            try:
                with backend_setting(tf32=True):
                    r = time_calls(call, device, steps, warmup, False)
                    out, one = call(), call(xb[:1], 1)
            except Exception as e:
                rows.append({"variant": name, "B": B, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            per = r["seconds"] / B
            base = per if B == 1 else base
            rows.append({"variant": name, "B": B, "seconds_per_call": r["seconds"], "seconds_per_slice": per,
                         "throughput_vs_B1": None if base is None else base / per,
                         "peak_mem_bytes": r["peak_mem_bytes"], "slice0_vs_one_slice_call": errors(out[:1], one)})
    return rows
