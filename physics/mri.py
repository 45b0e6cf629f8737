"""Multi-coil Cartesian MRI forward model.

Conventions
-----------
* Images are ``[B, H, W]`` complex tensors (``torch.complex64`` or ``torch.complex128``).
* Multi-coil k-space is ``[B, C, H, W]`` complex.
* The Fourier transform is the *centred orthonormal* 2-D DFT over the last two dims
  (fastMRI convention)::

      fft2c(x)  = fftshift( FFT2_ortho( ifftshift(x) ) )
      ifft2c(k) = fftshift( IFFT2_ortho( ifftshift(k) ) )

  It is unitary (Parseval: ``‖fft2c(x)‖ = ‖x‖``), ``ifft2c`` is its exact inverse *and*
  adjoint for even and odd sizes, and the DC coefficient sits at pixel ``(H//2, W//2)``.
  This matches ``sigpy.fft(..., center=True)``, so k-space produced here can be handed to
  sigpy (ESPIRiT) directly.

Forward model (per batch element ``b``; ``M`` the 0/1 (or weighting) mask, ``S_c`` the coil
sensitivity maps, ``F = fft2c``)::

      A x   = [ M · F(S_c · x) ]_{c=1..C}                       [B,H,W]   -> [B,C,H,W]
      Aᴴ y  = Σ_c conj(S_c) · F⁻¹(M · y_c)                        [B,C,H,W] -> [B,H,W]
      AᴴA x = Σ_c conj(S_c) · F⁻¹(M² · F(S_c · x))                 [B,H,W]   -> [B,H,W]

Single-coil MRI is the special case ``C = 1, S_1 = 1``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .base import LinearOperator, check_stackable

__all__ = ["fft2c", "ifft2c", "rss", "MultiCoilMRI"]

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dims.

    ``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``, shifts over dims ``(-2, -1)``.
    Shape ``[..., H, W] -> [..., H, W]`` (complex). Unitary; DC at ``(H//2, W//2)``.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"fft2c expects a torch.Tensor, got {type(x).__name__}; "
                         "convert with torch.as_tensor(...) first.")
    if x.ndim < 2:
        raise ValueError(f"fft2c needs at least 2 dims [..., H, W], got shape {tuple(x.shape)}.")
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D inverse FFT over the last two dims.

    ``ifft2c(k) = fftshift(ifft2(ifftshift(k), norm="ortho"))``. Exact inverse and adjoint of
    :func:`fft2c` for any (even or odd) ``H, W``. Shape ``[..., H, W] -> [..., H, W]``.
    """
    if not isinstance(k, torch.Tensor):
        raise ValueError(f"ifft2c expects a torch.Tensor, got {type(k).__name__}; "
                         "convert with torch.as_tensor(...) first.")
    if k.ndim < 2:
        raise ValueError(f"ifft2c needs at least 2 dims [..., H, W], got shape {tuple(k.shape)}.")
    k = torch.fft.ifftshift(k, dim=_DIMS)
    k = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)


def rss(coil_images: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Root-sum-of-squares coil combination: ``sqrt(Σ_c |x_c|²)`` along ``dim``.

    ``[B, C, H, W] -> [B, H, W]`` for the default ``dim=1``; the result is real.
    """
    if not isinstance(coil_images, torch.Tensor):
        coil_images = torch.as_tensor(np.asarray(coil_images))
    return torch.sqrt(torch.sum(coil_images.abs() ** 2, dim=dim))


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}.")


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf values; clean the data (e.g. "
                         "torch.nan_to_num) or check the upstream computation that produced it.")


class MultiCoilMRI(LinearOperator):
    """Cartesian (multi-coil) MRI operator ``A x = M · fft2c(S · x)`` (a :class:`LinearOperator`).

    Args:
        mask: sampling mask, real, ``[H, W]`` (shared by the batch) or ``[B, H, W]``
            (one per batch element; ``B`` must then match the input batch, or be 1).
            Usually 0/1; non-binary weights are allowed (then ``AᴴA`` uses ``M²``).
        sens_maps: coil sensitivities, complex, ``[C, H, W]`` or ``[B, C, H, W]``;
            ``None`` → single coil (``C = 1``, ``S = 1``).

    Attributes:
        modality: ``"MRI"``; is_complex: ``True``; input_label: ``"zero-filled"``
            (``input_image(y)`` is the zero-filled, coil-combined ``Aᴴ y``).
        image_shape (tuple): ``(H, W)``; measurement_shape: ``(C, H, W)``.
        num_coils (int): ``C``.

    Mask and maps are registered as buffers (moved by ``.to``) and are additionally cast to the
    input's device/dtype on the fly, so the operator works for ``complex64`` and ``complex128``
    inputs on any device.
    """

    modality = "MRI"
    is_complex = True
    input_label = "zero-filled"

    def __init__(self, mask, sens_maps=None):
        super().__init__()
        mask = _as_tensor(mask, "mask")
        if mask.is_complex():
            raise ValueError("mask must be real (0/1 or real weights), got a complex tensor; "
                             "pass mask.real or mask.abs().")
        if mask.ndim not in (2, 3):
            raise ValueError(f"mask must have shape [H, W] or [B, H, W], got shape "
                             f"{tuple(mask.shape)}.")
        if mask.dtype == torch.bool or not mask.is_floating_point():
            mask = mask.to(torch.float32)
        _check_finite(mask, "mask")
        H, W = int(mask.shape[-2]), int(mask.shape[-1])

        if sens_maps is None:
            maps = None
            num_coils = 1
        else:
            maps = _as_tensor(sens_maps, "sens_maps")
            if not maps.is_complex():
                raise ValueError("sens_maps must be complex (complex64/complex128), got dtype "
                                 f"{maps.dtype}; convert with .to(torch.complex64) if the maps "
                                 "are real.")
            if maps.ndim not in (3, 4):
                raise ValueError(f"sens_maps must have shape [C, H, W] or [B, C, H, W], got "
                                 f"shape {tuple(maps.shape)}.")
            if tuple(maps.shape[-2:]) != (H, W):
                raise ValueError(f"sens_maps spatial shape {tuple(maps.shape[-2:])} does not "
                                 f"match mask shape {(H, W)}; both must be [.., H, W] with the "
                                 "same H, W.")
            _check_finite(maps, "sens_maps")
            num_coils = int(maps.shape[-3])
            if mask.ndim == 3 and maps.ndim == 4:
                bm, bs = mask.shape[0], maps.shape[0]
                if bm != bs and 1 not in (bm, bs):
                    raise ValueError(f"mask batch size {bm} and sens_maps batch size {bs} "
                                     "differ; use equal batch sizes, or 1 to share.")
        self.register_buffer("mask", mask)
        # Maps are stored as a real view [..., 2] so that Module.to(<real or complex dtype>)
        # cannot silently drop their imaginary part (torch casts complex buffers to a real
        # dtype otherwise); ``sens_maps`` gives the complex view back.
        self.register_buffer("_maps_ri", None if maps is None
                             else torch.view_as_real(maps.resolve_conj()).contiguous())
        self.image_shape: Tuple[int, int] = (H, W)
        self.num_coils = num_coils
        self.measurement_shape = (num_coils, H, W)

    @property
    def sens_maps(self) -> Optional[torch.Tensor]:
        """Coil maps ``[C, H, W]`` or ``[B, C, H, W]`` complex (``None`` for single coil)."""
        ri = self._maps_ri
        if ri is None:
            return None
        if ri.is_complex():                      # after Module.to(complex dtype): imag is 0
            ri = ri.real
        if ri.dtype not in (torch.float32, torch.float64):
            ri = ri.to(torch.float32)
        return torch.view_as_complex(ri.contiguous())

    # ------------------------------------------------------------------ helpers
    def _batch_of(self, t: Optional[torch.Tensor], leading_ndim: int) -> Optional[int]:
        if t is None or t.ndim == leading_ndim:
            return None
        return int(t.shape[0])

    def _check_batch(self, B: int, what: str) -> None:
        for name, buf, nd in (("mask", self.mask, 2), ("sens_maps", self.sens_maps, 3)):
            bb = self._batch_of(buf, nd)
            if bb is not None and bb not in (1, B):
                raise ValueError(f"{what} has batch size {B} but the operator's {name} has batch "
                                 f"size {bb}; build the operator with a matching [B, ...] {name} "
                                 "or a shared (unbatched) one.")

    def _mask_for(self, ref: torch.Tensor) -> torch.Tensor:
        """Mask as ``[B|1, 1, H, W]`` real, on ``ref``'s device with ``ref``'s real dtype."""
        real_dtype = torch.float64 if ref.dtype == torch.complex128 else torch.float32
        m = self.mask.real if self.mask.is_complex() else self.mask
        m = m.to(device=ref.device, dtype=real_dtype)
        return m.reshape((-1 if m.ndim == 3 else 1), 1, *self.image_shape)

    def _maps_for(self, ref: torch.Tensor) -> Optional[torch.Tensor]:
        """Maps as ``[B|1, C, H, W]`` on ``ref``'s device/dtype (``None`` for single coil)."""
        if self.sens_maps is None:
            return None
        s = self.sens_maps.to(device=ref.device, dtype=ref.dtype)
        return s if s.ndim == 4 else s.unsqueeze(0)

    def _check_input(self, t, name: str, ndim: int, layout: str) -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got "
                             f"{type(t).__name__}.")
        if not t.is_complex():
            raise ValueError(f"{name} must be complex (complex64/complex128) with shape {layout}, "
                             f"got real dtype {t.dtype}; MRI images/k-space are complex — use "
                             "torch.complex(x, torch.zeros_like(x)) or utils.complex.from_channels.")
        if t.ndim != ndim:
            raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got shape "
                             f"{tuple(t.shape)}; add a batch dim with .unsqueeze(0) if needed.")
        if tuple(t.shape[-2:]) != self.image_shape:
            raise ValueError(f"{name} spatial shape {tuple(t.shape[-2:])} does not match the "
                             f"operator's image_shape {self.image_shape} (from the mask).")
        if t.dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"{name} dtype {t.dtype} unsupported; use complex64 or complex128.")
        if self.check_finite:
            _check_finite(t, name)
        self._check_batch(int(t.shape[0]), name)
        return t

    # --------------------------------------------------------------- operators
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A x = M · fft2c(S_c · x)``: ``[B, H, W]`` complex → ``[B, C, H, W]`` complex."""
        x = self._check_input(x, "x (image)", 3, "[B, H, W]")
        maps = self._maps_for(x)
        coil_imgs = x.unsqueeze(1) if maps is None else maps * x.unsqueeze(1)
        return self._mask_for(x) * fft2c(coil_imgs)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Aᴴ y = Σ_c conj(S_c) · ifft2c(M · y_c)``: ``[B, C, H, W]`` → ``[B, H, W]``."""
        y = self._check_input(y, "y (k-space)", 4, "[B, C, H, W]")
        if int(y.shape[1]) != self.num_coils:
            raise ValueError(f"y (k-space) has {int(y.shape[1])} coils (dim 1) but the operator "
                             f"has {self.num_coils}; k-space must be [B, C, H, W] with "
                             f"C={self.num_coils}.")
        imgs = ifft2c(self._mask_for(y) * y)
        maps = self._maps_for(y)
        if maps is None:
            return imgs[:, 0]
        return torch.sum(maps.conj() * imgs, dim=1)

    # ------------------------------------------------------------ contract extras
    @property
    def batch_size(self) -> Optional[int]:
        """``B`` of a per-slice ``[B, H, W]`` mask or ``[B, C, H, W]`` maps (``None``: shared)."""
        sizes = {int(t.shape[0]) for t, nd in ((self.mask, 2), (self._maps_ri, 4))
                 if t is not None and t.ndim > nd} - {1}
        return max(sizes) if sizes else None

    def image_support(self) -> torch.Tensor:
        """``[B|1, H, W]`` float32, 1 where ``Σ_c |S_c|² > 0`` (ESPIRiT maps vanish outside the
        object); all ones for single coil."""
        maps = self.sens_maps
        if maps is None:
            return super().image_support()
        support = (maps.abs().square().sum(dim=-3) > 0).to(torch.float32)
        return support if support.ndim == 3 else support.unsqueeze(0)

    def measurement_mask(self, y: torch.Tensor) -> torch.Tensor:
        """The sampling pattern ``[B|1, 1, H, W]`` (1 where ``M ≠ 0``; the mask itself for a 0/1
        mask), on ``y``'s device with ``y``'s real dtype, shared by every coil."""
        m = self._mask_for(y)
        return (m != 0).to(m.dtype)

    def slice(self, b: int) -> "MultiCoilMRI":
        """The one-slice operator of slice ``b`` (mask ``[H, W]``, maps ``[C, H, W]``)."""
        if self.batch_size is None:
            return self
        super().slice(b)                                       # range check

        def take(t, nd):
            return t if t is None or t.ndim == nd else t[0] if t.shape[0] == 1 else t[b]

        op = MultiCoilMRI(take(self.mask, 2), take(self.sens_maps, 3))
        op.check_finite = self.check_finite
        return op

    @classmethod
    def stack(cls, ops: Sequence["MultiCoilMRI"]) -> "MultiCoilMRI":
        """Masks concatenated to ``[B, H, W]``, coil maps to ``[B, C, H, W]`` (every operator
        contributes its own slices: one, or ``batch_size``); all must share ``H, W`` and ``C``."""
        ops = check_stackable(cls, ops)
        for what, values in (("image_shape", [o.image_shape for o in ops]),
                             ("num_coils", [o.num_coils for o in ops])):
            if len(set(values)) > 1:
                raise ValueError(f"stack_physics: MRI operators differ in {what} ({values})")
        singles = [o.slice(b) for o in ops for b in range(o.batch_size or 1)]
        masks = torch.stack([o.mask.reshape(o.image_shape) for o in singles])
        maps = [o.sens_maps for o in singles]
        if any(m is None for m in maps):
            if not all(m is None for m in maps):
                raise ValueError("stack_physics: mix of single-coil and multi-coil MRI operators")
            return cls(masks)
        return cls(masks, torch.stack([m.reshape(m.shape[-3:]) for m in maps]))

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, num_coils={self.num_coils}, "
                f"mask_shape={tuple(self.mask.shape)}")
