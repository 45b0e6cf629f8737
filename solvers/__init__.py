"""Reconstruction methods, all with ``solver(y [B,...], physics, x_gt=None, callback=None) -> Result``.

``make_solver(name, cfg, denoiser, seed, device, seeds, perf)`` builds one by registry name.
"""
from __future__ import annotations

import importlib

#: registry name → (module, class, needs a diffusion prior)
REGISTRY = {
    "udigdip": ("solvers.udig_dip", "UDiGDIP", True),
    "aseqdip": ("solvers.seqdip", "SeqDIP", False),
    "dip": ("solvers.dip", "VanillaDIP", False),
    "sgdip": ("solvers.sgdip", "SelfGuidedDIP", False),
    "dds": ("solvers.dds", "DDS", True),
    "dps": ("solvers.dps", "DPS", True),
    "scoremri": ("solvers.scoremri", "ScoreMRI", True),
    "mcg": ("solvers.mcg", "MCG", True),
    "cgsense": ("solvers.cgsense", "CGSense", False),
    "l1wavelet": ("solvers.l1wavelet", "L1Wavelet", False),
    "tv": ("solvers.tv", "TV", False),
}
ALIASES = {"udig-dip": "udigdip", "udig_dip": "udigdip", "seqdip": "aseqdip", "aseq-dip": "aseqdip",
           "vanilla-dip": "dip", "self-guided-dip": "sgdip", "score-mri": "scoremri", "score_mri": "scoremri",
           "cg-sense": "cgsense", "cg_sense": "cgsense", "cgls": "cgsense", "l1-wavelet": "l1wavelet",
           "l1_wavelet": "l1wavelet", "cs": "l1wavelet"}


def canonical(name: str) -> str:
    """Registry name for ``name`` (case-insensitive, aliases accepted); unknown → ValueError."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(REGISTRY)}")
    return key


def solver_class(name: str):
    mod, cls, _ = REGISTRY[canonical(name)]
    return getattr(importlib.import_module(mod), cls)


def needs_prior(name: str) -> bool:
    return REGISTRY[canonical(name)][2]


def default_config(name: str):
    mod, _, _ = REGISTRY[canonical(name)]
    return importlib.import_module(mod).default_config()


def takes_perf(name: str) -> bool:
    """Whether solver ``name`` takes the speed settings ``perf`` (``solvers/perf.py``): the DIP solvers."""
    return bool(getattr(solver_class(name), "takes_perf", False))


def make_solver(name: str, cfg=None, denoiser=None, seed: int = 0, device=None, seeds=None, perf=None):
    """Instantiate solver ``name`` with config ``cfg`` (fields override its ``default_config()``).

    ``seeds``: one seed per slice of the ``y`` it will be called with (``None``: every slice uses
    ``seed``).  ``perf``: speed settings of the DIP solvers (``solvers.perf.default_config()``
    fields); solvers without such settings (:func:`takes_perf`) ignore it."""
    if needs_prior(name) and denoiser is None:
        raise ValueError(f"solver {name!r} needs a diffusion prior (denoiser)")
    kw = {"perf": perf} if takes_perf(name) else {}
    return solver_class(name)(cfg, denoiser=denoiser, seed=seed, device=device, seeds=seeds, **kw)
