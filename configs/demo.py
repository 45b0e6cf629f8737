"""CPU demo (``python main.py`` with no flags): both modalities on the shipped 64² held-out
samples with the shipped priors, uDiG-DIP against aSeqDIP and vanilla DIP.

Sized for a few minutes on 2 CPU cores: a smaller DIP U-Net (32-64-128-128) and ≤ 1000 DIP
steps.  All values here are our choice, not the paper's (see paper_*.py).  The priors and the
values marked "val" were chosen on ``val_samples/`` (6 slices per modality, other slices and
subjects than the test sets ``indist_samples/`` and ``ood_samples/``); docs/results.md lists the
candidates and their validation scores.  K, N and the network size are fixed by the CPU budget.
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
    # val: uDiG-DIP 26.01 vs 25.83 dB and DDS 23.16 vs 22.21 dB (γ = 1) with broad_mri_64 vs
    # demo_mri_64 at 4×; for CT demo_ct_64 stays (uDiG-DIP 26.18 vs 25.46 dB on the held-out
    # Cranium slices, DDS 29.82 vs 30.06 dB).
    c.prior.mri = "broad_mri_64"
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
    # Classical baselines and DDS's γ (val): the best mean PSNR over the noiseless problem and one
    # noise level per modality (MRI noise=relative 0.05, CT noise=poisson I0=4096). Candidates:
    # MRI TV / L1-wavelet λ ∈ {1e-4, 5e-4, 2e-3}, CG iterations ∈ {10, 20, 40}, DDS γ ∈ {5, 10, 50};
    # CT TV λ ∈ {0.03, 0.1, 0.3}, CGLS iterations ∈ {5, 10, 20}, DDS γ ∈ {1, 3, 10}.
    c.modality_overrides.MRI = {
        "cgsense": {"num_iters": 20},                 # noiseless keeps improving; 5 % noise: best at 10
        "tv": {"lam": 5e-4, "num_iters": 1000},
        "dds": {"gamma": 50.0},                       # val: γ = 1 / 5 / 10 / 50 → 23.16 / 26.26 / 27.02 / 27.93 dB
        # val: MCG α = 1 / 0.3 / 0.1 → 26.92 / 28.77 / 28.70 dB (α = 1 collapsed on one ESPIRiT slice).
        "mcg": {"alpha": 0.3},
        "l1wavelet": {"lam": 5e-4, "num_iters": 100},
        # K·N = 1000 DIP steps; purification with t_k from 80 down to 2 over k < 80.
        # λ chosen on val_samples (4×, noiseless, broad_mri_64; uDiG-DIP mean PSNR λ = 0.03 / 0.1:
        # 26.15 / 26.01 dB; 0.01 and 0.3 lost 1.1–1.0 dB on the slices run) and used for aSeqDIP too.
        "udigdip": {"num_outer": 100, "inner_steps": 10, "lam": 0.03, "t_start": 80, "purify_stop": 80},
        "aseqdip": {"num_outer": 100, "inner_steps": 10, "lam": 0.03},
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
        # MCG: α = 0.1 as in the authors' CT script (MCG_diffusion run_CT_recon.py:142); val:
        # α = 1 diverges (−34 dB), 0.1 → 33.84 dB, 0.01 → 33.05 dB (projection); kaczmarz 27.09 dB.
        "mcg": {"alpha": 0.1},
    }
    return c
