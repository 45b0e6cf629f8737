"""Batched conjugate gradient (CG) for Hermitian positive-definite operators.

Solves ``M x = b`` independently for every batch element, where ``M`` is a linear operator given as
a callable ``apply_A`` that is Hermitian positive (semi-)definite on the images of one batch element
(e.g. ``M = I + γ AᴴA`` or ``M = AᴴA`` for an MRI/CT forward operator ``A``).

Tensors are ``[B, ...]`` (typically ``[B, H, W]``), real or complex. All inner products are taken
per batch element over all non-batch dimensions, so a batch is ``B`` independent CG runs sharing
the operator calls:

    r₀ = b − M x₀,  p₀ = r₀
    αₖ = ⟨rₖ, rₖ⟩ / Re⟨pₖ, M pₖ⟩
    xₖ₊₁ = xₖ + αₖ pₖ,  rₖ₊₁ = rₖ − αₖ M pₖ
    βₖ = ⟨rₖ₊₁, rₖ₊₁⟩ / ⟨rₖ, rₖ⟩,  pₖ₊₁ = rₖ₊₁ + βₖ pₖ

with ``⟨u, v⟩ = Σ conj(u)·v`` (for Hermitian ``M``, ``⟨p, Mp⟩`` is real; its real part is used).

Stopping: at most ``num_iters`` iterations. With ``tol > 0`` an element is *frozen* (its α and β
are set to 0, so its iterate no longer changes) once ``‖rₖ‖ ≤ tol·‖b‖``; this is evaluated on the
device without host synchronisation. Every ``check_every`` iterations a single host sync checks
whether *all* elements are frozen and, if so, stops early. With ``tol = 0`` the loop runs exactly
``num_iters`` iterations without any host synchronisation (as in DDS, which uses a fixed 5).
Elements whose residual is at round-off level (``‖rₖ‖ ≤ 10·ε_mach·‖b‖``, ε of the real dtype) or
whose curvature ``⟨p, Mp⟩`` is not positive are always frozen, so a solved / degenerate element
(e.g. ``b = 0``, or the singular normal equations ``AᴴA x = Aᴴy`` after convergence) never produces
NaN or a blow-up.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["conjugate_gradient", "batch_dot"]


def _real_view(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if torch.is_complex(x) else x


def batch_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Re⟨u, v⟩ = Re Σ conj(u)·v per batch element (dim 0); returns a real ``[B]`` tensor."""
    ur, vr = _real_view(u), _real_view(v)
    return (ur * vr).reshape(ur.shape[0], -1).sum(dim=1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` real scalar per element to broadcast against ``like`` ``[B, ...]``."""
    return s.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.real.dtype if torch.is_complex(like)
                                                         else like.dtype)


def conjugate_gradient(apply_A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, num_iters: int = 5, tol: float = 0.0,
                       check_every: int = 5) -> torch.Tensor:
    """Run batched CG on ``apply_A(x) = b`` starting from ``x0`` (zeros if ``None``).

    Args:
        apply_A: the Hermitian positive-definite operator, ``[B, ...] → [B, ...]`` (batch elements
            must not interact).
        b: right-hand side ``[B, ...]`` real or complex.
        x0: initial guess, same shape/dtype as ``b`` (not modified).
        num_iters: maximum number of CG iterations (``0`` returns ``x0``).
        tol: relative tolerance on ``‖b − A x‖ / ‖b‖`` per element; ``0`` disables the test.
        check_every: how often (iterations) to host-sync for the all-converged early exit.

    Returns:
        The approximate solution ``[B, ...]``.
    """
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if x0 is None:
        x0 = torch.zeros_like(b)
    if x0.shape != b.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} does not match b shape {tuple(b.shape)}")
    x = x0.clone()
    if num_iters == 0:
        return x
    r = b - apply_A(x)
    p = r.clone()
    rs = batch_dot(r, r)
    # Freeze threshold on ‖r‖²: the requested tolerance, but never below a round-off floor
    # (10·machine-ε relative): past it, further steps on a (semi-)definite operator such as AᴴA
    # divide round-off by round-off and can blow the iterate up.
    eps = torch.finfo(rs.dtype).eps
    thresh = max(float(tol), 10.0 * eps) ** 2 * batch_dot(b, b)
    check_every = max(1, int(check_every))
    for k in range(num_iters):
        Ap = apply_A(p)
        pAp = batch_dot(p, Ap)
        active = (rs > thresh) & (pAp > 0)
        alpha = torch.where(active, rs / torch.where(active, pAp, torch.ones_like(pAp)),
                            torch.zeros_like(rs))
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * Ap
        rs_new = batch_dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)),
                           torch.zeros_like(rs))
        p = r + _bcast(beta, p) * p
        # frozen elements keep their old residual norm so they stay frozen
        rs = torch.where(active, rs_new, rs)
        if tol > 0 and (k + 1) % check_every == 0 and k + 1 < num_iters:
            if not bool(((rs > thresh)).any()):
                break
    return x
