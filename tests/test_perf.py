"""Performance and scale: FLOP counting, the speed policy of the DIP solvers (solvers/perf.py) and
the DIP solvers on CUDA, batched purification, sharding and merging across processes
(utils/distributed.py), and an end-to-end smoke run of bench.py.  (The equivalence of B slices with
their one-slice solves: tests/test_dip_loop.py; the step engines: tests/test_engines.py.)

Tiny problems only (≤ 16×16 images, small nets, few steps, one thread).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule
from physics import stack_physics
from solvers import perf
from solvers.base import split_result
from solvers.seqdip import SeqDIP
from solvers.udig_dip import UDiGDIP
from tests.dip_problems import H, EpsNet, mri_problems as _problem
from utils import distributed as D
from utils.rng import NoiseStreams

REPO = Path(__file__).resolve().parents[1]


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
def _cfg(**over):
    c = dict(net={"channels": (4, 8, 8)}, lr=3e-3, log_every=2, disable_progress=True, num_outer=4,
             inner_steps=3, t_start=100, t_end=10, purify_start=0, purify_stop=3)
    c.update(over)
    return c


def test_batched_purify_matches_single_purify_with_ddim_noise():
    dtype = torch.float64
    den = Denoiser(EpsNet(1, dtype), DiffusionSchedule(), is_complex=False, learn_sigma=False)
    x = torch.rand(3, H, H, dtype=dtype)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    out = den.purify(x, 200, num_steps=3, eta=0.5, noise=NoiseStreams(generators=gens))
    for b, s in enumerate((1, 2, 3)):
        ref = den.purify(x[b:b + 1], 200, num_steps=3, eta=0.5, noise=torch.Generator().manual_seed(s))
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_on_cuda_matches_cpu_loosely():
    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "num_outer": 2, "inner_steps": 2, "disable_progress": True}
    cpu = SeqDIP(cfg, seeds=[0, 1], perf={"net_impl": "vmap"})(torch.cat(ys), stack_physics(ops)).x_hat
    gpu = SeqDIP(cfg, seeds=[0, 1], device="cuda", perf={"net_impl": "vmap"})(
        torch.cat(ys).cuda(), stack_physics(ops).cuda()).x_hat
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-2
    bf = SeqDIP(cfg, seeds=[0, 1], device="cuda", perf={"bf16": True, "net_impl": "vmap"})(
        torch.cat(ys).cuda(), stack_physics(ops).cuda()).x_hat
    assert torch.isfinite(torch.view_as_real(bf)).all()


def test_compile_refused_on_cuda_allowed_on_cpu():
    assert perf.compile_refusal(torch.device("cpu")) is None
    assert "wrong images" in perf.compile_refusal(torch.device("cuda"))
    assert perf.plan({"compile": True}, "cpu", 2).compile
    with pytest.warns(UserWarning, match="perf.compile ignored"):
        assert not perf.plan({"compile": True}, "cuda", 2).compile


def test_perf_defaults_validation_and_auto_choices():
    """One copy of the defaults; bad values name the valid choices; ``auto`` per device and B."""
    d = perf.default_config()
    assert d.to_dict() == {"bf16": False, "bf16_cpu": False, "compile": False, "cuda_graph": "auto",
                           "net_impl": "auto"}
    assert perf.validate(None).to_dict() == d.to_dict()
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        perf.validate({"cuda_graph": "maybe"})
    with pytest.raises(ValueError, match=r"'auto' or one of \('vmap', 'grouped', 'grouped_cl'\)"):
        perf.validate({"net_impl": "loops"})
    with pytest.raises(ValueError, match="unknown config field"):
        perf.validate({"bf61": True})
    with pytest.raises(ValueError, match="bf16"):
        perf.validate({"bf16": "yes"})
    assert [perf.parse_graph_mode(v) for v in (True, "ON", "false", "auto", 0)] == ["on", "on", "off", "auto", "off"]
    # CPU: one network's arithmetic for one slice, channels-last groups for several; no graphs, no bf16
    cpu1, cpu3 = perf.plan(None, "cpu", 1), perf.plan(None, "cpu", 3)
    assert (cpu1.net_impl, cpu3.net_impl, cpu1.cuda_graph, cpu1.bf16) == ("grouped", "grouped_cl", False, False)
    assert not perf.plan({"bf16": True}, "cpu", 2).bf16 and perf.plan({"bf16": True, "bf16_cpu": True}, "cpu", 2).bf16
    # CUDA: vmap and CUDA graphs for any B (plan needs no GPU), bf16 when asked
    for B in (1, 4):
        cuda = perf.plan({"bf16": True}, "cuda", B)
        assert (cuda.net_impl, cuda.cuda_graph, cuda.bf16) == ("vmap", True, True)
    assert not perf.plan({"cuda_graph": "off"}, "cuda", 1).cuda_graph
    with pytest.warns(UserWarning, match="not validated"):
        perf.plan({"net_impl": "grouped_cl"}, "cuda", 2)


def test_cuda_graph_flag_on_cpu_warns_and_runs_eagerly():
    ops, ys = _problem(torch.float32)
    cfg = {"net": {"channels": (4, 8, 8)}, "num_outer": 1, "inner_steps": 3, "disable_progress": True}
    ref = SeqDIP(cfg, seeds=[0, 1])(torch.cat(ys), stack_physics(ops))
    with pytest.warns(UserWarning, match="cuda_graph ignored"):
        res = SeqDIP(cfg, seeds=[0, 1], perf={"cuda_graph": True})(torch.cat(ys), stack_physics(ops))
    assert torch.equal(res.x_hat, ref.x_hat) and res.info["cuda_graph"] is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_solver_matches_eager_solver():
    den = Denoiser(EpsNet(2, torch.float32).cuda(), DiffusionSchedule(), is_complex=True, learn_sigma=False)
    ops, ys = _problem(torch.float32)
    y, A = torch.cat(ys).cuda(), stack_physics(ops).cuda()
    ref = UDiGDIP(_cfg(), den, seeds=[10, 11], device="cuda", perf={"cuda_graph": "off"})(y, A)
    res = UDiGDIP(_cfg(), den, seeds=[10, 11], device="cuda", perf={"cuda_graph": "on"})(y, A)
    assert res.info["cuda_graph"] and not ref.info["cuda_graph"], res.info["cuda_graph_error"]
    rel = float((res.x_hat - ref.x_hat).norm() / ref.x_hat.norm())
    assert rel < 1e-3, rel
    for r, s in zip(split_result(res), split_result(ref)):
        assert r.history["step"] == s.history["step"]
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=1e-3)
    # one slice on CUDA replays its steps from a graph too (perf "auto")
    one = UDiGDIP(_cfg(), den, seed=10, device="cuda")(y[:1], ops[0].cuda())
    assert one.info["cuda_graph"] and one.info["perf"]["net_impl"] == "vmap"


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
