"""Reconstruct slices with uDiG-DIP and baselines, and write images and metrics.

    python main.py                                   # CPU demo: shipped samples + shipped priors
    python main.py --config=configs/demo_mri.py --solver=udigdip,dds --config.physics.acceleration=8
    python main.py --config=configs/paper_mri_knee.py --data=/data/knee --ckpt=checkpoints/fastmri_knee_320_complex_1m.pt
    python main.py --resume=exp/20261125-210000_demo  # skip finished slices of an interrupted run
    torchrun --nproc_per_node=8 main.py --config=configs/paper_mri_knee.py --data=...  # slices sharded over GPUs
    python main.py --config=configs/paper_mri_knee.py --data=... --batch_size=8   # 8 slices per batched solve

This file holds the flags; the run itself (checks, run folder, slices, summary) is
``run_lib.reconstruct``.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

import run_lib
import solvers
from physics import DEGRADATIONS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/demo.py", "Run config (a configs/*.py file).", lock_config=True)
flags.DEFINE_string("solver", None, "Comma list of solvers (overrides config.solvers): "
                    + ", ".join(solvers.REGISTRY))
flags.DEFINE_string("deg", None, "Comma list of degradations (overrides config.deg): " + ", ".join(DEGRADATIONS))
flags.DEFINE_string("ckpt", None, "Diffusion checkpoint file (overrides config.prior.ckpt).")
flags.DEFINE_string("data", None, "Data path (overrides config.data.path).")
flags.DEFINE_integer("seed", None, "Seed (overrides config.seed).")
flags.DEFINE_string("device", None, "cpu | cuda | cuda:N | auto (overrides config.device).")
flags.DEFINE_string("workdir", None, "Root folder of run folders (overrides config.workdir).")
flags.DEFINE_string("name", None, "Run name (suffix of the run folder).")
flags.DEFINE_string("resume", None, "Reopen this run folder and skip its finished slices.")
flags.DEFINE_integer("max_slices", None, "Use at most this many slices per degradation.")
flags.DEFINE_integer("batch_size", None, "Slices per batched solve of udigdip / aseqdip / dip / dds / dps; "
                     "the other solvers run one slice at a time (overrides config.batch_size; "
                     "1 = no batching).")

#: flag → config field it overrides (the config is what gets saved with the run)
FLAG_FIELDS = {"solver": "solvers", "deg": "deg", "seed": "seed", "device": "device", "workdir": "workdir",
               "batch_size": "batch_size", "ckpt": "prior.ckpt", "data": "data.path",
               "max_slices": "data.max_slices", "name": "run_name"}


def apply_flags(cfg):
    """Copy the convenience flags that were given into the config."""
    with cfg.unlocked():
        for flag, field in FLAG_FIELDS.items():
            value = getattr(FLAGS, flag)
            if value is not None:
                *parents, leaf = field.split(".")
                node = cfg
                for p in parents:
                    node = node[p]
                node[leaf] = value
    return cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run_lib.reconstruct(apply_flags(FLAGS.config), resume=FLAGS.resume)
    except run_lib.InputError as e:
        raise app.UsageError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
