"""The operator contract every forward model implements: :class:`LinearOperator`.

A solver sees the measurement process only through this interface::

    y      = A(x)                  forward            [B, H, W]  -> [B, *measurement_shape]
    x      = A.adjoint(y)          Aᴴ                 [B, *measurement_shape] -> [B, H, W]
    x      = A.normal(x)           AᴴA                [B, H, W]  -> [B, H, W]
    z₀     = A.input_image(y)      solver start       zero-filled Aᴴy (MRI), FBP (CT)
    A.is_complex, A.image_shape, A.modality, A.measurement_shape, A.batch_size, A.input_label
    A.image_support()              real 0/1 [B|1, H, W]: where the images can be non-zero
    A.measurement_mask(y)          real 0/1, broadcastable to y: which entries of y are measured
    A.slice(b)                     the one-slice operator of slice b of a batched operator
    type(A).stack(ops)             one batched operator from B one-slice operators
    A.finite_checks(enabled)       context manager switching the per-call NaN/Inf input check
    A.adjointness_test()           relative |⟨Ax, y⟩ − ⟨x, Aᴴy⟩| for random x, y

Images are ``[B, H, W]`` (complex for MRI, real for CT); a batch of ``B`` slices is one call.
Subclasses implement ``forward`` and ``adjoint`` and set ``modality``, ``is_complex``,
``image_shape`` and ``measurement_shape``; everything else has a default they may override with
something faster or more specific.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["LinearOperator", "MODALITIES", "finite_checks", "check_stackable"]

MODALITIES = ("MRI", "CT")


class LinearOperator(nn.Module):
    """A linear forward model ``A`` acting on batches of 2-D images ``[B, H, W]``.

    Class attributes set by subclasses: ``modality`` (``"MRI"`` | ``"CT"``), ``is_complex``
    (complex images and measurements), ``input_label`` (what :meth:`input_image` is called in
    reports, e.g. ``"zero-filled"`` or ``"FBP"``).  Instance attributes: ``image_shape``
    ``(H, W)``, ``measurement_shape`` (one slice's measurement shape without the batch dim) and
    ``check_finite`` (NaN/Inf check of every input, on by default; see :meth:`finite_checks`).
    """

    modality: str = ""
    is_complex: bool = False
    input_label: str = "Aᴴy"
    image_shape: Tuple[int, int]
    measurement_shape: Tuple[int, ...]

    def __init__(self) -> None:
        super().__init__()
        self.check_finite = True   # NaN/Inf check of every input; see finite_checks

    # ------------------------------------------------------------------ the operator
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x``: ``[B, H, W]`` → ``[B, *measurement_shape]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward (A)")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᴴ y``: ``[B, *measurement_shape]`` → ``[B, H, W]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement adjoint (Aᴴ)")

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``AᴴA x``: ``[B, H, W]`` → ``[B, H, W]`` (default ``adjoint(forward(x))``)."""
        return self.adjoint(self.forward(x))

    def input_image(self, y: torch.Tensor) -> torch.Tensor:
        """The solvers' starting image ``z₀`` from measurements ``y`` (default ``Aᴴ y``)."""
        return self.adjoint(y)

    # ------------------------------------------------------------------ supports
    @property
    def batch_size(self) -> Optional[int]:
        """Number of slices the operator is built for, or ``None`` if it applies to any batch."""
        return None

    def image_support(self) -> torch.Tensor:
        """Real 0/1 ``[B|1, H, W]`` (float32, on the operator's device): pixels where an image
        can be non-zero.  Default: everywhere."""
        return torch.ones(1, *self.image_shape, device=self.device)

    def measurement_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Real 0/1 tensor broadcastable to ``y`` (``y``'s real dtype and device): the entries of
        ``y`` that are measured.  Default: all of them."""
        return torch.ones((1,) * y.ndim, dtype=_real_dtype(y), device=y.device)

    @property
    def device(self) -> torch.device:
        """Device of the operator's buffers (CPU when it has none)."""
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ batching
    def slice(self, b: int) -> "LinearOperator":
        """The operator of slice ``b`` of a batched operator (itself when shared by the batch)."""
        n = self.batch_size
        if n is not None and not -n <= int(b) < n:
            raise ValueError(f"slice {b} out of range for an operator of {n} slices")
        return self

    @classmethod
    def stack(cls, ops: Sequence["LinearOperator"]) -> "LinearOperator":
        """One operator acting on a ``[B, ...]`` batch whose slice ``b`` is ``ops[b]``'s problem.

        Default: the operators must be equal (:meth:`differs_from` returns ``""``) and the first
        is returned; subclasses with per-slice data (e.g. MRI masks and coil maps) override this.
        """
        ops = check_stackable(cls, ops)
        for i, o in enumerate(ops[1:], start=1):
            diff = ops[0].differs_from(o)
            if diff:
                raise ValueError(f"stack_physics: {cls.__name__} operators 0 and {i} differ in "
                                 f"{diff}; a batch of {cls.modality or cls.__name__} slices must "
                                 "share one geometry")
        return ops[0]

    def differs_from(self, other: "LinearOperator") -> str:
        """``""`` if ``other`` is the same operator, else the name of what differs (used by
        :meth:`stack`).  Default: only the identical object is the same."""
        return "" if other is self else "identity"

    # ------------------------------------------------------------------ checks
    def finite_checks(self, enabled: bool) -> ContextManager["LinearOperator"]:
        """Context manager switching the NaN/Inf input check of this operator and its
        sub-operators on or off inside the block (restored on exit)."""
        return finite_checks(self, enabled)

    def adjointness_test(self, generator: Optional[torch.Generator] = None,
                         dtype: Optional[torch.dtype] = None) -> float:
        """Relative adjointness error ``|⟨Ax, y⟩ − ⟨x, Aᴴy⟩| / |⟨Ax, y⟩|`` (0 if both are 0).

        ``x`` ``[B, H, W]`` is standard normal and ``y = A x + w`` with ``w`` standard normal
        rescaled to ``‖w‖ = ‖Ax‖``: the random part tests ``Aᴴ`` on measurements outside the range
        of ``A``, and ``⟨Ax, y⟩ ≈ ‖Ax‖²`` keeps the denominator far from 0, so an adjoint that is
        off by a factor ``1 + ε`` gives ≈ ``ε``; a correct one gives ~machine precision.  Draws
        come from ``generator`` on the CPU (default: seeded with 0) and are moved to the
        operator's device; ``B = batch_size`` (2 for an operator shared by any batch); ``dtype``
        defaults to ``complex128`` (complex operators) / ``float64``.
        """
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        if dtype is None:
            dtype = torch.complex128 if self.is_complex else torch.float64
        B = self.batch_size or 2
        x = torch.randn(B, *self.image_shape, generator=g, dtype=dtype).to(self.device)
        w = torch.randn(B, *self.measurement_shape, generator=g, dtype=dtype).to(self.device)
        with torch.no_grad():
            ax = self.forward(x)
            y = ax + w * (ax.norm() / w.norm())
            lhs = torch.sum(ax.conj() * y)
            rhs = torch.sum(x.conj() * self.adjoint(y))
        denom = max(float(lhs.abs()), float(rhs.abs()))
        return 0.0 if denom == 0 else float((lhs - rhs).abs()) / denom


@contextlib.contextmanager
def finite_checks(root: nn.Module, enabled: bool) -> Iterator[nn.Module]:
    """Set ``check_finite = enabled`` on every :class:`LinearOperator` in ``root.modules()``
    inside the block (restored on exit); anything that is not an ``nn.Module`` is left alone."""
    mods = [m for m in root.modules() if isinstance(m, LinearOperator)] if isinstance(root, nn.Module) else []
    saved = [m.check_finite for m in mods]
    try:
        for m in mods:
            m.check_finite = bool(enabled)
        yield root
    finally:
        for m, v in zip(mods, saved):
            m.check_finite = v


def _real_dtype(t: torch.Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else (t.dtype if t.is_floating_point() else torch.float32)


def check_stackable(cls, ops) -> list:
    """``ops`` as a list after checking it is non-empty and of one operator class ``cls``."""
    ops = list(ops)
    if not ops:
        raise ValueError("stack_physics needs at least one operator")
    kinds = sorted({type(o).__name__ for o in ops})
    if len(kinds) > 1 or not isinstance(ops[0], cls):
        raise ValueError(f"stack_physics: all operators must be of one kind, got {', '.join(kinds)}")
    return ops
