"""Demo, CT only: shipped 64² head-CT held-out slices, shipped prior ``demo_ct_64``, 16 views.
Values: our choice (see configs/demo.py)."""
from configs.demo import demo_on


def get_config():
    return demo_on("SV-CT", "demo_ct")
