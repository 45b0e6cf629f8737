"""Demo, MRI only: shipped 64² Colin27 held-out slices, shipped prior ``broad_mri_64``, 4× uniform
1-D mask, 8 synthetic coils.  Values: our choice (see configs/demo.py)."""
from configs.demo import demo_on


def get_config():
    return demo_on("MRI-multi", "demo_mri")
