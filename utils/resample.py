"""Resampling a slice to ``N × N`` without changing what it shows (``config.data.image_size``).

* CT (real, image domain): :func:`resize_area` — area (box) averaging, i.e. every output pixel is
  the mean of the input over its footprint (``torch.nn.functional.interpolate(mode="area")``,
  adaptive average pooling; an integer factor is an exact block mean, and a constant image stays
  that constant for any factor).  Up-sampling repeats pixels (the footprint mean of a
  piecewise-constant image).
* MRI (complex): :func:`kspace_resample` — the centred k-space (``physics.mri.fft2c``) is cropped
  to its central ``N × N`` (or zero-padded to it when ``N`` is larger), so the field of view stays
  the same and only the pixel size changes.  With the orthonormal FFT a constant image ``c`` has
  DC ``c·√(HW)``; the result is multiplied by ``N/√(HW)`` so that intensities are preserved (a
  band-limited image — no k-space content outside the central ``N × N`` — is resampled exactly:
  its samples on the ``N × N`` grid).
* Coil maps (:func:`resample_mri`): smooth but not periodic over the field of view, so a k-space
  crop would ring at the borders; they are interpolated bilinearly (:func:`resample_smooth`) at the
  positions of the k-space-resampled image's pixels (the same grid: pixel ``j`` of ``n`` at
  ``(j − n//2)/n`` of the field of view), and where the maps vanish (ESPIRiT maps are zero outside
  the object) they stay zero outside the support sampled at the same positions (nearest), so the
  operator's image support follows the object.

A non-square slice is first centre-padded to a square (CT with its minimum value, i.e. air; MRI
images and maps with zeros), so resampling never changes the aspect ratio.

Pure functions of numpy arrays / torch tensors; no project state.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

__all__ = ["resize_area", "kspace_resample", "resample_smooth", "resample_mri", "centre_crop_or_pad"]


def resize_area(img: np.ndarray, size: int) -> np.ndarray:
    """Area (box-average) resampling of a real 2-D array to ``size × size`` (float64; a non-square
    array is first centre-padded to a square with its minimum)."""
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(img), dtype=torch.float64)
    if t.shape[0] != t.shape[1]:
        n, low = max(t.shape), t.min()
        t = centre_crop_or_pad(t - low, n, n) + low
    t = t[None, None]
    return F.interpolate(t, size=(int(size), int(size)), mode="area")[0, 0].numpy()


def centre_crop_or_pad(k: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The central ``h × w`` of ``k`` ``[..., H, W]`` (zero-padded where ``h > H`` or ``w > W``),
    keeping index ``H//2`` at ``h//2`` (the DC of a centred FFT stays the DC)."""
    H, W = k.shape[-2:]
    out = k.new_zeros((*k.shape[:-2], h, w))
    # source and destination windows per axis: offsets chosen so that H//2 → h//2
    def window(n_in: int, n_out: int):
        shift = n_out // 2 - n_in // 2          # destination index of source index 0
        src0, dst0 = max(0, -shift), max(0, shift)
        length = min(n_in - src0, n_out - dst0)
        return slice(src0, src0 + length), slice(dst0, dst0 + length)

    (sy, dy), (sx, dx) = window(H, h), window(W, w)
    out[..., dy, dx] = k[..., sy, sx]
    return out


def kspace_resample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Complex image(s) ``[..., H, W]`` → ``[..., size, size]``: centre crop / zero-pad of the
    centred k-space, times ``size/√(HW)`` (same field of view, same intensities; module docstring)."""
    from physics.mri import fft2c, ifft2c

    if not torch.is_complex(x):
        raise ValueError(f"kspace_resample needs a complex image, got dtype {x.dtype}")
    if x.shape[-2] != x.shape[-1]:                  # zero-pad to a square first (aspect ratio kept)
        n = max(x.shape[-2:])
        x = centre_crop_or_pad(x, n, n)
    H, W = x.shape[-2:]
    if (H, W) == (size, size):
        return x
    k = centre_crop_or_pad(fft2c(x), int(size), int(size))
    return ifft2c(k) * (float(size) / float(np.sqrt(H * W)))


def _grid(n: int, size: int, dtype) -> torch.Tensor:
    """``grid_sample`` coordinates (align_corners=True) of the ``size`` output pixels in an axis of
    ``n`` input pixels: output ``j`` sits at input index ``n//2 + (j − size//2)·n/size``."""
    idx = n // 2 + (torch.arange(size, dtype=torch.float64) - size // 2) * (n / size)
    return (2 * idx / max(n - 1, 1) - 1).to(dtype)


def resample_smooth(a: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """``a`` ``[..., H, W]`` (real or complex) interpolated (``mode``: ``"bilinear"`` |
    ``"nearest"``) at the pixel positions of a ``size × size`` grid of the same field of view, in the
    convention of :func:`kspace_resample`; values beyond the border are the border's."""
    import torch.nn.functional as F

    H, W = a.shape[-2:]
    lead = a.shape[:-2]
    real = torch.view_as_real(a).movedim(-1, -3) if torch.is_complex(a) else a.unsqueeze(-3)
    flat = real.reshape(-1, real.shape[-3], H, W)
    dtype = flat.dtype if flat.is_floating_point() else torch.float64
    gy, gx = _grid(H, size, dtype), _grid(W, size, dtype)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None].expand(flat.shape[0], -1, -1, -1)
    out = F.grid_sample(flat.to(dtype), grid, mode=mode, padding_mode="border", align_corners=True)
    out = out.reshape(*lead, real.shape[-3], size, size)
    if torch.is_complex(a):
        return torch.view_as_complex(out.movedim(-3, -1).contiguous()).to(a.dtype)
    return out.squeeze(-3).to(a.dtype)


def resample_mri(x: torch.Tensor, maps: Optional[torch.Tensor], size: int
                 ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """An MRI slice ``x`` ``[H,W]`` and its coil maps ``[C,H,W]`` (or ``None``) at ``size × size``
    (module docstring); dtypes kept."""
    xr = kspace_resample(x, size).to(x.dtype)
    if maps is None:
        return xr, None
    if maps.shape[-2] != maps.shape[-1]:            # zero-padded like the image
        n = max(maps.shape[-2:])
        maps = centre_crop_or_pad(maps, n, n)
    mr = resample_smooth(maps, size)
    energy = (maps.abs() ** 2).sum(0)
    if bool((energy <= 0).any()):                   # maps with a support: keep it (nearest samples)
        support = resample_smooth((energy > 0).double(), size, mode="nearest") > 0.5
        mr = mr * support.to(mr.real.dtype)
    return xr, mr
