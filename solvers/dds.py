"""Decomposed Diffusion Sampling (DDS; Chung, Lee & Ye, ICLR 2024) for MRI and sparse-view CT.

The loop is :func:`solvers.sampling.sample_dds`; this file builds its data-consistency step from
the config and ``y``. One reverse step ``t → t'`` (grid of :func:`solvers.sampling.dds_timesteps`,
``980, 960, …, 20, 0`` for 50 NFEs): ``ε̂ = ε_θ(x_t, t)``, Tweedie ``x̂₀``, ``x̂₀' = DC(x̂₀)``, then
``x_{t'} = √ᾱ_{t'}·x̂₀' + η√(1−ᾱ_{t'})·z + √(1−ᾱ_{t'})√(1−η²)·ε̂`` with the network's ε̂ (DDS's
coefficients, not the DDIM paper's σ). The step to ``t' = 0`` returns ``x̂₀'`` without noise and
the last step ``(0, −1)`` returns the final ``x̂₀'``, as DDS's ``solver_2d.py`` does.

Data consistency (``num_cg`` CG iterations, default 5, started at ``x̂₀``; :meth:`DDS.data_consistency`)

* ``dc_mode = "proximal"`` (default): solve ``(I + γ′AᴴA) x = x̂₀ + γ′Aᴴy``, the proximal step
  ``argmin_x ‖x − x̂₀‖² + γ′‖Ax − y‖²``: DDS's ``--sigma_y > 0`` branch, the one its evaluation
  scripts run for MRI and CT (``eval_MRI_multi.sh`` / ``eval_SVCT_2d.sh`` pass ``--sigma_y 0.01``,
  which in ``solver_2d.py`` only selects this branch: no noise is added to ``y`` there).
* ``dc_mode = "krylov"``: CG on the normal equations ``AᴴA x = Aᴴy`` from ``x̂₀`` (no γ), so the
  iterate stays in ``x̂₀ + Krylov(AᴴA, Aᴴy − AᴴA x̂₀)`` (the paper's "Krylov subspace around the
  clean manifold"). It **assumes noiseless measurements**: it fits ``y`` as closely as ``num_cg``
  iterations allow, noise included. It is the branch DDS's code takes by default (``--sigma_y
  0``) for CT. DDS's
  multi-coil MRI code has the same branch, but it does not run: it turns the complex ``Aᴴy`` into
  an empty tensor (``real_to_nchw_comp`` of a 1-channel complex image) and its CG fails on the
  first operator call, so DDS's multi-coil MRI results come from the proximal branch.

The weight γ (``gamma``; default 1.0 = DDS's ``--gamma`` default) is on **DDS's scale**
(``gamma_scale = "dds"``): γ′ = γ·w with ``w`` the factor DDS's own ``AT`` carries relative to the
exact adjoint. For MRI ``w = 1`` (DDS's ``AT`` is the exact ``Aᴴ`` of the orthonormal multi-coil
FFT, as ours). For CT DDS's ``AT`` is an *unfiltered* back-projection scaled by ``π/(2V)`` (V views;
pytorch_radon's ``IRadon(use_filter=None)``), so ``w = π/(2V)`` (``ParallelBeamCT.dds_scale``; we
keep our exact ``Aᵀ`` and put the constant into γ′, DDS's bilinear back-projector being only
approximately the transpose of its projector). Without this factor the same γ would weight the
data term ``2V/π`` (≈ 10 for 16 views) times more than DDS does. ``gamma_scale = "adjoint"`` uses
γ′ = γ with our exact adjoint for every operator (this project's earlier convention, γ = 5).

Departure from DDS's MRI arithmetic (kept, on purpose): DDS adds the 2-channel (real, imag) x̂₀ to
the complex ``γ·Aᴴy``, which broadcasts ``γAᴴy`` into *both* channels, so its right-hand side is
``x̂₀ + γ(1+i)Aᴴy``; and its CG takes unconjugated products (``r.view(1,-1) @ r.view(1,-1).T``),
which is not the conjugate-gradient method for a complex Hermitian system. Ours is the proximal
step written above, solved by true CG. ``compat = True`` reproduces DDS's arithmetic instead (for
matching published numbers): the ``(1+i)`` right-hand side for complex images, unconjugated CG
products, and DDS's absolute CG stop ``‖r‖ < 1e-5`` (with the same prior, x_T and noise, a compat
run follows DDS's multi-coil MRI loop to float32 rounding); ``compat`` with ``dc_mode="krylov"``
is refused for MRI (DDS's branch does not run).

Noise: ``x_T`` and every ``z`` come from per-slice generators seeded at the start of each call
(``seeds[b]``, or ``seed`` for every slice), complex images with N(0, 1) real and imaginary parts
(DDS draws on the 2-channel network representation; our draws equal a contiguous ``randn`` of that
tensor, while DDS's ``randn_like`` of a permuted view, and its CUDA generator, give other streams:
same distribution, not the same draws). Batches, logging and the ``Result`` follow
:mod:`solvers.dm_common`; logged values: ``residual`` = ``‖A x̂₀' − y‖/‖y‖`` (after DC) and
``residual_tweedie`` = the same for ``x̂₀``; callbacks receive ``x̂₀'``. CG takes every inner
product per slice and its tolerance exit freezes converged slices, so batch mates do not interact.
"""
from __future__ import annotations

from typing import Optional

import ml_collections
import torch

from solvers.cg import conjugate_gradient
from solvers.common import Range
from solvers.dm_common import DMSolver, relative_residual
from solvers.sampling import sample_dds

__all__ = ["DDS", "default_config", "gamma_weight", "DDS_CG_ATOL"]

#: DDS's absolute CG stopping tolerance (``utils.CG(..., eps=1e-5)`` in its code); ``compat`` only.
DDS_CG_ATOL = 1e-5


def default_config() -> ml_collections.ConfigDict:
    """Default DDS configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Number of network evaluations (respaced reverse steps), in [1, T] (T = 1000 for the shipped
    # priors); DDS default (--T_sampling 50).
    cfg.nfe = 50
    # DDIM stochasticity η in [0, 1]; DDS default (--eta 0.85).
    cfg.eta = 0.85
    # CG iterations per step, in [1, 1000]; DDS default (--CG_iter 5).
    cfg.num_cg = 5
    # Relative tolerance of the inner CG, >= 0 (0 = always run num_cg iterations). Our knob.
    cfg.cg_tol = 0.0
    # "proximal": (I + γ′AᴴA)x = x̂₀ + γ′Aᴴy (DDS's --sigma_y > 0 branch, the one its evaluation
    # scripts run for MRI and CT); "krylov": CG on AᴴA x = Aᴴy from x̂₀, noiseless data only
    # (DDS's --sigma_y 0 branch; it runs for CT only).
    cfg.dc_mode = "proximal"
    # Proximal weight γ >= 0 on DDS's scale; DDS default (--gamma 1.0). Unused for "krylov".
    cfg.gamma = 1.0
    # "dds": γ′ = γ·π/(2V) for CT (DDS's AT is π/(2V)·back-projection), γ for MRI;
    # "adjoint": γ′ = γ with the exact adjoint (this project's earlier convention).
    cfg.gamma_scale = "dds"
    # Reproduce DDS's MRI arithmetic ((1+i)·γAᴴy right-hand side, unconjugated CG, |r| < 1e-5 stop).
    cfg.compat = False
    # ε used in the DDIM update: "network" (DDS) or "dc" (recomputed from x̂₀'; ablation only).
    cfg.eps_source = "network"
    # Logging (our choice): callback + history every `log_every` >= 1 steps (and at the last step).
    cfg.log_every = 10
    # tqdm progress bar.
    cfg.progress = True
    return cfg


def gamma_weight(physics, gamma_scale: str = "dds") -> float:
    """``w`` in γ′ = γ·w: ``π/(2V)`` for a :class:`ParallelBeamCT` on DDS's scale, else 1."""
    if gamma_scale not in ("dds", "adjoint"):
        raise ValueError(f"gamma_scale must be 'dds' or 'adjoint', got {gamma_scale!r}")
    if gamma_scale == "dds" and physics.modality == "CT":
        return float(physics.dds_scale)
    return 1.0


class DDS(DMSolver):
    """Decomposed Diffusion Sampling: ``DDS(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``; ``DDS(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "DDS"
    steps_field = "nfe"
    log_keys = ("residual", "residual_tweedie")
    default_config = staticmethod(default_config)
    RANGES = {"nfe": Range(1, integer=True), "num_cg": Range(1, 1000, integer=True), "cg_tol": Range(0),
              "gamma": Range(0)}

    def check_config(self, cfg) -> None:
        if cfg.dc_mode not in ("proximal", "krylov"):
            raise ValueError(f"dc_mode must be 'proximal' or 'krylov', got {cfg.dc_mode!r}")
        if cfg.eps_source not in ("network", "dc"):
            raise ValueError(f"eps_source must be 'network' or 'dc', got {cfg.eps_source!r}")
        if cfg.gamma_scale not in ("dds", "adjoint"):
            raise ValueError(f"gamma_scale must be 'dds' or 'adjoint', got {cfg.gamma_scale!r}")

    def noiseless_assumption(self) -> Optional[str]:
        if self.cfg.dc_mode == "krylov":
            return "dds with dc_mode='krylov' fits y as closely as num_cg iterations allow, noise included"
        return None

    def data_consistency(self, x0_hat: torch.Tensor, y: torch.Tensor, physics,
                         ATy: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x̂₀' = ``num_cg`` CG iterations on the configured system, started at ``x0_hat``
        ``[B,H,W]`` (``ATy`` = ``physics.adjoint(y)`` if already computed): the proximal system
        ``(I + γ′AᴴA) x = x̂₀ + γ′Aᴴy``, or for ``dc_mode="krylov"`` the normal equations
        ``AᴴA x = Aᴴy``, which assume **noiseless** ``y`` (they fit the noise too)."""
        cfg = self.cfg
        if ATy is None:
            ATy = physics.adjoint(y)
        cg = {"num_iters": int(cfg.num_cg), "tol": float(cfg.cg_tol)}
        if cfg.compat:
            cg.update(conjugate=False, atol=DDS_CG_ATOL)
        if cfg.dc_mode == "krylov":
            if cfg.compat and physics.is_complex:
                raise ValueError("compat=True with dc_mode='krylov' has no MRI counterpart: DDS's "
                                 "noiseless MRI branch does not run; use dc_mode='proximal'")
            return conjugate_gradient(physics.normal, ATy, x0_hat, **cg)
        g = float(cfg.gamma) * gamma_weight(physics, cfg.gamma_scale)
        data = (1 + 1j) * ATy if cfg.compat and physics.is_complex else ATy
        return conjugate_gradient(lambda v: v + g * physics.normal(v), x0_hat + g * data, x0_hat, **cg)

    def sample(self, problem, x, timesteps, noise, callback):
        ATy = problem.physics.adjoint(problem.y)

        def dc(x0: torch.Tensor) -> torch.Tensor:
            return self.data_consistency(x0, problem.y, problem.physics, ATy)

        return sample_dds(self.denoiser, x, timesteps, dc, noise, eta=float(self.cfg.eta),
                          eps_source=self.cfg.eps_source, callback=callback)

    def log_values(self, problem, step):
        return {"residual": relative_residual(problem.physics, step["x0_dc"], problem.y),
                "residual_tweedie": relative_residual(problem.physics, step["x0"], problem.y)}

    def log_image(self, step, last):
        return step["x0_dc"]
