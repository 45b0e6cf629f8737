"""Sparse-view CT with the released DDS prior ``AAPM256_1M.pt`` (256×256, values in [0, 1]).

    python main.py --config=configs/paper_ct_aapm.py --data=<DDS CT folder> \
        --ckpt=checkpoints/AAPM256_1M.pt

Provenance: prior and data scale from the DDS release; parallel-beam geometry with 30 views over
180° is our choice of a typical sparse-view setting (change ``physics.num_views``); solver values
as in ``configs/paper_mri_knee.py`` (our choice, all config fields).
"""
from configs.base import get_base_config


def get_config():
    c = get_base_config()
    c.deg = "SV-CT"
    c.solvers = "udigdip,aseqdip,dip,dds"
    c.run_name = "paper_ct_aapm"
    c.data.path = "data/aapm"              # DDS layout: CT/<volume>/*.npy
    c.physics.num_views = 30
    c.prior.ct = "AAPM256_1M"
    return c
