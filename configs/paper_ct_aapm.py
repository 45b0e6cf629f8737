"""Sparse-view CT with the released DDS prior ``AAPM256_1M.pt`` (256×256, values in [0, 1]).

    python main.py --config=configs/paper_ct_aapm.py --data=<DDS CT folder> \
        --ckpt=checkpoints/AAPM256_1M.pt

Every value set here cites its source in its comment, or says "our choice".  Sources as in
``configs/paper_mri_knee.py`` ([DDS], [uDiG], [aSeq] — here ``Aseq_DIP_CT.py``) plus
[LoDoPaB] Leuschner, Schmidt, Baguer & Maass, LoDoPaB-CT, Sci. Data 8:109, 2021 (photon counts,
μ_water, zero-count rule; used only with ``--config.physics.noise=poisson``).

Not published for uDiG-DIP: K, N, λ, the t_k schedule, reverse steps, noise levels (solver
defaults, "our choice").  The DIP network and how ours differs from the authors' ``MediumUNet``:
``configs/paper_mri_knee.py``.
"""
from configs.base import get_base_config
from configs.paper_mri_knee import use_authors_dip


def get_config():
    c = get_base_config()
    c.deg = "SV-CT"
    # uDiG-DIP, its DIP baselines, the DM baseline of the released prior, and the classical rows.
    c.solvers = "udigdip,aseqdip,dip,dds,cgsense,tv"
    c.run_name = "paper_ct_aapm"
    c.data.path = "data/aapm"              # DDS layout: CT/<volume>/*.npy
    # 30 parallel-beam views over 180°: [aSeq] Aseq_DIP_CT.py (num_angles = 30, linspace(0, 180,
    # endpoint=False)); [uDiG]'s code defaults to 16 views (8 in its CT script).
    c.physics.num_views = 30
    # Noiseless sinograms: [aSeq] CT code (no noise added); no level published for uDiG-DIP.
    c.physics.noise = "none"
    # For noise=poisson: I0 = 4096 photons per bin [LoDoPaB]; μ of image value 1 and the pixel size
    # of the DDS AAPM256 slices are not documented by [DDS]: 0.06/mm (top of a [−1000, 2000] HU
    # window, μ_water = 0.02/mm [LoDoPaB]) and 1.4 mm (AAPM 512² at ≈0.7 mm, halved) are our
    # assumptions — set both to the data's actual scale.
    c.physics.I0 = 4096.0
    c.physics.mu_max = 0.06
    c.physics.pixel_mm = 1.4
    # The released DDS prior: [DDS] release, [uDiG] README.
    c.prior.ct = "AAPM256_1M"
    # MediumUNet(1, 1) ([aSeq] Aseq_DIP_CT.py, [uDiG]) and uDiG-DIP's Adam lr 1e-4 ([uDiG] code default).
    use_authors_dip(c)
    a = c.solver_cfg.aseqdip
    a.lr = 2e-4                 # [aSeq] Aseq_DIP_CT.py (learning_rate = 2e-4, Adam)
    a.num_outer = 2000          # K: [aSeq] Aseq_DIP_CT.py (2000 epochs)
    a.inner_steps = 10          # N: [aSeq] Aseq_DIP_CT.py (10 steps each)
    # λ = 1: [aSeq] Aseq_DIP_CT.py (alpha = 1.0), on NON-squared norms there; our loss is
    # mean-squared, so the value is nominal (see configs/paper_mri_knee.py).
    a.lam = 1.0
    # z₀ = FBP: [aSeq] Aseq_DIP_CT.py (min-max normalised filtered back-projection; ours is not
    # normalised); z ← f(z) after each outer iteration: [aSeq] (ref = net_output; our solver's rule).
    a.z0 = "fbp"
    # Output f_θ(z_{K−1}), the last network output of the inner loop: [aSeq] Aseq_DIP_CT.py (its
    # final net_output; it also reports the best PSNR over iterations, chosen with the reference).
    a.output = "last_fit"
    # DDS: solver defaults = [DDS] code defaults (γ on DDS's scale, solvers/dds.py).
    # Classical rows: solver defaults, our choice; choose λ / iterations on validation data.
    return c
