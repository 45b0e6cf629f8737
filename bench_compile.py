"""``python bench.py --compile_check``: does ``torch.compile`` change what the DIP networks compute?

Eager against compiled outputs (and parameter gradients) of the demo DIP U-Net, one case at a time
— the batched (vmapped) networks, a plain network, bf16, without BatchNorm, a few in-place SGD
steps — with the ``inductor`` and ``aot_eager`` backends; ``rel_err`` = ‖compiled − eager‖ / ‖eager‖.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from utils.timing import machine_info, sync


def compile_check(device: torch.device, out: Path, size: int = 64, budget_s: float = 150.0) -> dict:
    """Bisect why ``torch.compile`` of the batched DIP nets gives wrong images on CUDA: eager vs
    compiled outputs (and gradients) of the demo DIP U-Net, one case at a time, cheapest-to-explain
    first; the JSON is rewritten after every case so a timeout keeps what finished.

    Cases: ``vmap_fwd`` (StackedDIPNets, B=2, the failing setting), ``plain_fwd`` (one nn.Module,
    no vmap), ``vmap_fwd_norm_none`` (no BatchNorm), ``vmap_fwd_bwd`` (parameter gradients); backends
    ``inductor`` and ``aot_eager`` (no code generation).  ``rel_err`` = ‖compiled − eager‖ / ‖eager‖.
    """
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
