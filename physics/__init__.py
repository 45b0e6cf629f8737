"""Forward operators (MRI, CT) and the one factory that builds them from a config.

``make_physics(deg, cfg, sample)`` → an ``nn.Module`` with ``forward`` (A), ``adjoint`` (Aᴴ),
``normal`` (AᴴA) and ``input_image`` (z₀: zero-filled Aᴴy for MRI, FBP for CT).
``simulate_measurements(physics, x, noise_sigma, seed)`` → y = A x + σ n (seeded).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

DEGRADATIONS = ("MRI-multi", "SV-CT", "LA-CT")


def modality_of(deg: str) -> str:
    """``"MRI"`` or ``"CT"`` for a degradation name; unknown name → ValueError listing the valid ones."""
    if deg not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {deg!r}; valid: {', '.join(DEGRADATIONS)}")
    return "MRI" if deg.startswith("MRI") else "CT"


def make_physics(deg: str, cfg, sample) -> torch.nn.Module:
    """Build the operator of degradation ``deg`` for one data ``sample`` (``utils.data.Sample``).

    * ``MRI-multi``: ``MultiCoilMRI(get_mask(cfg.mask, (H, W), cfg.acceleration,
      cfg.center_fraction, cfg.mask_seed), sample.sens_maps)``;
    * ``SV-CT``: ``ParallelBeamCT(N, cfg.num_views)`` over 180°;
    * ``LA-CT``: ``ParallelBeamCT(N, cfg.num_views, angle_range=cfg.angle_range)`` (< 180°).
    """
    H, W = sample.x_ref.shape[-2:]
    if modality_of(deg) == "MRI":
        from physics.masks import get_mask
        from physics.mri import MultiCoilMRI

        mask = get_mask(cfg.mask, (H, W), cfg.acceleration, cfg.center_fraction, seed=cfg.mask_seed)
        return MultiCoilMRI(mask, sample.sens_maps)
    from physics.ct import ParallelBeamCT

    if H != W:
        raise ValueError(f"CT needs square images, got {H}×{W}")
    angle_range = 180.0 if deg == "SV-CT" else float(cfg.angle_range)
    return ParallelBeamCT(int(H), num_views=int(cfg.num_views), angle_range=angle_range,
                          num_detectors=int(cfg.num_detectors) or None)


def simulate_measurements(physics: torch.nn.Module, x: torch.Tensor, noise_sigma: float = 0.0,
                          seed: int = 0) -> torch.Tensor:
    """y = A x + σ·n with n ~ N(0, I) (complex: real and imaginary parts each N(0, 1/2)·2 → E|n|² = 1),
    drawn from a CPU generator seeded with ``seed`` so the noise does not depend on the device."""
    y = physics(x)
    if noise_sigma > 0:
        g = torch.Generator().manual_seed(int(seed))
        if torch.is_complex(y):
            n = torch.randn(y.shape, generator=g, dtype=y.real.dtype) + 1j * torch.randn(
                y.shape, generator=g, dtype=y.real.dtype)
            n = n / 2 ** 0.5
            n = n * (physics.mask_for(y) if hasattr(physics, "mask_for") else (y != 0))
        else:
            n = torch.randn(y.shape, generator=g, dtype=y.dtype)
        y = y + noise_sigma * n.to(device=y.device, dtype=y.dtype)
    return y


def stack_physics(ops: Sequence[torch.nn.Module]) -> torch.nn.Module:
    """One batched operator from ``B`` single-slice operators.

    * ``MultiCoilMRI``: masks stacked to ``[B,H,W]``, coil maps to ``[B,C,H,W]`` (all slices must
      have the same ``H, W`` and coil count);
    * anything else (e.g. ``ParallelBeamCT``): the operators must be the same geometry (checked
      by ``extra_repr``); the first one is returned, it acts slice-wise on a ``[B,...]`` batch.
    """
    ops = list(ops)
    if not ops:
        raise ValueError("stack_physics needs at least one operator")
    from physics.mri import MultiCoilMRI

    if all(isinstance(o, MultiCoilMRI) for o in ops):
        masks = torch.stack([o.mask if o.mask.ndim == 2 else o.mask.reshape(o.mask.shape[-2:]) for o in ops])
        maps = [o.sens_maps for o in ops]
        if any(m is None for m in maps):
            if not all(m is None for m in maps):
                raise ValueError("stack_physics: mix of single-coil and multi-coil MRI operators")
            return MultiCoilMRI(masks)
        maps = torch.stack([m if m.ndim == 3 else m.reshape(m.shape[-3:]) for m in maps])
        return MultiCoilMRI(masks, maps)
    reprs = {(type(o).__name__, o.extra_repr()) for o in ops}
    if len(reprs) != 1:
        raise ValueError(f"stack_physics: operators differ ({sorted(reprs)}); only MRI operators "
                         "can be stacked, other kinds must share one geometry")
    return ops[0]


@contextlib.contextmanager
def finite_checks(physics: torch.nn.Module, enabled: bool) -> Iterator[torch.nn.Module]:
    """Switch the operators' NaN/Inf input checks on or off inside the block (restored after).

    Every operator checks its inputs with ``torch.isfinite(t).all()`` by default, which on a GPU
    is a host–device sync per call.  The DIP loops check ``y`` once, turn the per-call check off
    for their inner loop and detect non-finite losses at their logging steps instead (the NaN
    guard of ``solvers.common.fit_dip``).  Applies to ``physics`` and every sub-module that has a
    ``check_finite`` attribute; objects without it are left alone.
    """
    mods = [m for m in physics.modules() if hasattr(m, "check_finite")] if isinstance(
        physics, torch.nn.Module) else ([physics] if hasattr(physics, "check_finite") else [])
    saved = [m.check_finite for m in mods]
    try:
        for m in mods:
            m.check_finite = bool(enabled)
        yield physics
    finally:
        for m, v in zip(mods, saved):
            m.check_finite = v
