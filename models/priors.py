"""The diffusion priors: the registry of known priors and :func:`load_prior` (name or checkpoint
file → :class:`models.denoiser.Denoiser`).

The registry itself (``PRIORS``, ``get_prior_config``, ``list_priors``, ``model_kwargs``, …) is
defined in :mod:`models.prior_registry`, a leaf module that ``models/checkpoint.py`` also uses for
its error messages; it is re-exported here so callers need one import::

    from models.priors import get_prior_config, load_prior
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from models.checkpoint import model_from_checkpoint, read_checkpoint
from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule
from models.prior_registry import (ALIASES, DEFAULT_SCHEDULE, MODEL_KEYS, PRIORS, README_SECTION, REPO_ROOT,
                                   expected_checkpoint_bytes, get_prior_config, list_priors, model_kwargs,
                                   prior_for_file)

__all__ = ["load_prior", "ALIASES", "DEFAULT_SCHEDULE", "MODEL_KEYS", "PRIORS", "README_SECTION", "REPO_ROOT",
           "expected_checkpoint_bytes", "get_prior_config", "list_priors", "model_kwargs", "prior_for_file"]


def _resolve_repo_path(p: str | os.PathLike) -> Path:
    p = Path(p)
    if p.is_absolute() or p.exists():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def _looks_like_path(s: str | os.PathLike) -> bool:
    s = str(s)
    return s.endswith((".pt", ".pth")) or os.sep in s or Path(s).exists()


def load_prior(name_or_path: str | os.PathLike, device="cpu", dtype: torch.dtype = torch.float32,
               ckpt: str | os.PathLike | None = None, autocast_bf16: bool = False) -> Denoiser:
    """Build a :class:`Denoiser` from a registry name (checkpoint: ``ckpt`` or the entry's default
    path, relative to the repository root) or from a checkpoint path (config: the one stored in the
    file — our format — or the known prior matching its name).

    A config stored in the file wins over the registry's (with a warning when they differ).
    """
    if _looks_like_path(name_or_path) and ckpt is None:
        path = _resolve_repo_path(name_or_path)
        prior = prior_for_file(path)
    else:
        prior = get_prior_config(str(name_or_path))
        path = _resolve_repo_path(ckpt if ckpt is not None else prior.checkpoint)

    obj = read_checkpoint(path)
    stored = obj.get("config") if isinstance(obj, Mapping) else None
    entry: Any = prior
    if stored is not None:
        if prior is not None and model_kwargs(stored) != model_kwargs(prior):
            warnings.warn(f"{path} stores a model config that differs from the registry entry "
                          f"'{prior.name}'; using the file's config", stacklevel=2)
        entry = stored
    if entry is None:
        raise ValueError(f"{path} stores no config and its name matches no known prior; pass a "
                         f"prior name ({', '.join(list_priors())}) with ckpt=")
    model_cfg = model_kwargs(entry)
    unet = model_from_checkpoint(obj, model_cfg, path, device=device, dtype=dtype)
    del obj

    get = (lambda k, d=None: entry.get(k, d)) if isinstance(entry, Mapping) else \
        (lambda k, d=None: getattr(entry, k, d))
    in_ch = int(model_cfg.get("in_channels", 1))
    is_complex = bool(get("is_complex", in_ch == 2))
    learn_sigma = bool(model_cfg.get("learn_sigma", int(model_cfg.get("out_channels", in_ch)) == 2 * in_ch))
    sched_cfg = get("schedule", None) or DEFAULT_SCHEDULE
    sched_cfg = sched_cfg.to_dict() if hasattr(sched_cfg, "to_dict") else dict(sched_cfg)
    schedule = DiffusionSchedule(**sched_cfg)
    den = Denoiser(unet, schedule, is_complex=is_complex, learn_sigma=learn_sigma,
                   autocast_bf16=autocast_bf16)
    den.prior_name = get("name", None) or Path(path).stem
    den.checkpoint_path = str(path)
    return den
