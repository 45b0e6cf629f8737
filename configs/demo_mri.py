"""Demo, MRI only: shipped 64² Colin27 held-out slices, shipped prior ``demo_mri_64``, 4× uniform
1-D mask, 8 synthetic coils.  Values: our choice (see configs/demo.py)."""
from configs.demo import get_config as _demo


def get_config():
    c = _demo()
    c.deg = "MRI-multi"
    c.run_name = "demo_mri"
    c.data.max_slices = 0
    return c
