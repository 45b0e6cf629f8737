"""Degradations by name: which operator an experiment's ``--deg`` builds, and its modality.

``REGISTRY[name] = Degradation(name, modality, build, description)`` where
``build(cfg, sample) -> LinearOperator`` takes the ``physics`` section of a config and one data
sample (``utils.data.Sample``: ``x_ref [H, W]``, ``sens_maps [C, H, W]`` or ``None``).  A new
degradation is one builder function and one entry in :data:`REGISTRY`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from .base import MODALITIES, LinearOperator
from .ct import ParallelBeamCT
from .masks import get_mask
from .mri import MultiCoilMRI

__all__ = ["Degradation", "REGISTRY", "DEGRADATIONS", "degradation", "modality_of", "make_physics"]


@dataclass(frozen=True)
class Degradation:
    """One measurement set-up: its ``name``, ``modality`` (``"MRI"`` | ``"CT"``) and builder."""

    name: str
    modality: str
    build: Callable[..., LinearOperator]
    description: str = ""

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"degradation {self.name!r}: modality must be one of {MODALITIES}, "
                             f"got {self.modality!r}")


def _image_shape(sample) -> tuple:
    H, W = sample.x_ref.shape[-2:]
    return int(H), int(W)


def build_multicoil_mri(cfg, sample) -> MultiCoilMRI:
    """``MultiCoilMRI(get_mask(cfg.mask, (H, W), cfg.acceleration, cfg.center_fraction,
    seed=cfg.mask_seed), sample.sens_maps)`` (single coil when the sample has no maps)."""
    mask = get_mask(cfg.mask, _image_shape(sample), cfg.acceleration, cfg.center_fraction,
                    seed=cfg.mask_seed)
    return MultiCoilMRI(mask, sample.sens_maps)


def _parallel_beam(cfg, sample, angle_range: float) -> ParallelBeamCT:
    H, W = _image_shape(sample)
    if H != W:
        raise ValueError(f"CT needs square images, got {H}×{W}")
    return ParallelBeamCT(H, num_views=int(cfg.num_views), angle_range=angle_range,
                          num_detectors=int(cfg.num_detectors) or None)


def build_sparse_view_ct(cfg, sample) -> ParallelBeamCT:
    """``cfg.num_views`` views over 180° (``cfg.angle_range`` is not used)."""
    return _parallel_beam(cfg, sample, 180.0)


def build_limited_angle_ct(cfg, sample) -> ParallelBeamCT:
    """``cfg.num_views`` views over ``cfg.angle_range`` degrees, which must be below 180."""
    angle_range = float(cfg.angle_range)
    if not 0 < angle_range < 180:
        raise ValueError(f"LA-CT needs 0 < angle_range < 180 degrees, got {cfg.angle_range!r} "
                         "(a 180° scan is SV-CT)")
    return _parallel_beam(cfg, sample, angle_range)


REGISTRY: Dict[str, Degradation] = {d.name: d for d in (
    Degradation("MRI-multi", "MRI", build_multicoil_mri,
                "Cartesian multi-coil MRI, undersampled by a k-space mask"),
    Degradation("SV-CT", "CT", build_sparse_view_ct, "sparse-view parallel-beam CT over 180°"),
    Degradation("LA-CT", "CT", build_limited_angle_ct,
                "limited-angle parallel-beam CT over angle_range < 180°"),
)}

DEGRADATIONS = tuple(REGISTRY)


def degradation(name: str) -> Degradation:
    """The registry entry of ``name``; an unknown name → ValueError listing the valid ones."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown degradation {name!r}; valid: {', '.join(DEGRADATIONS)}") from None


def modality_of(deg: str) -> str:
    """``"MRI"`` or ``"CT"`` for a degradation name (unknown name → ValueError)."""
    return degradation(deg).modality


def make_physics(deg: str, cfg, sample) -> LinearOperator:
    """The operator of degradation ``deg`` for one data ``sample`` (``cfg``: the config's
    ``physics`` section)."""
    return degradation(deg).build(cfg, sample)
