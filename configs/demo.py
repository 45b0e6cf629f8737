"""CPU demo (``python main.py`` with no flags): both modalities on the shipped 64² held-out
samples with the shipped priors, uDiG-DIP against aSeqDIP and vanilla DIP.

Sized for a few minutes on 2 CPU cores: a smaller DIP U-Net (32-64-128-128) and ≤ 1000 DIP
steps.  All values here are our choice, not the paper's (see paper_*.py).  They were picked
with a handful of short runs (not recorded) on ONE held-out slice per modality (index 0); the
table in the README (details: docs/results.md) is over all six slices.
"""
from configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.deg = "MRI-multi,SV-CT"
    c.solvers = "udigdip,aseqdip,dip"
    c.run_name = "demo"
    c.data.max_slices = 1
    c.physics.mask = "uniform1d"
    c.physics.acceleration = 4.0
    c.physics.num_views = 16
    apply_demo_solver_settings(c)
    return c


def demo_on(deg: str, run_name: str):
    """The demo on one degradation only, over all shipped slices of its modality."""
    c = get_config()
    c.deg = deg
    c.run_name = run_name
    c.data.max_slices = 0
    return c


def apply_demo_solver_settings(c):
    """Small, CPU-sized DIP settings shared by the demo configs (our choice)."""
    for name in ("udigdip", "aseqdip", "dip", "sgdip"):
        s = c.solver_cfg[name]
        s.net.channels = (32, 64, 128, 128)
        s.lr = 1e-3
        s.log_every = 25
    u = c.solver_cfg.udigdip
    u.t_schedule = "geometric"
    u.t_end = 2
    c.solver_cfg.dds.nfe = 50
    # Score-MRI / MCG at 100 reverse steps instead of the papers' 500 / 1000 (CPU time).
    c.solver_cfg.scoremri.num_steps = 100
    c.solver_cfg.mcg.num_steps = 100
    # Classical baselines (our choice): each value a compromise between the noiseless demo problem
    # and one noise level per modality (MRI noise=relative 0.05, CT noise=poisson I0=4096), picked
    # on two slices (colin27/060, 062; cranium/048, 050) as a sanity check, not tuned on test data.
    c.modality_overrides.MRI = {
        "cgsense": {"num_iters": 20},                 # noiseless keeps improving; 5 % noise: best at 10
        "tv": {"lam": 5e-4, "num_iters": 1000},
        "l1wavelet": {"lam": 5e-4, "num_iters": 100},
        # K·N = 1000 DIP steps; purification with t_k from 80 down to 2 over k < 80.
        "udigdip": {"num_outer": 100, "inner_steps": 10, "lam": 0.1, "t_start": 80, "purify_stop": 80},
        "aseqdip": {"num_outer": 100, "inner_steps": 10, "lam": 0.1},
        "dip": {"num_steps": 1000},
        "sgdip": {"num_steps": 1000},
    }
    c.modality_overrides.CT = {
        "cgsense": {"num_iters": 10},                 # CGLS; Poisson noise: best at 10
        "tv": {"lam": 0.1, "num_iters": 1000},
        # K·N = 600 DIP steps; the CT data term (line integrals) is larger, so λ is larger.
        # λ chosen on val_samples (16 views, noiseless; uDiG-DIP mean PSNR λ = 1 / 3 / 10:
        # 28.06 / 27.63 / 28.41 dB) and used for aSeqDIP too (the same loop without purification).
        "udigdip": {"num_outer": 60, "inner_steps": 10, "lam": 10.0, "t_start": 80, "purify_stop": 60},
        "aseqdip": {"num_outer": 60, "inner_steps": 10, "lam": 10.0},
        "dip": {"num_steps": 600},
        "sgdip": {"num_steps": 600},
        # DPS's gradient of ‖y − A x̂₀‖ scales with ‖A‖ (line integrals): ζ = 1 diverges on CT.
        "dps": {"zeta": 0.1},
    }
    return c
