"""The step engines of the DIP loop and their parts: StackedAdam (solvers/optim.py), the B stacked
networks (models/stacked_dip.py), DIPEngine and its CUDA-graph replay (solvers/engines.py,
solvers/cuda_graph.py).

Tiny problems only (≤ 16×16 images, small nets, few steps, one thread).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from models.dip_unet import build_dip_net
from models.stacked_dip import StackedDIPNets, grouped_forward
from physics import finite_checks, stack_physics
from solvers.common import net_output
from solvers.dip_loop import dip_loss
from solvers.engines import DIPEngine
from solvers.optim import StackedAdam
from tests.dip_problems import H, mri_problems
from utils.complex import from_channels, to_channels

NET = {"channels": (4, 8, 8)}

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ StackedAdam
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_stacked_adam_uniform_multi_tensor_equals_torch_adam(wd):
    """The common case (same lr and step count on every slice) takes the foreach path: several
    stacked tensors, each slice equal to torch.optim.Adam on that slice's tensors."""
    torch.manual_seed(1)
    B, shapes = 2, [(3, 4), (5,), (2, 2, 3)]
    w0 = [torch.randn(B, *sh, dtype=torch.float64) for sh in shapes]
    stacked = [w.clone().requires_grad_(True) for w in w0]
    opt = StackedAdam(stacked, B, lr=3e-3, weight_decay=wd)
    singles = [[w[b].clone().requires_grad_(True) for w in w0] for b in range(B)]
    topts = [torch.optim.Adam(singles[b], lr=3e-3, weight_decay=wd) for b in range(B)]
    for _ in range(4):
        gs = [torch.randn(B, *sh, dtype=torch.float64) for sh in shapes]
        for t, g in zip(stacked, gs):
            t.grad = g.clone()
        opt.step()
        for b in range(B):
            for t, g in zip(singles[b], gs):
                t.grad = g[b].clone()
            topts[b].step()
    for b in range(B):
        for t, s_ in zip(stacked, singles[b]):
            torch.testing.assert_close(t.detach()[b], s_.detach(), rtol=1e-12, atol=1e-14)


def test_stacked_adam_complex_parameter_equals_torch_adam_bitwise():
    """A complex parameter (self-guided DIP's input z) is updated through its real view, as
    torch.optim.Adam does: one slice is bit-identical to torch.optim.Adam on CPU."""
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(1, 5, 6, dtype=torch.complex64, generator=g)
    z = z0.clone().requires_grad_(True)
    ref = z0.clone().requires_grad_(True)
    opt, topt = StackedAdam([z], 1, lr=1e-2, weight_decay=0.1), torch.optim.Adam([ref], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        grad = torch.randn(1, 5, 6, dtype=torch.complex64, generator=g)
        z.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        topt.step()
    assert torch.equal(z.detach(), ref.detach())


def test_stacked_adam_equals_independent_adams_and_rolls_back():
    torch.manual_seed(0)
    B, lrs = 3, [1e-2, 5e-3, 2e-2]
    w0 = torch.randn(B, 4, 5, dtype=torch.float64)
    stacked = w0.clone().requires_grad_(True)
    opt = StackedAdam([stacked], B, lr=1e-2, weight_decay=0.01)
    opt.lr = list(lrs)
    singles = [w0[b].clone().requires_grad_(True) for b in range(B)]
    topts = [torch.optim.Adam([singles[b]], lr=lrs[b], weight_decay=0.01) for b in range(B)]
    for it in range(5):
        g = torch.randn(B, 4, 5, dtype=torch.float64)
        stacked.grad = g.clone()
        opt.step()
        for b in range(B):
            singles[b].grad = g[b].clone()
            topts[b].step()
        if it == 2:
            snap = opt.snapshot()
    for b in range(B):
        torch.testing.assert_close(stacked.detach()[b], singles[b].detach(), rtol=1e-12, atol=1e-14)
    cur = stacked.detach().clone()
    opt.restore(snap, [False, True, False])
    torch.testing.assert_close(stacked.detach()[1], snap["p"][0][1])
    torch.testing.assert_close(stacked.detach()[0], cur[0])
    assert opt.step_count == [5, 3, 5]


def test_stacked_adam_capturable_equals_default_with_per_slice_lr_and_rollback():
    """capturable=True (device lr / step count, what a CUDA graph replays) = the default mode:
    per-slice learning rates, a roll-back of one slice and an lr change in between."""
    torch.manual_seed(1)
    B, shapes = 3, [(4, 5), (7,), (2, 3, 3)]
    w0 = [torch.randn(B, *sh, dtype=torch.float64) for sh in shapes]
    runs = []
    for cap in (False, True):
        ps = [w.clone().requires_grad_(True) for w in w0]
        opt = StackedAdam(ps, B, lr=1e-2, weight_decay=0.01, capturable=cap)
        opt.lr = [1e-2, 5e-3, 2e-2]
        g = torch.Generator().manual_seed(7)
        for it in range(6):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            opt.step()
            if it == 1:
                snap = opt.snapshot()
            if it == 3:
                opt.restore(snap, [False, True, False])
                assert opt.scale_lr(1, 0.5) == pytest.approx(2.5e-3)
        runs.append((ps, opt.step_count, opt.lr))
    (p0, s0, l0), (p1, s1, l1) = runs
    assert s0 == s1 == [6, 4, 6] and l0 == l1
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    # and the rolled-back slice really moved differently from the others
    assert not torch.allclose(p0[0][1], w0[0][1])


def test_stacked_adam_capturable_float32_equals_torch_adam():
    torch.manual_seed(2)
    w0 = torch.randn(2, 6, 6)
    p = w0.clone().requires_grad_(True)
    opt = StackedAdam([p], 2, lr=1e-3, capturable=True)
    singles = [w0[b].clone().requires_grad_(True) for b in range(2)]
    topts = [torch.optim.Adam([s], lr=1e-3) for s in singles]
    for _ in range(20):
        g = torch.randn(2, 6, 6)
        p.grad = g.clone()
        opt.step()
        for b in range(2):
            singles[b].grad = g[b].clone()
            topts[b].step()
    for b in range(2):
        torch.testing.assert_close(p.detach()[b], singles[b].detach(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- the B networks
def test_one_grouped_network_is_the_plain_network_bitwise():
    """B = 1 with the grouped network: outputs and parameter gradients bit-identical to DIPUNet
    (CPU) — what makes a one-slice solve today's single-network computation."""
    net = build_dip_net(NET, True, 3)
    nets = StackedDIPNets(NET, True, [3], impl="grouped")
    x = torch.randn(1, 2, 13, 11, generator=torch.Generator().manual_seed(0))
    ref, got = net(x), nets(x)
    assert torch.equal(got, ref)
    g_ref = torch.autograd.grad(ref.square().mean(), list(net.parameters()))
    g_got = torch.autograd.grad(got.square().mean(), nets.parameters())
    assert all(torch.equal(a[0], b) for a, b in zip(g_got, g_ref))
    assert nets.num_params_per_net == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("norm,bilinear,channels_last", [("batch", True, False), ("batch", True, True),
                                                         ("batch", False, True), ("group", True, True),
                                                         ("instance", False, False), ("none", True, True)])
def test_grouped_forward_equals_vmap_outputs_and_gradients(norm, bilinear, channels_last):
    """models.stacked_dip.grouped_forward (B nets as one grouped net) = vmap over the B nets, outputs
    and parameter gradients to float64 rounding, on an odd size (reflect padding)."""
    nets = StackedDIPNets({"channels": (4, 8, 8), "norm": norm, "bilinear": bilinear}, True, [0, 1, 2],
                          dtype=torch.float64)
    x = torch.randn(3, 2, 13, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = nets(x)
    got = grouped_forward(nets.base, nets.params, x, channels_last=channels_last)
    assert got.shape == ref.shape == (3, 2, 13, 11)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-13)
    ps = list(nets.params.values())
    g_ref = torch.autograd.grad(ref.square().sum(), ps)
    g_got = torch.autograd.grad(got.square().sum(), ps)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # and network 1's output depends on network 1's parameters only
    with torch.no_grad():
        for v in nets.params.values():
            v[0].mul_(1.5)
    again = grouped_forward(nets.base, nets.params, x, channels_last=channels_last)
    torch.testing.assert_close(again[1:], got[1:].detach(), rtol=1e-12, atol=1e-13)
    assert not torch.allclose(again[0], got[0])


@pytest.mark.parametrize("impl", ["vmap", "grouped", "grouped_cl"])
def test_several_images_per_network(impl):
    """``[B, M, C, H, W]``: network b on its M images = DIPUNet(seed_b) on a batch of M (BatchNorm
    over the M images), float64."""
    seeds = [4, 7]
    nets = StackedDIPNets(NET, False, seeds, dtype=torch.float64, impl=impl)
    x = torch.randn(2, 3, 1, 12, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = nets(x)
    assert out.shape == (2, 3, 1, 12, 10)
    for b, s in enumerate(seeds):
        ref = build_dip_net(NET, False, s).double()(x[b])
        torch.testing.assert_close(out[b], ref, rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_compiled_stacked_nets_match_eager_on_cpu():
    """perf.compile on CPU: the compiled networks give the eager outputs and gradients."""
    eager = StackedDIPNets({"channels": (4, 8)}, False, [0, 1])
    comp = StackedDIPNets({"channels": (4, 8)}, False, [0, 1], compile=True)
    assert comp.compiled
    x = torch.randn(2, 1, H, H)
    out_e, out_c = eager(x), comp(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for k in eager.params:
        torch.testing.assert_close(comp.params[k].grad, eager.params[k].grad, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------ DIPEngine
def _engine(A, y, seeds, device="cpu", impl="grouped_cl", graph=False, lr=3e-3, trainable=None):
    nets = StackedDIPNets(NET, True, seeds, device=device, impl=impl)
    return DIPEngine(nets, lambda net, z: net_output(net, z, True), lambda x, z: dip_loss(x, y, A, 1.0, z),
                     lr=lr, cuda_graph=graph, trainable_input=trainable, input_lr=None if trainable is None else 1e-2)


def test_engine_rolls_back_one_slice_and_scales_its_learning_rates():
    """snapshot / restore(mask) act on the masked slices only (network and trainable input);
    scale_lr changes that slice's learning rates (networks and input)."""
    ops, ys = mri_problems(torch.float32)
    A, y = stack_physics(ops), torch.cat(ys)
    z = A.adjoint(y).requires_grad_(True)
    eng = _engine(A, y, [0, 1], trainable=z)
    with finite_checks(A, False):
        eng.step(z)
        snap = eng.snapshot()
        p_snap, z_snap = [p.detach().clone() for p in eng.nets.parameters()], z.detach().clone()
        for _ in range(3):
            s = eng.step(z)
    assert s.total.shape == s.data.shape == s.reg.shape == (2,) and s.bad is None
    p_now, z_now = [p.detach().clone() for p in eng.nets.parameters()], z.detach().clone()
    eng.restore(snap, [False, True])
    for p, a, b in zip(eng.nets.parameters(), p_now, p_snap):
        assert torch.equal(p[0], a[0]) and torch.equal(p[1], b[1])
    assert torch.equal(z[0], z_now[0]) and torch.equal(z[1], z_snap[1])
    assert eng.scale_lr(1, 0.5) == pytest.approx(1.5e-3)
    assert eng.lr == [3e-3, 1.5e-3] and eng.opts[1].lr == [1e-2, 5e-3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modality,impl", [("MRI", "vmap"), ("CT", "vmap"), ("MRI", "grouped_cl"), ("CT", "grouped_cl")])
def test_cuda_graph_step_equals_eager_step_with_rollback(modality, impl):
    """A DIPEngine step replayed from a CUDA graph = the same step run eagerly (capturable Adam),
    including a roll-back of one slice and an lr change between replays."""
    if modality == "MRI":
        ops, ys = mri_problems(torch.float32)
        A, y = stack_physics(ops).cuda(), torch.cat(ys).cuda()
        z, cplx = A.adjoint(y), True
    else:
        from physics.ct import ParallelBeamCT

        A = ParallelBeamCT(H, num_views=8).cuda()
        x = torch.rand(2, H, H, generator=torch.Generator().manual_seed(0)).cuda()
        y, cplx = A(x), False
        z = A.adjoint(y) / H
    from bench_checks import graph_rollback_run

    outs = []
    for graph in (False, True):
        losses, params, used, err = graph_rollback_run(A, y, z, cplx, impl, "cuda", graph, NET["channels"])
        assert used == graph, err
        outs.append((losses, params))
    (l0, p0), (l1, p1) = outs
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["grouped", "grouped_cl"])
def test_grouped_nets_on_cuda_match_vmap(impl):
    """The open question of AUTO_NET_IMPL: the grouped networks on CUDA against vmap on CUDA
    (TF32 off, so both are float32), outputs, gradients and 3 Adam steps."""
    from solvers import perf

    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()
        outs = {}
        for name in ("vmap", impl):
            with pytest.warns(UserWarning, match="not validated") if name != "vmap" else contextlib.nullcontext():
                assert perf.plan({"net_impl": name}, "cuda", 2).net_impl == name
            nets = StackedDIPNets({"channels": (32, 64, 128, 128)}, True, [0, 1], device="cuda", impl=name)
            opt = StackedAdam(nets.parameters(), 2, lr=1e-3)
            first = None
            for _ in range(3):
                opt.zero_grad()
                out = nets(x)
                first = out.detach().clone() if first is None else first
                out.square().mean().backward()
                opt.step()
            outs[name] = (first, nets(x).detach())
        (f0, l0), (f1, l1) = outs["vmap"], outs[impl]
        assert float((f1 - f0).norm() / f0.norm()) < 1e-4
        assert float((l1 - l0).norm() / l0.norm()) < 1e-2
    finally:
        torch.backends.cudnn.allow_tf32 = old
