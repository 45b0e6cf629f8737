"""Total-variation regularised least squares (MRI and CT) by PDHG (Chambolle–Pock).

Problem, per slice (``λ = lam``)::

    min_x  ½‖A x − y‖²  +  λ · TV(x)      over images x that vanish outside the image support,
    TV(x) = Σ_pixels sqrt(|D_h x|² + |D_v x|²)          (isotropic)

``D_h, D_v``: forward differences with Neumann boundary (the difference leaving the image is 0);
``‖D‖² ≤ 8``.  For complex (MRI) images ``|·|`` is the complex modulus, so the real and imaginary
parts share one gradient magnitude.  ``λ`` is absolute (the data term is not normalised): the
data terms of MRI (``‖A‖ ≈ 1``) and CT (line integrals in pixel units, ``‖A‖² ~ views × size``)
differ in scale, so λ is set per modality (``configs/demo.py``).

Algorithm: PDHG (Chambolle & Pock, JMIV 40:120, 2011) on ``K = [A/a; D/d]`` with ``a = 1.01·‖A‖``
(per slice, :func:`solvers.classical.operator_norm`, ``power_iters`` power iterations: the
deepinv habit of step sizes from a power-iteration norm) and ``d = √8``, so ``‖K‖² ≤ 2`` and steps
with ``τσ = 0.99²/2`` satisfy ``τσ‖K‖² < 1``.  Scaling the two blocks to unit norm changes only
the speed, not the solution.  With dual variables ``p`` (measurements) and ``q`` (gradients)::

    x⁺ ← S ⊙ (x − τ (Aᴴp/a + Dᴴq/d))                  S: the image support (0/1)
    x̄  ← 2x⁺ − x
    p  ← (p + σ A x̄/a − σ y/a) / (1 + σ/a²)           prox of σF₁*, F₁(u) = ½‖a u − y‖²
    q  ← proj_{|q_i| ≤ λ d}(q + σ D x̄/d)              prox of σF₂*, F₂(v) = λ‖d v‖_{2,1}

from ``x = p = q = 0``, for ``num_iters`` iterations; ``λ = 0`` is least squares.  The ratio
``τ/σ`` (start: ``step_ratio``) decides the speed: the best ratio differs by orders of magnitude
between our MRI and CT problems, so with ``adaptive = True`` (default) it is adapted per slice by
residual balancing (Goldstein, Li, Yuan, Esser & Baraniuk, "Adaptive primal-dual splitting
methods", arXiv:1305.0546, Alg. 1; α₀ = 0.5, η = 0.95, Δ = 1.5, s = 1 as there and in pyproximal's
``AdaptivePrimalDual``): when the primal residual ``‖(x − x⁺)/τ − Kᴴ((p, q) − (p⁺, q⁺))‖``
exceeds Δ times the dual one ``‖((p, q) − (p⁺, q⁺))/σ − K(x − x⁺)‖``, ``τ`` grows and ``σ`` shrinks by
``1/(1−α)``, and vice versa; ``α`` shrinks by ``η`` at each adaptation, so the steps settle and the
usual PDHG convergence applies.  ``Kx`` is tracked from ``K x̄`` (no extra operator calls).
Logged ``objective``: ``½‖A x − y‖² + λ TV(x)``.  Interface, batches, logging:
:mod:`solvers.classical`.
"""
from __future__ import annotations

import math

import ml_collections
import torch

from solvers.cg import batch_dot
from solvers.classical import ClassicalSolver, operator_norm
from solvers.common import Range

__all__ = ["TV", "default_config", "gradient", "gradient_adjoint", "tv_norm"]

#: ‖D‖² of the 2-D forward-difference gradient is below 8.
GRAD_NORM = math.sqrt(8.0)
#: ``a = NORM_SAFETY · ‖A‖`` (the power-iteration estimate is never above the true norm).
NORM_SAFETY = 1.01
#: Adaptive step sizes (Goldstein et al., module docstring): α₀, η, Δ as recommended there.
ADAPT_ALPHA, ADAPT_ETA, ADAPT_DELTA = 0.5, 0.95, 1.5


def default_config() -> ml_collections.ConfigDict:
    """Default TV configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # TV weight λ (absolute; module docstring). Our choice, sized for MRI images of magnitude ≲ 1
    # with ‖A‖ ≈ 1; CT needs a larger λ (configs/demo.py sets both).
    cfg.lam = 1e-3
    # PDHG iterations from x = 0. Our choice.
    cfg.num_iters = 300
    # Power iterations estimating ‖A‖ for the step sizes. Our choice.
    cfg.power_iters = 30
    # Initial τ/σ of PDHG (τσ fixed): only the speed depends on it, not the solution. Our choice.
    cfg.step_ratio = 1.0
    # Adapt τ/σ by residual balancing (Goldstein et al. 2015; module docstring). Our choice.
    cfg.adaptive = True
    # Logging (our choice): history + callback every `log_every` iterations and at the last one.
    cfg.log_every = 10
    # tqdm progress bar.
    cfg.progress = True
    return cfg


def gradient(x: torch.Tensor) -> torch.Tensor:
    """``[B,H,W] → [B,2,H,W]``: forward differences ``(D_h x, D_v x)``, 0 at the last column / row."""
    zc = torch.zeros_like(x[..., :, :1])
    zr = torch.zeros_like(x[..., :1, :])
    gh = torch.cat([x[..., :, 1:] - x[..., :, :-1], zc], dim=-1)
    gv = torch.cat([x[..., 1:, :] - x[..., :-1, :], zr], dim=-2)
    return torch.stack([gh, gv], dim=-3)


def gradient_adjoint(q: torch.Tensor) -> torch.Tensor:
    """``Dᴴ`` (= −divergence): ``[B,2,H,W] → [B,H,W]``, the exact adjoint of :func:`gradient`."""
    qh, qv = q[..., 0, :, :-1], q[..., 1, :-1, :]          # the entries gradient() can fill
    zc = torch.zeros_like(q[..., 0, :, :1])
    zr = torch.zeros_like(q[..., 0, :1, :])
    out_h = torch.cat([zc, qh], dim=-1) - torch.cat([qh, zc], dim=-1)
    out_v = torch.cat([zr, qv], dim=-2) - torch.cat([qv, zr], dim=-2)
    return out_h + out_v


def gradient_magnitude(g: torch.Tensor) -> torch.Tensor:
    """``sqrt(|g_h|² + |g_v|²)`` per pixel: ``[B,2,H,W] → [B,H,W]`` (real)."""
    return torch.sqrt((g.abs() ** 2).sum(dim=-3))


def tv_norm(x: torch.Tensor) -> torch.Tensor:
    """Isotropic TV per slice (``[B]``)."""
    return gradient_magnitude(gradient(x)).reshape(x.shape[0], -1).sum(dim=1)


class TV(ClassicalSolver):
    """TV-regularised least squares by PDHG: ``TV(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``; ``TV(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "TV"
    default_config = staticmethod(default_config)

    RANGES = {"lam": Range(0), "power_iters": Range(1, 10_000, integer=True),
              "step_ratio": Range(0, 1e6, lo_open=True)}

    def check_config(self, cfg) -> None:
        if not isinstance(cfg.adaptive, bool):
            raise ValueError(f"adaptive must be True or False, got {cfg.adaptive!r}")

    def objective(self, x, y, physics):
        r = physics.forward(x) - y
        return 0.5 * batch_dot(r, r) + float(self.cfg.lam) * tv_norm(x)

    def solve(self, y, physics, support, log):
        values = self.log_values(y, physics)
        H, W = physics.image_shape
        B = int(y.shape[0])
        S = support.to(y.real.dtype)
        x = torch.zeros(B, H, W, dtype=y.dtype, device=y.device)
        norms = operator_norm(physics, x, int(self.cfg.power_iters))
        if not bool(torch.all(norms > 0)):
            raise ValueError("the operator maps every image to 0 (‖A‖ = 0) for some slice; nothing to reconstruct")
        ay = (NORM_SAFETY * norms).reshape((-1,) + (1,) * (y.ndim - 1))       # a, broadcast to y
        ax = ay.reshape(-1, 1, 1)                                               # a, broadcast to x
        d = GRAD_NORM
        radius = float(self.cfg.lam) * d
        r = math.sqrt(float(self.cfg.step_ratio))
        tau = torch.full((B,), 0.99 / math.sqrt(2.0) * r, dtype=torch.float64, device=y.device)
        sigma = torch.full((B,), 0.99 / math.sqrt(2.0) / r, dtype=torch.float64, device=y.device)
        alpha = torch.full((B,), ADAPT_ALPHA, dtype=torch.float64, device=y.device)
        p, q = torch.zeros_like(y), torch.zeros(B, 2, H, W, dtype=y.dtype, device=y.device)
        Kx_p, Kx_q = torch.zeros_like(p), torch.zeros_like(q)                  # K x (tracked, no extra calls)
        KHy = torch.zeros_like(x)                                               # Kᴴ(p, q)
        adaptive = bool(self.cfg.adaptive)
        for k in range(int(self.cfg.num_iters)):
            t_x, s_y, s_x = (_as(tau, x), _as(sigma, y), _as(sigma, x))
            x_new = S * (x - t_x * KHy)
            xt = 2 * x_new - x
            Kxt_p, Kxt_q = physics.forward(xt) / ay, gradient(xt) / d
            p_new = (p + s_y * Kxt_p - s_y * y / ay) / (1 + s_y / ay ** 2)
            q_new = q + _as(sigma, q) * Kxt_q
            q_new = q_new / (gradient_magnitude(q_new) / radius).clamp_min(1.0).unsqueeze(-3) if radius > 0 \
                else torch.zeros_like(q)
            KHy_new = physics.adjoint(p_new) / ax + gradient_adjoint(q_new) / d
            Kx_p_new, Kx_q_new = (Kxt_p + Kx_p) / 2, (Kxt_q + Kx_q) / 2
            if adaptive:
                primal = _norm((x - x_new) / t_x - (KHy - KHy_new))
                dual = torch.sqrt(_norm((p - p_new) / s_y - (Kx_p - Kx_p_new)) ** 2
                                  + _norm((q - q_new) / _as(sigma, q) - (Kx_q - Kx_q_new)) ** 2)
                tau, sigma, alpha = adapt_steps(tau, sigma, alpha, primal, dual)
            x, p, q, KHy, Kx_p, Kx_q = x_new, p_new, q_new, KHy_new, Kx_p_new, Kx_q_new
            log.tick(k, x, values)
        return x, {"operator_norm": norms.tolist(), "tau": tau.tolist(), "sigma": sigma.tolist()}


def _as(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` step size shaped to broadcast against ``like`` ``[B, ...]`` (``like``'s real dtype)."""
    return s.to(like.real.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _norm(t: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(batch_dot(t, t)).to(torch.float64)


def adapt_steps(tau, sigma, alpha, primal, dual):
    """Residual balancing of Goldstein et al. (2015, Alg. 1): when the primal residual is more
    than ``ADAPT_DELTA`` times the dual one, ``τ ← τ/(1−α)``, ``σ ← σ(1−α)``; when it is less
    than ``1/ADAPT_DELTA`` times, the opposite; each adaptation shrinks that slice's ``α`` by
    ``ADAPT_ETA``, so the steps settle.  ``τσ`` is unchanged (``τσ‖K‖² < 1`` holds throughout)."""
    up = primal > ADAPT_DELTA * dual
    down = primal < dual / ADAPT_DELTA
    factor = torch.where(up, 1 / (1 - alpha), torch.where(down, 1 - alpha, torch.ones_like(alpha)))
    alpha = torch.where(up | down, alpha * ADAPT_ETA, alpha)
    return tau * factor, sigma / factor, alpha
