"""Measuring a callable on CPU or CUDA: seconds per call (with the device synchronised), peak
memory, FLOPs (``torch.utils.flop_counter``), the top operators (``torch.profiler``), and a
description of the machine.  Used by ``bench.py``.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

__all__ = ["cpu_model", "machine_info", "default_peak_tflops", "sync", "reset_peak", "peak_memory",
           "time_calls", "count_flops", "profile_ops", "H100_BF16_DENSE_TFLOPS"]

#: Dense bf16 peak of an H100 / H200 SXM (datasheet; the two share the chip).
H100_BF16_DENSE_TFLOPS = 989.0


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Host, CPU, GPUs, torch / CUDA / python versions and torch's thread count."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"name": p.name, "memory_bytes": int(p.total_memory)})
    return {"hostname": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "gpus": gpus, "torch": torch.__version__, "cuda": torch.version.cuda,
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def default_peak_tflops(device: torch.device) -> Optional[float]:
    """The peak used for MFU: :data:`H100_BF16_DENSE_TFLOPS` on an H100 / H200, else unknown."""
    if device.type == "cuda" and any(k in torch.cuda.get_device_name(device) for k in ("H100", "H200")):
        return H100_BF16_DENSE_TFLOPS
    return None


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak-memory window (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """CUDA: the peak allocated since :func:`reset_peak`; CPU: the process high-water mark."""
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
    """FLOPs of one call of ``fn`` (convolutions, matmuls, attention; not FFTs or element-wise)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


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
