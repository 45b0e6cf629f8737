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


def compile_check(device: torch.device, out: Path, size: int = 64, budget_s: float = 150.0,
                  backends=("inductor", "aot_eager")) -> dict:
    """Bisect why ``torch.compile`` of the batched DIP nets gives wrong images on CUDA: eager vs
    compiled outputs (and gradients) of the demo DIP U-Net, one case at a time, cheapest-to-explain
    first; the JSON is rewritten after every case so a timeout keeps what finished.

    Cases: ``vmap_fwd`` (StackedDIPNets, B=2, the failing setting), ``plain_fwd`` (one nn.Module,
    no vmap), ``vmap_fwd_norm_none`` (no BatchNorm), ``vmap_fwd_bwd`` (parameter gradients); then
    whole fits (:func:`engine_fit`): 30 Adam steps of the solvers' step engine on an MRI problem,
    without and with a no-grad forward every 4 steps (as aSeqDIP's input update; a recompilation
    under ``no_grad``); backends ``inductor`` and ``aot_eager`` (no code generation), those in
    ``backends``.  ``rel_err`` = ‖compiled − eager‖ / ‖eager‖.
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
             ("vmap_fwd_bwd", "inductor"), ("engine_fit", "inductor"), ("engine_fit_nograd_between", "inductor"),
             ("engine_fit_nograd_between", "aot_eager")]
    cases = [(c, b) for c, b in cases if b in backends]
    for case, backend in cases:
        if time.perf_counter() - t_start > budget_s:
            rows.append({"case": case, "backend": backend, "skipped": "budget"})
            continue
        torch._dynamo.reset()
        row = {"case": case, "backend": backend}
        t0 = time.perf_counter()
        try:
            if case.startswith("engine_fit"):
                row.update(engine_fit(device, size, backend, nograd_between=case.endswith("between")))
            elif case == "plain_fwd":
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


def engine_fit(device: torch.device, size: int, backend: str, nograd_between: bool, steps: int = 30) -> dict:
    """30 Adam steps of :class:`solvers.engines.DIPEngine` (2 slices, demo widths) on an MRI problem
    with eager and with ``torch.compile``'d networks from the same initialisation: the relative
    data residual ‖A x − y‖/‖y‖ of each at the end, and ‖x_compiled − x_eager‖/‖x_eager‖.
    ``nograd_between``: a ``torch.no_grad`` forward every 4 steps, as aSeqDIP's input update."""
    from bench_steps import make_problem
    from models.stacked_dip import StackedDIPNets
    from physics import finite_checks
    from solvers.dip_loop import dip_loss
    from solvers.engines import DIPEngine
    from utils.complex import from_channels, to_channels

    A, y, _ = make_problem("MRI", size, device, batch=2)
    z = A.input_image(y)
    res = {}
    for name, comp in (("eager", False), ("compiled", True)):
        torch._dynamo.reset()
        nets = StackedDIPNets({"channels": (32, 64, 128, 128)}, True, [0, 1], device=device)
        if comp:
            nets._fn = torch.compile(nets._fn, backend=backend, dynamic=False)
        eng = DIPEngine(nets, lambda net, zz: from_channels(net(to_channels(zz)), True),
                        lambda xx, zz: dip_loss(xx, y, A, 1.0, zz), lr=1e-3)
        with finite_checks(A, False):
            for i in range(steps):
                eng.step(z)
                if nograd_between and i % 4 == 3:
                    with torch.no_grad():
                        eng.net(to_channels(z))
            with torch.no_grad():
                x = from_channels(eng.net(to_channels(z)), True)
        res[name] = x
        res[f"residual_{name}"] = float((A(x) - y).norm() / y.norm())
    e, c = res["eager"], res["compiled"]
    return {"residual_eager": res["residual_eager"], "residual_compiled": res["residual_compiled"],
            "rel_err": float((c - e).norm() / e.norm()), "finite": bool(torch.isfinite(torch.view_as_real(c)).all())}
