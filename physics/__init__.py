"""Forward operators (MRI, CT) behind one contract, the degradation registry and noise.

* :class:`LinearOperator` (``physics/base.py``): the contract — ``forward`` (A), ``adjoint``
  (Aᴴ), ``normal`` (AᴴA), ``input_image`` (z₀: zero-filled Aᴴy for MRI, FBP for CT),
  ``is_complex``, ``image_shape``, ``modality``, ``image_support()``, ``measurement_mask(y)``,
  ``slice(b)`` / ``stack``, ``adjointness_test()``, ``check_finite``.
  :class:`MultiCoilMRI` (``mri.py``) and :class:`ParallelBeamCT` (``ct.py``, kernels in
  ``ct_kernels.py``) implement it.
* ``make_physics(deg, cfg, sample)``, ``modality_of(deg)``, ``DEGRADATIONS`` (``registry.py``).
* ``simulate_measurements(physics, x, noise_sigma, seed, noise=model)`` → y = A x + n; noise models
  (Gaussian, relative Gaussian, CT Poisson), ``noise_from_config(cfg.physics)``, ``is_noiseless``
  (``noise.py``).
* ``stack_physics(ops)``: one batched operator from one-slice operators;
  ``finite_checks(op, enabled)``: the NaN/Inf input checks off/on inside a block.
"""
from __future__ import annotations

from typing import ContextManager, Sequence

from torch import nn

from .base import MODALITIES, LinearOperator
from .base import finite_checks as _finite_checks
from .ct import ParallelBeamCT
from .mri import MultiCoilMRI
from .noise import (GaussianNoise, NoiseModel, PoissonNoise, RelativeGaussianNoise, is_noiseless,
                    noise_from_config, simulate_measurements)
from .registry import DEGRADATIONS, REGISTRY, Degradation, degradation, make_physics, modality_of

__all__ = [
    "LinearOperator", "MODALITIES", "MultiCoilMRI", "ParallelBeamCT",
    "DEGRADATIONS", "REGISTRY", "Degradation", "degradation", "make_physics", "modality_of",
    "NoiseModel", "GaussianNoise", "RelativeGaussianNoise", "PoissonNoise", "simulate_measurements",
    "noise_from_config", "is_noiseless",
    "stack_physics", "finite_checks",
]


def stack_physics(ops: Sequence[LinearOperator]) -> LinearOperator:
    """One batched operator from ``B`` single-slice operators of one kind (slice ``b`` = ``ops[b]``).

    * ``MultiCoilMRI``: masks stacked to ``[B,H,W]``, coil maps to ``[B,C,H,W]`` (all slices must
      have the same ``H, W`` and coil count);
    * ``ParallelBeamCT``: the operators must share one geometry (image size, detectors, angles,
      angular range); the first one is returned, it acts slice-wise on a ``[B,...]`` batch.

    Anything else (mixed kinds, differing geometry, an empty list) → ValueError.
    """
    ops = list(ops)
    if not ops:
        raise ValueError("stack_physics needs at least one operator")
    if not all(isinstance(o, LinearOperator) for o in ops):
        kinds = sorted({type(o).__name__ for o in ops})
        raise ValueError(f"stack_physics needs physics.LinearOperator operators, got {', '.join(kinds)}")
    return type(ops[0]).stack(ops)


def finite_checks(physics: nn.Module, enabled: bool) -> ContextManager[nn.Module]:
    """Switch the operators' NaN/Inf input checks on or off inside the block (restored after).

    Every operator checks its inputs with ``torch.isfinite(t).all()`` by default, which on a GPU
    is a host–device sync per call.  The DIP loops check ``y`` once, turn the per-call check off
    for their inner loop and detect non-finite losses at their logging steps instead.  Applies to
    every :class:`LinearOperator` among ``physics.modules()``; anything else is left alone.
    """
    return _finite_checks(physics, enabled)
