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

``conjugate=False`` replaces ``⟨u, v⟩`` by the unconjugated bilinear form ``Σ u·v`` (complex α, β):
the arithmetic of the official DDS code's CG (its products are ``r.view(1, -1) @ r.view(1, -1).T``),
kept only for :class:`solvers.dds.DDS`'s ``compat`` mode. For complex Hermitian ``M`` it is not the
conjugate-gradient method (it does not minimise the ``M``-norm of the error); for real tensors both
forms are the same. ``atol`` freezes an element once ``|Σ r·r̄|^½`` (resp. ``|Σ r·r|^½``) ``≤ atol``,
DDS's absolute stopping rule.

``callback(k, x)`` (optional) is called after iteration ``k`` (0-based) with the current iterate
(the tensor itself: do not modify it); it does not change the iteration. CG-SENSE
(:mod:`solvers.cgsense`) logs its iterates with it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["conjugate_gradient", "batch_dot", "bilinear_dot"]


def _real_view(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if torch.is_complex(x) else x


def batch_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Re⟨u, v⟩ = Re Σ conj(u)·v per batch element (dim 0); returns a real ``[B]`` tensor."""
    ur, vr = _real_view(u), _real_view(v)
    return (ur * vr).reshape(ur.shape[0], -1).sum(dim=1)


def bilinear_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ u·v (no conjugate) per batch element (dim 0); complex ``[B]`` for complex inputs."""
    return (u * v).reshape(u.shape[0], -1).sum(dim=1)


def _bcast(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a ``[B]`` scalar per element to broadcast against ``like`` ``[B, ...]`` (real
    scalars in ``like``'s real dtype, complex ones in its dtype)."""
    dtype = like.dtype if s.is_complex() or not torch.is_complex(like) else like.real.dtype
    return s.reshape((-1,) + (1,) * (like.ndim - 1)).to(dtype)


def conjugate_gradient(apply_A: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       x0: torch.Tensor | None = None, num_iters: int = 5, tol: float = 0.0,
                       check_every: int = 5, conjugate: bool = True, atol: float = 0.0,
                       callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Run batched CG on ``apply_A(x) = b`` starting from ``x0`` (zeros if ``None``).

    Args:
        apply_A: the Hermitian positive-definite operator, ``[B, ...] → [B, ...]`` (batch elements
            must not interact).
        b: right-hand side ``[B, ...]`` real or complex.
        x0: initial guess, same shape/dtype as ``b`` (not modified).
        num_iters: maximum number of CG iterations (``0`` returns ``x0``).
        tol: relative tolerance on ``‖b − A x‖ / ‖b‖`` per element; ``0`` disables the test.
        check_every: how often (iterations) to host-sync for the all-converged early exit.
        conjugate: ``False``: DDS's unconjugated products (see the module docstring).
        atol: absolute tolerance on the residual norm; ``0`` disables the test.
        callback: ``callback(k, x)`` after every iteration ``k`` (0-based) that runs.

    Returns:
        The approximate solution ``[B, ...]``.
    """
    if num_iters < 0:
        raise ValueError(f"num_iters must be >= 0, got {num_iters}")
    if tol < 0 or atol < 0:
        raise ValueError(f"tol and atol must be >= 0, got {tol}, {atol}")
    if x0 is None:
        x0 = torch.zeros_like(b)
    if x0.shape != b.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} does not match b shape {tuple(b.shape)}")
    x = x0.clone()
    if num_iters == 0:
        return x
    dot = batch_dot if conjugate else bilinear_dot
    r = b - apply_A(x)
    p = r.clone()
    rs = dot(r, r)
    # Freeze threshold on |⟨r, r⟩|: the requested tolerances, but never below a round-off floor,
    # 10·machine-ε relative to the larger of ‖b‖ and the first residual ‖b − A x₀‖ (a start x₀
    # with a large component in the null space of a semi-definite A such as AᴴA leaves a residual
    # whose round-off exceeds ε‖b‖): past it, further steps divide round-off by round-off and can
    # blow the iterate up.  For the same reason a direction p whose curvature ⟨p, Ap⟩/⟨p, p⟩ has
    # fallen to round-off relative to the largest curvature seen (p in the null space) freezes too.
    eps = torch.finfo(rs.real.dtype).eps
    scale = torch.maximum(batch_dot(b, b), batch_dot(r, r))
    thresh = torch.maximum(max(float(tol), 10.0 * eps) ** 2 * scale,
                           float(tol) ** 2 * batch_dot(b, b)).clamp_min(float(atol) ** 2)
    check_every = max(1, int(check_every))
    one, zero = torch.ones_like(rs), torch.zeros_like(rs)
    max_curv = torch.zeros_like(rs.real)
    for k in range(num_iters):
        Ap = apply_A(p)
        pAp = dot(p, Ap)
        if conjugate:
            curv = pAp / batch_dot(p, p).clamp_min(torch.finfo(max_curv.dtype).tiny)
            max_curv = torch.maximum(max_curv, curv)
            curved = (pAp > 0) & (curv > 100.0 * eps * max_curv)
        else:
            curved = pAp != 0
        active = (rs.abs() > thresh) & curved
        alpha = torch.where(active, rs / torch.where(active, pAp, one), zero)
        x = x + _bcast(alpha, x) * p
        r = r - _bcast(alpha, r) * Ap
        rs_new = dot(r, r)
        beta = torch.where(active, rs_new / torch.where(active, rs, one), zero)
        p = r + _bcast(beta, p) * p
        # frozen elements keep their old residual norm so they stay frozen
        rs = torch.where(active, rs_new, rs)
        if callback is not None:
            callback(k, x)
        if (tol > 0 or atol > 0) and (k + 1) % check_every == 0 and k + 1 < num_iters:
            if not bool((rs.abs() > thresh).any()):
                break
    return x
