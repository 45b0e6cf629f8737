"""What ``bench.py`` times: the test problems and, per phase, an (unoptimised, optimised) pair of
callables — one DIP optimiser step (one network, or B networks in one step), one purification,
one DDS step, a short solve.  Each returns a tensor (the unoptimised one a scalar, synced with
``.item()`` by the timer).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch


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
        raise ValueError(f"unknown modality {modality!r}; use MRI or CT")
    A = A.to(device)
    x = x.to(device)
    y = A(x)
    return A, y, x


def load_bench_prior(modality: str, device: torch.device, spec: str) -> tuple[Any, dict]:
    """The prior and a description of where it came from (untrained fallback on failure)."""
    from models import priors as prior_configs
    from models.adm_unet import create_adm_model
    from models.denoiser import Denoiser
    from models.priors import load_prior
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
    with torch.device(device):        # parameters drawn on the device (a 374M-parameter net: seconds on CPU)
        unet = create_adm_model(prior_configs.model_kwargs(cfg))
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


def slice_physics(A, b):
    """The operator of slice ``b`` of a batched operator (MRI with per-slice buffers)."""
    from physics.mri import MultiCoilMRI

    if isinstance(A, MultiCoilMRI) and (A.mask.ndim == 3 or (A.sens_maps is not None and A.sens_maps.ndim == 4)):
        m = A.mask[b] if A.mask.ndim == 3 else A.mask
        s = A.sens_maps
        s = None if s is None else (s[b] if s.ndim == 4 else s)
        return MultiCoilMRI(m, s)
    return A


# ------------------------------------------------------------------------- what one phase calls
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
        return s(yb, slice_physics(Ab, 0)).x_hat.abs().sum()

    def opt():
        s = solvers.make_solver(name, {**cfg, "log_every": 10 ** 9}, den_o if solvers.needs_prior(name) else None,
                                seeds=list(range(batch)), device=device,
                                perf={"bf16": bf16, "bf16_cpu": bf16, "compile": compile_})
        return s(y[:batch], A).x_hat
    return unopt, opt, batch


# ------------------------------------------------------------- the DIP step engine (solvers.engines)
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
    Ab = stack_physics([slice_physics(A, b % y.shape[0]) for b in range(B)])
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
