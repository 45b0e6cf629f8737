"""Reconstruct slices with uDiG-DIP and baselines, and write images and metrics.

    python main.py                                   # CPU demo: shipped samples + shipped priors
    python main.py --config=configs/demo_mri.py --solver=udigdip,dds --config.physics.acceleration=8
    python main.py --config=configs/paper_mri_knee.py --data=/data/knee --ckpt=checkpoints/fastmri_knee_320_complex_1m.pt
    python main.py --config=configs/demo_ct.py --data=scan.dcm --config.data.image_size=64   # any DICOM size
    python main.py --resume=exp/20261125-210000_demo  # finish an interrupted run (its stored config)
    torchrun --nproc_per_node=8 main.py --config=configs/paper_mri_knee.py --data=...  # slices sharded over GPUs
    python main.py --config=configs/paper_mri_knee.py --data=... --batch_size=8   # 8 slices per solve

This file holds the flags and turns them into the run's config; the run itself (checks, run
folder, slices, summary) is ``run_lib.reconstruct``.  Bad input ends in ONE line on stderr
(``main.py: error: ...``, exit status 2) before anything is written; ``docs/errors.md`` lists the
checks.

Where a setting comes from (later wins): the config file (``--config``, default
``configs/demo.py``; on ``--resume`` without ``--config``: the run's stored ``config.json``) →
``--config.a.b=value`` overrides → the convenience flags below (``--seed``, ``--data``, ...).  A
``--config.solver_cfg.<solver>.<field>`` flag also replaces the config FILE's
``modality_overrides.<MRI|CT>.<solver>.<field>`` (the command line wins; logged); a
``--config.modality_overrides...`` flag sets one modality only.
"""
from __future__ import annotations

import re
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

import run_lib
import solvers
from configs.base import get_base_config
from physics import DEGRADATIONS
from run_checks import FLAG_FIELDS, InputError, stored_config

FLAGS = flags.FLAGS
PROG = "main.py"


def fail(message: str) -> None:
    """Print ONE line ``main.py: error: <message>`` on stderr and exit with status 2."""
    text = " ".join(str(message).split())
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()
    sys.exit(2)


def _unknown_field(exc: BaseException, argv) -> str:
    """The message for a ``--config.a.b`` override of a field the config does not have."""
    text = str(exc.args[0] if exc.args else exc).replace("\\'", "'").replace('\\"', '"')
    key = re.search(r"'([^'\n]+)'", text)
    key = key.group(1) if key else text.splitlines()[0]
    hint = re.search(r'Did you mean "([^"]+)"', text)
    arg = next((a.split("=")[0] for a in argv if a.startswith("--config.") and re.search(rf"\.{re.escape(key)}\b", a)),
               f"--config...{key}")
    return f"{arg}: the config has no field {key!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "")


def _config_error(e: BaseException, argv) -> str:
    if isinstance(e, flags.Error):
        return str(e).splitlines()[0] if str(e) else repr(e)
    if isinstance(e, (AttributeError, KeyError)):
        return _unknown_field(e, argv)
    return f"--config: cannot load the config file ({type(e).__name__}: {e})"  # syntax error, bad get_config


try:   # without --config, the default file is loaded here, with the --config.* overrides of sys.argv
    config_flags.DEFINE_config_file("config", "configs/demo.py", "Run config (a configs/*.py file).",
                                    lock_config=True)
except Exception as e:  # noqa: BLE001 - any failure of the config file or an override is the user's input
    fail(_config_error(e, sys.argv))
flags.DEFINE_string("solver", None, "Comma list of solvers (overrides config.solvers): "
                    + ", ".join(solvers.REGISTRY))
flags.DEFINE_string("deg", None, "Comma list of degradations (overrides config.deg): " + ", ".join(DEGRADATIONS))
flags.DEFINE_string("ckpt", None, "Diffusion checkpoint file (overrides config.prior.ckpt).")
flags.DEFINE_string("data", None, "Data path (overrides config.data.path).")
flags.DEFINE_integer("seed", None, "Run seed in [0, 2^32-1] (overrides config.seed); each slice's seed is "
                     "derived from it and the slice's name.")
flags.DEFINE_string("device", None, "cpu | cuda | cuda:N | auto (overrides config.device).")
flags.DEFINE_string("workdir", None, "Root folder of run folders (overrides config.workdir).")
flags.DEFINE_string("name", None, "Run name (suffix of the run folder).")
flags.DEFINE_string("resume", None, "Reopen this run folder and finish it with its stored config.json "
                    "(flags given again must agree with it).")
flags.DEFINE_integer("max_slices", None, "Use at most this many slices per degradation (>= 0; 0 = all).")
flags.DEFINE_integer("batch_size", None, "Slices per solve (>= 1; overrides config.batch_size; 1 = one at a time).")

def parse_flags(argv):
    """absl's flag parsing, with every error (a bad flag value, a config file that cannot be
    loaded, a misspelt ``--config`` field) as one line instead of a traceback or the flag help."""
    try:
        return FLAGS(argv)
    except Exception as e:  # noqa: BLE001
        fail(_config_error(e, argv))


def _set(cfg, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
        if p not in node:
            node[p] = ml_collections.ConfigDict()
        node = node[p]
    node[leaf] = value


def _delete(node, parts: list[str]):
    """Remove ``parts`` (a path) from ``node``; returns the removed value (``None`` if absent)."""
    for p in parts[:-1]:
        if not hasattr(node, "keys") or p not in node:
            return None
        node = node[p]
    if not hasattr(node, "keys") or parts[-1] not in node:
        return None
    value = node[parts[-1]]
    del node[parts[-1]]
    return value


def command_line_wins(cfg, overrides: dict):
    """``--config.solver_cfg.<s>.<field>`` given on the command line removes ``<field>`` from the
    config file's ``modality_overrides.<M>.<s>`` (unless the command line also set that one), so
    the command line wins; each replaced value is logged."""
    with cfg.unlocked():
        for path, value in overrides.items():
            parts = path.split(".")
            if parts[0] != "solver_cfg" or len(parts) < 3:
                continue
            solver, field = parts[1], parts[2:]
            for modality in list(cfg.modality_overrides.keys()):
                if f"modality_overrides.{modality}.{solver}.{'.'.join(field)}" in overrides:
                    continue
                node = cfg.modality_overrides[modality]
                if solver not in node:
                    continue
                old = _delete(node[solver], field)
                if old is not None:
                    logging.info("--config.%s=%r replaces the config file's modality_overrides.%s.%s.%s=%r",
                                 path, value, modality, solver, ".".join(field), old)
    return cfg


def _merge(base, saved: dict):
    """``base`` (ConfigDict) with the saved values (JSON) written over it: lists become tuples
    where ``base`` has a tuple; fields ``base`` lacks are added."""
    with base.unlocked():
        for k, v in saved.items():
            if isinstance(v, dict) and k in base and isinstance(base[k], ml_collections.ConfigDict):
                _merge(base[k], v)
            elif isinstance(v, list) and k in base and isinstance(base[k], tuple):
                base[k] = tuple(v)
            else:
                if k in base:
                    del base[k]
                base[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v
    return base


def build_config():
    """The run's config from the flags (module docstring: where a setting comes from)."""
    overrides = dict(config_flags.get_override_values(FLAGS["config"]))
    if FLAGS.resume and not FLAGS["config"].present:
        cfg = _merge(get_base_config(), stored_config(FLAGS.resume))
        with cfg.unlocked():
            for path, value in overrides.items():
                _set(cfg, path, value)
    else:
        try:
            cfg = FLAGS.config
            cfg.get("deg")
        except OSError as e:  # the config file could not be loaded (missing file, ...)
            reason = str(e).strip().splitlines()[-1].strip()
            raise InputError(f"--config={config_flags.get_config_filename(FLAGS['config'])}: cannot load the config "
                             f"file ({reason})") from None
        command_line_wins(cfg, overrides)
    with cfg.unlocked():
        for flag, field in FLAG_FIELDS.items():
            value = getattr(FLAGS, flag)
            if value is not None:
                _set(cfg, field, value)
    return cfg


def main(argv):
    try:
        if len(argv) > 1:
            raise InputError(f"unexpected arguments: {argv[1:]} (flags are written --name=value)")
        run_lib.reconstruct(build_config(), resume=FLAGS.resume)
    except InputError as e:
        fail(str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
