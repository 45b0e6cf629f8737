"""Multi-coil knee MRI with the released DDS prior ``fastmri_knee_320_complex_1m.pt``.

    python main.py --config=configs/paper_mri_knee.py --data=<DDS folder or fastMRI .h5> \
        --ckpt=checkpoints/fastmri_knee_320_complex_1m.pt

Every value set here cites its source in its comment, or says "our choice".  Sources:

* [DDS]    Chung, Lee & Ye, "Decomposed Diffusion Sampler", ICLR 2024; code HJ-harry/DDS.
* [uDiG]   Liang, Alkhouri, Qu, Wang & Ravishankar, uDiG-DIP, ICASSP 2025 (arXiv:2410.04482);
           code sjames40/IDIG_DIP (its defaults; the code does not run as published).
* [aSeq]   Alkhouri, Liang et al., aSeqDIP, NeurIPS 2024; code sjames40/Aseq_DIP:
           ``Aseq_DIP_MRI.py``, ``unet/medium_unet.py``, ``unet/unet_parts.py``.

Not published for uDiG-DIP in any source we found: K, N, λ, the t_k schedule, the purification's
reverse steps, test-set sizes, noise levels — the uDiG-DIP values stay the solver defaults
(``solvers/udig_dip.py``, "our choice").

The DIP network: [uDiG] and [aSeq] use ``MediumUNet`` (64-128-256-256, three max-pool
down-samplings, (3×3 conv, BatchNorm, ReLU)×2 blocks, bilinear up-sampling, 1×1 output conv).
``models/dip_unet.py`` with ``channels=(64, 128, 256, 256)`` matches its encoder, blocks,
up-sampling kind, skip concatenation ``[skip, up]`` and output conv, and differs in: (1) decoder
widths — MediumUNet's up blocks (milesial Pytorch-UNet ``Up(in, out, bilinear)``) output 128, 64,
64 channels with middle width in/2 (256, 128, 64), ours output 256, 128, 64 with middle width =
output; (2) MediumUNet up-samples with ``align_corners=True``, ours ``False``; (3) MediumUNet's
convs carry a bias before BatchNorm (no effect on the function), ours do not; (4) sizes that are
not multiples of 8: MediumUNet pads the up-sampled map, ours reflect-pads the input; (5) [aSeq]
initialises conv weights N(0, 0.02), we use PyTorch's default.
"""
from configs.base import get_base_config

DIP_SOLVERS = ("udigdip", "aseqdip", "dip", "sgdip")


def use_authors_dip(c):
    """The DIP network and uDiG-DIP optimiser of the authors' code (both paper configs)."""
    for name in DIP_SOLVERS:
        # MediumUNet widths / blocks / bilinear up-sampling: [uDiG], [aSeq] (differences: docstring).
        c.solver_cfg[name].net.channels = (64, 128, 256, 256)
        c.solver_cfg[name].net.bilinear = True
        c.solver_cfg[name].net.norm = "batch"
    # Adam lr 1e-4: [uDiG] code default (DIP optimiser Adam, lr 1e-4).
    c.solver_cfg.udigdip.lr = 1e-4


def get_config():
    c = get_base_config()
    c.deg = "MRI-multi"
    # uDiG-DIP, its DIP baselines, the DM baselines of the released prior, and the classical rows.
    c.solvers = "udigdip,aseqdip,dip,dds,cgsense,tv,l1wavelet"
    c.run_name = "paper_mri_knee"
    c.data.path = "data/fastmri_knee"      # DDS layout: MRI/<file>/slice/*.npy + mps/*.npy
    # 4× 1-D mask with 8 % fully sampled centre: [uDiG] code default (uniform 1-D); [aSeq] MRI code
    # uses a 4× variable-density mask with 8 % ACS (here: --config.physics.mask=gaussian1d).
    c.physics.mask = "uniform1d"
    c.physics.acceleration = 4.0
    c.physics.center_fraction = 0.08
    # Noiseless simulated k-space y = A x: no noise level is published ([uDiG], [aSeq]); our choice.
    c.physics.noise = "none"
    # The released DDS prior (320×320 complex, magnitude ≲ 1): [DDS] release, [uDiG] README.
    c.prior.mri = "fastmri_knee_320_complex_1m"
    use_authors_dip(c)
    a = c.solver_cfg.aseqdip
    a.lr = 1e-4                 # [aSeq] Aseq_DIP_MRI.py (learning_rate = 1e-4, Adam)
    a.num_outer = 6000          # K: [aSeq] Aseq_DIP_MRI.py (6000 outer iterations)
    a.inner_steps = 10          # N: [aSeq] Aseq_DIP_MRI.py (10 steps each)
    # λ = 1: [aSeq] weight of ‖ref − f(ref)‖, but there on NON-squared norms; our loss is the
    # mean-squared one (solvers/dip_loop.py), so 1 is a nominal value, not the same weighting.
    a.lam = 1.0
    # z₀ = Aᴴy (zero-filled): [aSeq] (paper and MRI code). The MRI code then updates z by a
    # k-space projection of f(z); our aSeqDIP uses z ← f(z) (the paper's rule): a difference.
    a.z0 = "input_image"
    # DDS: 50 steps, η = 0.85, 5 CG iterations — the solver defaults, = [DDS] code defaults and
    # [uDiG]'s code defaults for its DDS stage (solvers/dds.py cites them).
    # Classical rows (cgsense, tv, l1wavelet): solver defaults, our choice; at 320² with ESPIRiT
    # maps λ and iteration counts must be chosen on validation data.
    return c
