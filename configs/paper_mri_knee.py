"""Multi-coil knee MRI with the released DDS prior ``fastmri_knee_320_complex_1m.pt``.

    python main.py --config=configs/paper_mri_knee.py --data=<DDS folder or fastMRI .h5> \
        --ckpt=checkpoints/fastmri_knee_320_complex_1m.pt

Provenance of the values:
* prior, 320×320 complex images with magnitude ≲ 1, β schedule: DDS release and code (the
  architecture is checked against tests/data/manifest_fastmri_knee_320_complex.json).
* masks ``uniform1d`` / ``gaussian1d`` at 4× and 8×, 8 % ACS: the DDS / fastMRI evaluation
  protocol that uDiG-DIP compares against.
* DIP U-Net 64-128-256-256 and the K, N, λ, lr, t-schedule defaults of ``solvers/udig_dip.py``:
  our choice — the paper's exact numbers were not available to us; every one is a config field.
"""
from configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.deg = "MRI-multi"
    c.solvers = "udigdip,aseqdip,dip,dds"
    c.run_name = "paper_mri_knee"
    c.data.path = "data/fastmri_knee"      # DDS layout: MRI/<file>/slice/*.npy + mps/*.npy
    c.physics.mask = "uniform1d"
    c.physics.acceleration = 4.0
    c.physics.center_fraction = 0.08
    c.prior.mri = "fastmri_knee_320_complex_1m"
    return c
