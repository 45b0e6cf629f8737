"""Diffusion Posterior Sampling (DPS; Chung, Kim, Mccann, Klasky & Ye, ICLR 2023).

The loop is :func:`solvers.sampling.sample_dps`; this file gives it the measurement loss
``L(x̂₀) = ‖y − A x̂₀‖₂`` per slice. One reverse step ``t → t'`` (``t' = −1`` after the last step):

1. ``ε̂ = ε_θ(x_t, t)`` and ``x̂₀(x_t) = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t``, **with autograd** through the
   network;
2. unconditional DDIM/ancestral step ``x'_{t'} = √ᾱ_{t'}·x̂₀ + √(1−ᾱ_{t'}−σ²)·ε̂ + σ·z``,
   ``σ = η·√((1−ᾱ_{t'})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t'})``; with ``η = 1`` (default) this is the DDPM
   ancestral step on the respaced chain with the "fixed small" variance
   ``β̃ = β·(1−ᾱ_{t'})/(1−ᾱ_t)``. DPS uses guided-diffusion's learned variance, which our
   ``Denoiser`` discards (only ε is used): a documented difference;
3. guidance ``x_{t'} = x'_{t'} − ζ·∇_{x_t} ‖y − A x̂₀(x_t)‖₂`` (the gradient of the *un-squared*
   norm, as in the DPS code, i.e. the paper's ``ζ_t = ζ'/‖y − A x̂₀‖`` on the squared norm up to a
   factor 2); for complex images the gradient w.r.t. (real, imag).

Steps: DPS runs 1000 ancestral steps. Our default is ``num_steps = 100`` (``t ∈ 990, 980, …, 0``,
the DDS grid rule) because each step backpropagates through the U-Net; set ``num_steps = 1000`` to
follow the paper. ζ must be re-tuned with the number of steps and the operator's scale (paper:
ζ' ∈ [0.1, 1] for 1000 steps on natural images; nothing was published for multi-coil MRI / CT
with these priors). DPS clips x̂₀ to [−1, 1] for natural images; no clipping here.

Noise, batches, logging and the ``Result`` follow :mod:`solvers.dm_common` (one prior call and one
backward pass per step for the whole batch; the gradient of ``Σ_b ‖y_b − A x̂₀_b‖`` w.r.t. slice
``b`` is slice ``b``'s own). Logged: ``residual`` = ``‖y − A x̂₀(x_t)‖/‖y‖`` (the quantity the
guidance differentiates); callbacks receive x̂₀, and at the last step the returned sample.
"""
from __future__ import annotations

import ml_collections
import torch

from solvers.cg import batch_dot
from solvers.common import Range
from solvers.dm_common import DMSolver
from solvers.sampling import sample_dps

__all__ = ["DPS", "default_config"]


def default_config() -> ml_collections.ConfigDict:
    """Default DPS configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Respaced reverse steps (= NFEs, each with a backward pass), in [1, T]. DPS paper: 1000. Ours: 100,
    # for compute reasons (see module docstring) — not the paper's setting.
    cfg.num_steps = 100
    # η in [0, 1]; 1: ancestral DDPM sampling as in DPS (η = 0 gives deterministic DDIM + guidance).
    cfg.eta = 1.0
    # Guidance step ζ' >= 0 multiplying ∇‖y − A x̂₀‖ (DPS code's `scale`; paper uses 0.1–1.0 for
    # 1000 steps on FFHQ/ImageNet). Our default 1.0; must be tuned per task and step count.
    cfg.zeta = 1.0
    # Logging (our choice): every log_every >= 1 steps.
    cfg.log_every = 10
    cfg.progress = True
    return cfg


def residual_norm(physics, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖y − A x̂₀‖₂`` per slice (``[B]``, differentiable)."""
    r = y - physics.forward(x0)
    return torch.sqrt(batch_dot(r, r))


class DPS(DMSolver):
    """Diffusion Posterior Sampling: ``DPS(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``; ``DPS(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "DPS"
    steps_field = "num_steps"
    log_keys = ("residual",)
    default_config = staticmethod(default_config)
    RANGES = {"num_steps": Range(1, integer=True), "zeta": Range(0)}

    def sample(self, problem, x, timesteps, noise, callback):
        def loss(x0: torch.Tensor) -> torch.Tensor:
            return residual_norm(problem.physics, x0, problem.y)

        return sample_dps(self.denoiser, x, timesteps, loss, noise, zeta=float(self.cfg.zeta),
                          eta=float(self.cfg.eta), callback=callback)

    def log_values(self, problem, step):
        y = problem.y
        return {"residual": step["loss"] / torch.sqrt(batch_dot(y, y)).clamp_min(torch.finfo(torch.float32).tiny)}

    def log_image(self, step, last):
        return step["x_next"] if last else step["x0"]
