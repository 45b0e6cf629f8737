"""Demo, CT only: shipped 64² head-CT held-out slices, shipped prior ``demo_ct_64``, 16 views.
Values: our choice (see configs/demo.py)."""
from configs.demo import get_config as _demo


def get_config():
    c = _demo()
    c.deg = "SV-CT"
    c.run_name = "demo_ct"
    c.data.max_slices = 0
    return c
