"""CPU demo (``python main.py`` with no flags): both modalities on the shipped 64² held-out
samples with the shipped priors, uDiG-DIP against aSeqDIP and vanilla DIP.

Sized to finish in a few minutes on 2 CPU cores: a smaller DIP U-Net (32-64-128-128) and
K·N = 600 DIP steps.  All values here are our choice, not the paper's (see paper_*.py).
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
    c.physics.num_views = 23
    apply_demo_solver_settings(c)
    return c


def apply_demo_solver_settings(c):
    """Small, CPU-sized DIP settings shared by the demo and the README table configs."""
    for name in ("udigdip", "aseqdip", "dip", "sgdip"):
        s = c.solver_cfg[name]
        s.net.channels = (32, 64, 128, 128)
        s.lr = 1e-3
        s.log_every = 25
    for name in ("udigdip", "aseqdip"):
        s = c.solver_cfg[name]
        s.num_outer = 60        # K
        s.inner_steps = 10      # N
        s.lam = 1.0
    u = c.solver_cfg.udigdip
    u.t_start = 150
    u.t_end = 5
    u.purify_start = 0
    u.purify_stop = 50
    c.solver_cfg.dip.num_steps = 600
    c.solver_cfg.sgdip.num_steps = 600
    c.solver_cfg.dds.nfe = 50
    return c
