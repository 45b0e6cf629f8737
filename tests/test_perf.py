"""Performance and scale: FLOP counting, batched DIP (solvers/batched.py), sharding and merging
across processes (utils/distributed.py), and an end-to-end smoke run of bench.py.

Tiny problems only (≤ 16×16 images, small nets, few steps, one thread).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule
from physics.mri import MultiCoilMRI
from solvers.batched import (BatchedSeqDIP, BatchedUDiGDIP, StackedAdam, split_result,
                             stack_physics)
from solvers.seqdip import SeqDIP
from solvers.udig_dip import UDiGDIP
import solvers.udig_dip as udig_mod
from utils import distributed as D
from utils.rng import NoiseStreams

REPO = Path(__file__).resolve().parents[1]
H = 16


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ FLOPs
def test_flop_counter_conv_matches_formula():
    from torch.utils.flop_counter import FlopCounterMode

    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)
    with FlopCounterMode(display=False) as fc:
        conv(x)
    expected = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3      # 2·B·Cout·H·W·Cin·k²  (multiply + add)
    assert fc.get_total_flops() == expected
    # forward + backward (grad wrt input and weight) = 3× forward
    x.requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        conv(x).sum().backward()
    assert fc.get_total_flops() == 3 * expected


# ------------------------------------------------------------------------------------ batched
class _EpsNet(nn.Module):
    """Small deterministic ε-network (dtype-following) for a real Denoiser."""

    def __init__(self, ch: int, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c = nn.Conv2d(ch, ch, 3, padding=1).to(dtype)
        with torch.no_grad():
            self.c.weight.copy_(0.1 * torch.randn(self.c.weight.shape, generator=g, dtype=dtype))
            self.c.bias.copy_(0.1 * torch.randn(self.c.bias.shape, generator=g, dtype=dtype))  # seeded too

    def forward(self, x, t):
        return self.c(x) * (1 + t.view(-1, 1, 1, 1).to(x.dtype) / 1000)


def _problem(dtype, B=2):
    cdt = torch.complex128 if dtype == torch.float64 else torch.complex64
    ops, ys = [], []
    for b in range(B):
        g = torch.Generator().manual_seed(b)
        m = (torch.rand(H, generator=g) < 0.4).to(dtype)
        m[6:10] = 1
        A = MultiCoilMRI(m.expand(H, H).clone())
        x = (0.5 * torch.randn(1, H, H, generator=g, dtype=dtype)).to(cdt)
        ops.append(A)
        ys.append(A(x))
    return ops, ys


def _cfg(**over):
    c = dict(net={"channels": (4, 8, 8)}, lr=3e-3, log_every=2, disable_progress=True, num_outer=4,
             inner_steps=3, t_start=100, t_end=10, purify_start=0, purify_stop=3)
    c.update(over)
    return c


def _single_runs(cls, cfg, den, seeds, ops, ys, dtype):
    orig = udig_mod.build_dip_net

    def build(*a, **k):   # UDiGDIP builds float32 nets; cast for the float64 comparison
        return orig(*a, **k).to(dtype)

    with mock.patch.object(udig_mod, "build_dip_net", build):
        return [(cls(cfg, den, seed=s) if cls is UDiGDIP else cls(cfg, seed=s))(ys[b], ops[b])
                for b, s in enumerate(seeds)]


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_batched_udigdip_matches_single_runs(dtype, rtol):
    """Slice b of a B=2 batched run = UDiGDIP(seed_b) alone: float64 to round-off; float32 to a
    loose tolerance (grouped vs plain conv summation order, amplified by Adam; see module doc)."""
    den = Denoiser(_EpsNet(2, dtype), DiffusionSchedule(), is_complex=True, learn_sigma=False)
    ops, ys = _problem(dtype)
    seeds = [10, 11]
    singles = _single_runs(UDiGDIP, _cfg(), den, seeds, ops, ys, dtype)
    res = BatchedUDiGDIP(_cfg(), den, seeds=seeds)(torch.cat(ys), stack_physics(ops))
    assert res.x_hat.shape == (2, H, H) and res.x_hat.dtype == ys[0].dtype
    per = split_result(res)
    for b, (r, s) in enumerate(zip(per, singles)):
        rel = float((r.x_hat - s.x_hat).norm() / s.x_hat.norm())
        assert rel < rtol, (b, rel)
        assert r.history["step"] == s.history["step"]
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=max(rtol, 1e-12))
        assert r.history["t"] == s.history["t"]
        assert r.info["seed"] == seeds[b]
    # the two slices really are different problems/networks
    assert float((per[0].x_hat - per[1].x_hat).abs().max()) > 1e-3


def test_batched_seqdip_matches_single_and_no_coupling():
    dtype = torch.float64
    ops, ys = _problem(dtype, B=3)
    cfg = {k: v for k, v in _cfg().items() if not k.startswith(("t_", "purify"))}
    singles = _single_runs(SeqDIP, cfg, None, [0, 1, 2], ops, ys, dtype)
    res = BatchedSeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops))
    for r, s in zip(split_result(res), singles):
        assert float((r.x_hat - s.x_hat).norm() / s.x_hat.norm()) < 1e-9
    # per-slice callbacks see exactly what a single run's callback sees
    seen = [[], [], []]
    cbs = [lambda st, x, info, b=b: seen[b].append((st, tuple(x.shape), info["outer"])) for b in range(3)]
    BatchedSeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops), callback=cbs)
    single_seen = []
    SeqDIP(cfg, seed=0)(ys[0].to(torch.complex64), ops[0], callback=lambda st, x, info: single_seen.append(
        (st, tuple(x.shape), info["outer"])))
    assert seen[0] == seen[1] == seen[2] == single_seen


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


def test_batched_purify_matches_single_purify_with_ddim_noise():
    dtype = torch.float64
    den = Denoiser(_EpsNet(1, dtype), DiffusionSchedule(), is_complex=False, learn_sigma=False)
    x = torch.rand(3, H, H, dtype=dtype)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = den.purify(x, 200, num_steps=3, eta=0.5, noise=NoiseStreams(generators=gens))
    for b, s in enumerate((1, 2, 3)):
        ref = den.purify(x[b:b + 1], 200, num_steps=3, eta=0.5, noise=torch.Generator().manual_seed(s))
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-10, atol=1e-12)


def test_batched_rejects_wrong_batch():
    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "num_outer": 1, "inner_steps": 1, "disable_progress": True}
    with pytest.raises(ValueError, match="seeds"):
        BatchedSeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_on_cuda_matches_cpu_loosely():
    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "num_outer": 2, "inner_steps": 2, "disable_progress": True,
           "perf": {"net_impl": "vmap"}}
    cpu = BatchedSeqDIP(cfg, seeds=[0, 1])(torch.cat(ys), stack_physics(ops)).x_hat
    gpu = BatchedSeqDIP(cfg, seeds=[0, 1], device="cuda")(torch.cat(ys).cuda(), stack_physics(ops).cuda()).x_hat
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-2
    bf = BatchedSeqDIP({**cfg, "perf": {"bf16": True, "net_impl": "vmap"}}, seeds=[0, 1], device="cuda")(
        torch.cat(ys).cuda(), stack_physics(ops).cuda()).x_hat
    assert torch.isfinite(torch.view_as_real(bf)).all()


def test_compile_refused_on_cuda_allowed_on_cpu():
    from solvers.batched import BatchedDIPNets, compile_refusal

    assert compile_refusal(torch.device("cpu")) is None
    assert "wrong images" in compile_refusal(torch.device("cuda"))
    if torch.cuda.is_available():
        with pytest.warns(UserWarning, match="perf.compile ignored"):
            nets = BatchedDIPNets({"channels": (4, 8)}, False, [0, 1], device="cuda", compile=True)
        assert not nets.compiled


@pytest.mark.slow
def test_compiled_batched_nets_match_eager_on_cpu():
    """perf.compile on CPU: the compiled vmapped networks give the eager outputs and gradients."""
    from solvers.batched import BatchedDIPNets

    eager = BatchedDIPNets({"channels": (4, 8)}, False, [0, 1])
    comp = BatchedDIPNets({"channels": (4, 8)}, False, [0, 1], compile=True)
    assert comp.compiled
    x = torch.randn(2, 1, H, H)
    out_e, out_c = eager(x), comp(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    out_e.square().sum().backward()
    out_c.square().sum().backward()
    for k in eager.params:
        torch.testing.assert_close(comp.params[k].grad, eager.params[k].grad, rtol=1e-3, atol=1e-5)


# -------------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("n", [0, 1, 5, 12])
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shard_covers_every_item_once(n, world):
    items = list(range(n))
    parts = [D.shard(items, r, world) for r in range(world)]
    flat = sorted(i for p in parts for i in p)
    assert flat == items
    assert parts == [D.shard(items, r, world) for r in range(world)]    # deterministic
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1  # balanced
    with pytest.raises(ValueError):
        D.shard(items, world, world)


def test_dist_info_from_env():
    assert D.dist_info({}) == D.DistInfo(0, 1, 0, 1)
    info = D.dist_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.is_main) == (3, 4, 1, True, False)
    with pytest.raises(ValueError, match="RANK"):
        D.dist_info({"RANK": "4", "WORLD_SIZE": "4"})
    assert D.device_for(D.DistInfo(), "cpu").type == "cpu"


_WORKER = textwrap.dedent("""
    import sys, torch
    import numpy as np
    from utils import distributed as D
    from utils.run_dir import make_run_dir
    torch.set_num_threads(1)
    root, rendezvous = sys.argv[1], sys.argv[2]
    info = D.dist_info()
    D.init_distributed(info, device_hint="cpu", timeout_s=120)
    rd, token = D.shared_run_dir(info, lambda: make_run_dir(root, name="dist", write_meta=False),
                                 rendezvous=rendezvous, timeout_s=120)
    slices = [f"s{i:02d}" for i in range(7)]
    for i, name in D.shard(list(enumerate(slices)), info.rank, info.world_size):
        with rd.timer("solve") as t:
            recon = np.full((4, 4), float(i), dtype=np.float32)
        rd.save_slice("fake", name, deg="SV-CT", recon=recon, metrics={"psnr": 20.0 + i, "ssim": 0.5, "nmse": 0.1},
                      input_metrics={"psnr": 10.0, "ssim": 0.2}, seconds=1.0, plots=False,
                      extra={"rank": info.rank})
    summary = D.finish(rd, info, token, timeout_s=120)
    if info.is_main:
        print("RUN", rd.path)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("mode", ["file", "gloo"])
def test_two_processes_merge_one_summary(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    root = tmp_path / "exp"
    procs = []
    port = _free_port()
    for r in range(2):
        env = {**os.environ, "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": "2",
               "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        if mode == "gloo":
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        else:
            env.pop("MASTER_ADDR", None)
            env["UDIG_RUN_TOKEN"] = f"tok-{tmp_path.name}"
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), str(tmp_path / "rdv.json")],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (o, e) in zip(procs, outs):
        if mode == "gloo" and p.returncode != 0 and ("gloo" in e.lower() or "connect" in e.lower()):
            pytest.skip(f"gloo process group unavailable here: {e[-300:]}")
        assert p.returncode == 0, e[-2000:]
    runs = [d for d in root.iterdir() if d.is_dir()]
    assert len(runs) == 1                                   # ONE shared run folder
    run = runs[0]
    assert f"RUN {run}" in outs[0][0]
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert sorted(r["slice"] for r in rows) == [f"s{i:02d}" for i in range(7)]
    ranks = {json.loads((run / "slices" / "fake" / f"s{i:02d}" / "result.json").read_text())["extra"]["rank"]
             for i in range(7)}
    assert ranks == {0, 1}                                  # both ranks did work
    summary = json.loads((run / "summary.json").read_text())
    assert "fake" in json.dumps(summary) and summary["run"] == run.name
    timings = json.loads((run / "timings.json").read_text())["seconds"]
    assert "solve" in timings
    assert not list(run.glob("*.tmp"))


def test_merge_waits_for_token_and_rank_dir_writes_no_csv(tmp_path):
    from utils.run_dir import make_run_dir

    base = make_run_dir(tmp_path, name="m", write_meta=False)
    rd0, rd1 = D.RankRunDir(base.path, 0, 2), D.RankRunDir(base.path, 1, 2)
    rd0.save_slice("s", "a", recon=np.zeros((2, 2)), metrics={"psnr": 1.0}, plots=False)
    rd1.save_slice("s", "b", recon=np.zeros((2, 2)), metrics={"psnr": 3.0}, plots=False)
    assert not rd0.metrics_csv.exists()
    D.mark_done(rd0, 0, "new")
    D.mark_done(rd1, 1, "old")                              # stale marker of another invocation
    with pytest.raises(TimeoutError, match=r"\[1\]"):
        D.merge_metrics(rd0, 2, token="new", timeout_s=0.3, poll_s=0.05)
    D.mark_done(rd1, 1, "new")
    summary = D.merge_metrics(rd0, 2, token="new", timeout_s=5)
    assert len(rd0.read_metrics()) == 2 and summary["run"] == base.name


# -------------------------------------------------------------------------------------- bench
@pytest.mark.parametrize("modality", ["MRI", "CT"])
def test_bench_batched_dip_step_equals_single_nets(modality):
    """The batched DIP-step benchmark computes the real thing: its first step's per-slice losses
    are the losses of the one-network step (seed 0 = slice 0's network) to float32 rounding."""
    import bench_steps as bench

    dev = torch.device("cpu")
    A, y, _ = bench.make_problem(modality, 16, dev, batch=2)
    net = {"channels": (4, 8)}
    single = bench.dip_step_fns(bench.slice_physics(A, 0), y[:1], dev, net, False, False)[0]
    batched = bench.batched_dip_step_fn(A, y, dev, net, 2, False, False)
    l_single, l_batched = float(single()), batched()
    assert l_batched.shape == (2,) and torch.isfinite(l_batched).all()
    assert l_batched[0].item() == pytest.approx(l_single, rel=1e-5)
    assert l_batched[1].item() != pytest.approx(l_single, rel=1e-3)   # slice 1: other net and data


@pytest.mark.slow
def test_bench_end_to_end_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "bench.py", "--size=16", "--steps=2", "--warmup=0", "--batch_sizes=1,2",
           "--modalities=MRI", "--solvers=udigdip,aseqdip,dds", "--threads=1", "--device=cpu", f"--out={out}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(out.read_text())
    assert d["machine"]["torch"] == torch.__version__ and d["machine"]["cpu"]
    assert not d["errors"], d["errors"]
    phases = {(r["phase"], r["variant"]) for r in d["phases"]}
    for ph in ("dip_step", "purify", "dds_step", "solve"):
        assert {(ph, "unopt"), (ph, "opt")} <= phases
    dip = [r for r in d["phases"] if r["phase"] == "dip_step"]
    assert all(r["flops"] > 0 and r["seconds"] > 0 and r["peak_mem_bytes"] > 0 for r in dip)
    assert all("mfu" not in r for r in d["phases"])          # no --peak_tflops on CPU
    assert [b["B"] for b in d["batched"]] == [1, 2]
    assert [b["B"] for b in d["dip_batched"]] == [1, 2]
    assert d["dip_batched"][1]["flops"] == 2 * d["dip_batched"][0]["flops"] > 0
    assert all(s["ratio"] > 0 for s in d["speedups"])
    assert "| dip_step |" in p.stdout


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_batched_vanilla_dip_matches_single_runs(noise_std):
    """Slice b of BatchedVanillaDIP = VanillaDIP(seed_b): same noise input (and per-step input
    perturbation), same network init; float32, so to a loose tolerance after 12 Adam steps and
    closely at the first logged loss."""
    from solvers.batched import BatchedVanillaDIP, make_batched_solver
    from solvers.dip import VanillaDIP

    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "lr": 3e-3, "log_every": 3, "disable_progress": True,
           "num_steps": 12, "input_channels": 3, "input_noise_std": noise_std}
    seeds = [4, 9]
    singles = [VanillaDIP(cfg, seed=s)(ys[b], ops[b]) for b, s in enumerate(seeds)]
    solver = make_batched_solver("dip", cfg, seeds=seeds)
    assert isinstance(solver, BatchedVanillaDIP)
    res = solver(torch.cat(ys), stack_physics(ops))
    for b, (r, s) in enumerate(zip(split_result(res), singles)):
        assert r.history["step"] == s.history["step"] == [3, 6, 9, 12]
        assert r.history["loss"][0] == pytest.approx(s.history["loss"][0], rel=1e-5)
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=1e-2)
        assert float((r.x_hat - s.x_hat).norm() / s.x_hat.norm()) < 2e-3, b
        assert r.info["seed"] == seeds[b] and r.info["config"]["num_steps"] == 12
        assert r.history["reg_loss"] == [0.0] * 4
    assert float((res.x_hat[0] - res.x_hat[1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="input_kind"):
        BatchedVanillaDIP({"input_kind": "bogus"}, seeds=[0])


# ------------------------------------------------------------ capturable Adam, NaN guard, CUDA graphs
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


class _NaNAtCall:
    """Wraps ``A.forward``: the ``at``-th forward call with gradients returns NaN for ``slices``."""

    def __init__(self, A, at: int, slices):
        self.A, self.at, self.slices, self.calls = A, at, list(slices), 0
        self.orig = A.forward
        A.forward = self

    def __call__(self, x):
        out = self.orig(x)
        if x.requires_grad:
            self.calls += 1
            if self.calls == self.at:
                mask = torch.zeros(out.shape[0], dtype=torch.bool)
                mask[self.slices] = True
                nan = torch.tensor(float("nan"), dtype=out.real.dtype)
                out = out * torch.where(mask, nan, 1.0).view(-1, *[1] * (out.ndim - 1))   # NaN gradients too
        return out


@pytest.mark.parametrize("at", [4, 5])    # 4: a check step (log_every=2); 5: NaN weights until step 6
def test_batched_nan_guard_rolls_back_only_the_bad_slice(at):
    """A NaN in slice 1 at one step: slice 1 = a single run with the same NaN (rolled back, lr
    halved, event recorded at the same step), slice 0 = an undisturbed single run (float64)."""
    dtype = torch.float64
    ops, ys = _problem(dtype)
    cfg = {k: v for k, v in _cfg(num_outer=2, inner_steps=4).items() if not k.startswith(("t_", "purify"))}
    seeds = [3, 4]
    A = stack_physics(ops)
    clean0 = _single_runs(SeqDIP, cfg, None, seeds[:1], ops, ys, dtype)[0]
    _NaNAtCall(ops[1], at, [0])
    bad1 = _single_runs(SeqDIP, cfg, None, seeds[1:], ops[1:], ys[1:], dtype)[0]
    _NaNAtCall(A, at, [1])
    res = split_result(BatchedSeqDIP(cfg, seeds=seeds)(torch.cat(ys), A))
    assert bad1.history["nan_events"] and "nan_events" not in clean0.history
    assert res[1].history["nan_events"] == bad1.history["nan_events"]
    assert "nan_events" not in res[0].history
    for r, s in ((res[0], clean0), (res[1], bad1)):
        assert torch.isfinite(torch.view_as_real(r.x_hat)).all()
        assert float((r.x_hat - s.x_hat).norm() / s.x_hat.norm()) < 1e-9
        assert r.history["lr"] == s.history["lr"]


def test_cuda_graph_flag_on_cpu_warns_and_runs_eagerly():
    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "num_outer": 1, "inner_steps": 3, "disable_progress": True}
    ref = BatchedSeqDIP(cfg, seeds=[0, 1])(torch.cat(ys), stack_physics(ops))
    with pytest.warns(UserWarning, match="cuda_graph ignored"):
        res = BatchedSeqDIP({**cfg, "perf": {"cuda_graph": True}}, seeds=[0, 1])(torch.cat(ys), stack_physics(ops))
    assert torch.equal(res.x_hat, ref.x_hat) and res.info["cuda_graph"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("modality,impl", [("MRI", "vmap"), ("CT", "vmap"), ("MRI", "grouped_cl"), ("CT", "grouped_cl")])
def test_cuda_graph_step_equals_eager_step_with_rollback(modality, impl):
    """BatchedDIPStep replayed from a CUDA graph = the same step run eagerly (capturable Adam),
    including a roll-back of one slice and an lr change between replays."""
    from solvers.batched import BatchedDIPNets, BatchedDIPStep

    if modality == "MRI":
        ops, ys = _problem(torch.float32)
        A, y = stack_physics(ops).cuda(), torch.cat(ys).cuda()
        z, cplx = A.adjoint(y), True
    else:
        from physics.ct import ParallelBeamCT

        A = ParallelBeamCT(H, num_views=8).cuda()
        x = torch.rand(2, H, H, generator=torch.Generator().manual_seed(0)).cuda()
        y, cplx = A(x), False
        z = A.adjoint(y) / H
    outs = []
    for graph in (False, True):
        nets = BatchedDIPNets({"channels": (4, 8, 8)}, cplx, [0, 1], device="cuda", impl=impl)
        opt = StackedAdam(nets.parameters(), 2, lr=3e-3, capturable=True)
        from utils.complex import from_channels, to_channels

        fwd = lambda zz: from_channels(nets(to_channels(zz)), cplx)  # noqa: E731
        step = BatchedDIPStep(fwd, opt, A, y, 1.0, "mean", graph=graph)
        losses = []
        for i in range(12):
            if i == 6:
                snap = opt.snapshot()
            if i == 9:
                opt.restore(snap, [True, False])
                opt.scale_lr(0, 0.5)
            _, total, _, _, _ = step(z, z)
            losses.append(total.clone())
        assert (step.graph is not None) == graph, step.graph_error
        outs.append((torch.stack(losses), [p.detach().clone() for p in nets.parameters()]))
    (l0, p0), (l1, p1) = outs
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-7)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_solver_matches_eager_solver():
    den = Denoiser(_EpsNet(2, torch.float32).cuda(), DiffusionSchedule(), is_complex=True, learn_sigma=False)
    ops, ys = _problem(torch.float32)
    y, A = torch.cat(ys).cuda(), stack_physics(ops).cuda()
    ref = BatchedUDiGDIP(_cfg(), den, seeds=[10, 11], device="cuda")(y, A)
    res = BatchedUDiGDIP({**_cfg(), "perf": {"cuda_graph": True}}, den, seeds=[10, 11], device="cuda")(y, A)
    assert res.info["cuda_graph"], res.info["cuda_graph_error"]
    rel = float((res.x_hat - ref.x_hat).norm() / ref.x_hat.norm())
    assert rel < 1e-3, rel
    for r, s in zip(split_result(res), split_result(ref)):
        assert r.history["step"] == s.history["step"]
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=1e-3)


# ------------------------------------------------------------------- grouped network (net_impl)
@pytest.mark.parametrize("norm,bilinear,channels_last", [("batch", True, False), ("batch", True, True),
                                                         ("batch", False, True), ("group", True, True),
                                                         ("instance", False, False), ("none", True, True)])
def test_grouped_forward_equals_vmap_outputs_and_gradients(norm, bilinear, channels_last):
    """models.dip_unet.grouped_forward (B nets as one grouped net) = vmap over the B nets, outputs
    and parameter gradients to float64 rounding, on an odd size (reflect padding)."""
    from models.dip_unet import grouped_forward
    from solvers.batched import BatchedDIPNets

    nets = BatchedDIPNets({"channels": (4, 8, 8), "norm": norm, "bilinear": bilinear}, True, [0, 1, 2],
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


def test_batched_solver_net_impls_agree_and_bad_value_fails():
    ops, ys = _problem(torch.float64)
    cfg = {k: v for k, v in _cfg().items() if not k.startswith(("t_", "purify"))}
    outs = {impl: BatchedSeqDIP({**cfg, "perf": {"net_impl": impl}}, seeds=[0, 1])(torch.cat(ys), stack_physics(ops))
            for impl in ("vmap", "grouped", "grouped_cl", "auto")}
    for impl, r in outs.items():
        rel = float((r.x_hat - outs["vmap"].x_hat).norm() / outs["vmap"].x_hat.norm())
        assert rel < 1e-9, (impl, rel)
    with pytest.raises(ValueError, match="net_impl"):
        BatchedSeqDIP({**cfg, "perf": {"net_impl": "loops"}}, seeds=[0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["grouped", "grouped_cl"])
def test_grouped_nets_on_cuda_match_vmap(impl):
    """The open question of AUTO_NET_IMPL: the grouped networks on CUDA against vmap on CUDA
    (TF32 off, so both are float32), outputs, gradients and 3 Adam steps."""
    from solvers.batched import BatchedDIPNets

    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        x = torch.randn(2, 2, 64, 64, generator=torch.Generator().manual_seed(0)).cuda()
        outs = {}
        for name in ("vmap", impl):
            with pytest.warns(UserWarning, match="not validated") if name != "vmap" else contextlib.nullcontext():
                nets = BatchedDIPNets({"channels": (32, 64, 128, 128)}, True, [0, 1], device="cuda", impl=name)
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
