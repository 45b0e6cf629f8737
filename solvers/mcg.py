"""Manifold-constrained gradient (MCG; Chung, Sim, Ryu & Ye, "Improving diffusion models for
inverse problems using manifold constraints", NeurIPS 2022) for multi-coil MRI and CT, on this
project's VP/DDPM ε-priors.

The loop is :func:`solvers.sampling.sample_mcg`; this file gives it the loss and the measurement
step. References to the official code, github.com/HJ-harry/MCG_diffusion (commit d5bfd15):
``G`` = ``guided_diffusion/gaussian_diffusion.py``, ``C`` = ``controllable_generation.py``,
``R`` = ``run_CT_recon.py``, ``I`` = ``run_inpainting.sh``.

Per reverse step ``t → t'`` (grid of :func:`solvers.sampling.dds_timesteps`):

1. ``ε̂ = ε_θ(x_t, t)``, Tweedie ``x̂₀(x_t)`` with autograd through the network;
2. unconditional DDPM ancestral step ``x'_{t'}`` (DDIM η-form, ``eta = 1``: the "fixed small"
   variance; x̂₀ after the last step);
3. MCG step ``x''_{t'} = x'_{t'} − α·∇_{x_t} ‖W(y − A x̂₀(x_t))‖`` (per slice; the un-squared norm,
   as the official code takes it);
4. measurement step onto ``A x = ỹ_{t'}``, with ``ỹ_t = √ᾱ_t·y + √(1−ᾱ_t)·A z`` the measurement
   noised to level ``t`` (``measurement_noise``; ``√ᾱ_t·y`` without it; ``y`` at the end):

   * ``dc_mode = "projection"`` (default) — **assumes noiseless y**: ``x ← x + A⁺(ỹ − A x)``, the
     orthogonal projection onto ``{A x = ỹ}``, computed as ``num_cg`` CG iterations on
     ``AᴴA v = Aᴴỹ`` started at ``x`` (the iterate stays in ``x + range(Aᴴ)``, so CG converges to
     exactly that projection). For operators with orthonormal rows (single-coil Cartesian MRI with a
     0/1 mask: ``AᴴA`` is a projector) one iteration is exact and equals "replace the sampled
     k-space by ỹ" — the paper's projection (its inpainting code replaces the measured pixels,
     ``G:555-556``). Multi-coil SENSE: ``{A x = ỹ}`` is the set of images whose coil images
     ``S_c x`` have the sampled k-space ``ỹ_c``; with ``C`` coils at acceleration ``R ≤ C`` it is
     (numerically almost) a single point, the SENSE solution, and ``num_cg`` CG iterations from
     ``x`` carry out the part of the projection along the well-conditioned directions of ``AᴴA``
     — a partial projection, exact only as ``num_cg → ∞``. CT: the same CG projection (sparse
     views leave a large null space, which the prior fills).
   * ``dc_mode = "kaczmarz"`` — the paper's CT form, also **noiseless**: ``x ← x + λ_t·Aᴴ(ỹ − A x)
     / (AᴴA·1)`` (a SIRT-type relaxed projection; ``AᴴA·1`` for CT, 1 for MRI) with ``λ`` linear
     from ``lam_start`` to ``lam_end`` over the run (``C:79``, ``C:91-92``; 1.0 → 0.6,
     ``R:42-44``).
   * ``dc_mode = "proximal"`` — the **noisy-data** form (our choice; DDS's proximal step):
     ``num_cg`` CG iterations on ``(I + γ′AᴴA) v = x + γ′Aᴴỹ`` from ``x``, i.e.
     ``argmin_v ‖v − x‖² + γ′‖A v − ỹ‖²``: it moves towards the data without copying their noise
     (γ′ = γ·w on DDS's scale, ``solvers.dds.gamma_weight``).

Weighting ``W`` (``weighting``): ``"input_image"`` (default) = the operator's own reconstruction
``physics.input_image``: FBP for CT, as the official CT code (``‖A†(y − A x̂₀)‖``, ``C:74``),
and the zero-filled ``Aᴴ`` for MRI (for orthonormal rows ``‖Aᴴr‖ = ‖r‖``: the inpainting code's
``‖M(y − x̂₀)‖``, ``G:552``); ``"none"``: ``‖y − A x̂₀‖``.

The official code and the departures:

* VP prior: the closest official counterpart is the guided-diffusion (VP, ε-prediction, ADM) loop
  ``G:524-588``: the gradient w.r.t. ``x_t`` through the network (``G:528``, ``G:552-554``), the
  unconditional ancestral ``p_sample`` (``G:529``, ``G:401-445``), then
  ``x'(1−M) − ∇ + q_sample(y, t)·M`` (``G:555-556``) at every one of the 1000 steps (``I:18-19``),
  weight 1. Departures: (a) ``p_sample`` uses the network's learned variance and clips x̂₀ to
  [−1, 1]; our ``Denoiser`` returns ε only, so the ancestral step has the "fixed small" posterior
  variance (as :mod:`solvers.dps`), no clipping; (b) the official noises ``y`` to level ``t``
  (``q_sample(cond, t)``, ``G:556``) though the sample is at ``t − 1``; we noise it to ``t'``, the
  level of the iterate (``y`` itself at the end); (c) the official restricts the gradient to the
  unmeasured part (``* (1 − mask)``, ``G:554``); with an exact projection that is automatic (the
  projection overwrites the measured part), so it is not done separately.
* CT code (VE SDE, ``C:13-105``): predictor, then a Langevin corrector whose input gets the MCG
  gradient (``C:64-79``) of ``‖A†(y − A x̂₀)‖`` weighted 0.1 (``R:142``), restricted to the
  unmeasured views with a full-view operator (``C:77``), then the relaxed projection with clean
  ``y`` (``measurement_noise=False``, ``C:16``, ``C:57-60``). Our "kaczmarz" mode is that
  projection; no corrector, and the gradient is not restricted to the unmeasured views (our
  operators have no full-view counterpart) — departures.
* Scale: as in :mod:`solvers.scoremri`, a VE iterate with clean ``y`` corresponds to the VP iterate
  with ``√ᾱ_t·y``.

Noise, batches, logging and the ``Result`` follow :mod:`solvers.dm_common` (one prior call and one
backward pass per step for the whole batch). Logged: ``residual`` = ``‖A x̂₀ − y‖/‖y‖`` and ``loss``
(= ``‖W(y − A x̂₀)‖``); callbacks receive x̂₀, and at the last step the returned image.
"""
from __future__ import annotations

from typing import Optional

import ml_collections
import torch

from solvers.cg import conjugate_gradient
from solvers.dds import gamma_weight
from solvers.common import Range
from solvers.dm_common import DMSolver, check_steps, relative_residual
from solvers.sampling import sample_mcg

__all__ = ["MCG", "default_config", "DC_MODES", "WEIGHTINGS"]

DC_MODES = ("projection", "kaczmarz", "proximal")
WEIGHTINGS = ("input_image", "none")


def default_config() -> ml_collections.ConfigDict:
    """Default MCG configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Reverse steps (= NFEs, each with a backward pass). MCG runs every step of the 1000-step chain
    # (MCG_diffusion run_inpainting.sh:18-19: --timestep_respacing 1000, --use_ddim False).
    cfg.num_steps = 1000
    # η = 1: DDPM ancestral step (p_sample, gaussian_diffusion.py:529).
    cfg.eta = 1.0
    # Weight α of the MCG gradient: 1 in the VP inpainting code (gaussian_diffusion.py:554);
    # the CT script uses 0.1 (run_CT_recon.py:142).
    cfg.alpha = 1.0
    # W in ‖W(y − A x̂₀)‖: "input_image" (FBP for CT as controllable_generation.py:74; Aᴴ for MRI)
    # or "none".
    cfg.weighting = "input_image"
    # Measurement step: "projection" (noiseless; the paper's projection), "kaczmarz" (noiseless;
    # the paper's CT form), "proximal" (noisy data; our choice). See the module docstring.
    cfg.dc_mode = "projection"
    # CG iterations of "projection" / "proximal" (1 is exact for single-coil MRI). Our choice
    # (DDS's CG count).
    cfg.num_cg = 5
    # "kaczmarz": λ linear from lam_start to lam_end over the run (run_CT_recon.py:42-44).
    cfg.lam_start = 1.0
    cfg.lam_end = 0.6
    # "proximal": weight γ on DDS's scale (solvers.dds.gamma_weight). Our choice (DDS's default).
    cfg.gamma = 1.0
    cfg.gamma_scale = "dds"
    # ỹ_t = √ᾱ_t y + √(1−ᾱ_t) A z (q_sample of the measurement, gaussian_diffusion.py:556);
    # False: √ᾱ_t y (the CT code's default, controllable_generation.py:16).
    cfg.measurement_noise = True
    # Logging (our choice).
    cfg.log_every = 10
    cfg.progress = True
    return cfg


def weighted_residual_norm(physics, x0: torch.Tensor, y: torch.Tensor, weighting: str) -> torch.Tensor:
    """``‖W(y − A x̂₀)‖`` per slice (``[B]``, differentiable; gradient 0 at a zero residual)."""
    r = y - physics.forward(x0)
    if weighting == "input_image":
        r = physics.input_image(r)
    return torch.linalg.vector_norm(r.reshape(r.shape[0], -1), dim=1)


class MCG(DMSolver):
    """Manifold-constrained gradient: ``MCG(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``; ``MCG(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "MCG"
    steps_field = "num_steps"
    log_keys = ("residual", "loss")
    default_config = staticmethod(default_config)

    def __init__(self, cfg=None, denoiser=None, seed: int = 0, device=None, seeds=None):
        super().__init__(cfg, denoiser, seed, device, seeds)
        check_steps(self)

    RANGES = {"num_steps": Range(1, integer=True), "alpha": Range(0), "num_cg": Range(1, 1000, integer=True),
              "lam_start": Range(0, 2, lo_open=True, hi_open=True), "lam_end": Range(0, 2, lo_open=True, hi_open=True),
              "gamma": Range(0, lo_open=True)}

    def noiseless_assumption(self) -> Optional[str]:
        if self.cfg.dc_mode in ("projection", "kaczmarz"):
            return (f"mcg with dc_mode={self.cfg.dc_mode!r} projects onto the measurement set y = A x "
                    "(noise included); use dc_mode='proximal' for noisy data")
        return None

    def check_config(self, cfg) -> None:
        for name, choices in (("dc_mode", DC_MODES), ("weighting", WEIGHTINGS), ("gamma_scale", ("dds", "adjoint"))):
            if cfg[name] not in choices:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {cfg[name]!r}")
        if not isinstance(cfg.measurement_noise, bool):
            raise ValueError(f"measurement_noise must be True or False, got {cfg.measurement_noise!r}")

    # ------------------------------------------------------------------ measurement step
    def noised_measurement(self, y: torch.Tensor, physics, t: int, like: torch.Tensor, noise) -> torch.Tensor:
        """``ỹ_t = √ᾱ_t·y (+ √(1−ᾱ_t)·A z``, ``z = noise.like(like)``, with ``measurement_noise``)."""
        a = self.denoiser.schedule.alpha_bar(t, like)
        y_t = a.sqrt() * y
        if self.cfg.measurement_noise and t >= 0:
            y_t = y_t + (1.0 - a).sqrt() * physics.forward(noise.like(like))
        return y_t

    def lam(self, t: int) -> float:
        """The "kaczmarz" weight at level ``t``: linear from ``lam_start`` (``t = T−1``) to
        ``lam_end`` (``t = −1``), i.e. linear in the step index on the uniform grid."""
        T = self.denoiser.schedule.num_steps
        frac = (T - 1 - int(t)) / T
        return float(self.cfg.lam_start) + (float(self.cfg.lam_end) - float(self.cfg.lam_start)) * frac

    def project(self, x: torch.Tensor, y_t: torch.Tensor, physics, t: int,
                norm: torch.Tensor | None = None) -> torch.Tensor:
        """The measurement step of ``dc_mode`` for ``x`` ``[B,H,W]`` and the level-``t`` data
        ``y_t`` (``norm``: ``AᴴA·1`` for "kaczmarz" on CT, else ``None``)."""
        cfg = self.cfg
        if cfg.dc_mode == "kaczmarz":
            step = physics.adjoint(y_t - physics.forward(x))
            return x + self.lam(t) * (step if norm is None else step / norm)
        ATy = physics.adjoint(y_t)
        if cfg.dc_mode == "projection":
            return conjugate_gradient(physics.normal, ATy, x, num_iters=int(cfg.num_cg))
        g = float(cfg.gamma) * gamma_weight(physics, cfg.gamma_scale)
        return conjugate_gradient(lambda v: v + g * physics.normal(v), x + g * ATy, x, num_iters=int(cfg.num_cg))

    def sample(self, problem, x, timesteps, noise, callback):
        physics, y = problem.physics, problem.y
        norm = None
        if self.cfg.dc_mode == "kaczmarz" and physics.modality == "CT":
            norm = physics.normal(torch.ones_like(x[:1]))
            if not bool((norm > 0).all()):
                raise ValueError("dc_mode='kaczmarz' divides by AᵀA·1, which is not positive for this CT "
                                 "operator (a system matrix with negative entries, or pixels no ray "
                                 "crosses); use dc_mode='projection'")

        def loss(x0: torch.Tensor) -> torch.Tensor:
            return weighted_residual_norm(physics, x0, y, self.cfg.weighting)

        def projection(v: torch.Tensor, t: int) -> torch.Tensor:
            return self.project(v, self.noised_measurement(y, physics, t, v, noise), physics, t, norm)

        return sample_mcg(self.denoiser, x, timesteps, loss, projection, noise, alpha=float(self.cfg.alpha),
                          eta=float(self.cfg.eta), callback=callback)

    def log_values(self, problem, step):
        return {"residual": relative_residual(problem.physics, step["x0"], problem.y), "loss": step["loss"]}

    def log_image(self, step, last):
        return step["x_next"] if last else step["x0"]
