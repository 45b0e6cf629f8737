"""Complex <-> channel packing shared by every network wrapper.

Images in this project are ``[B, H, W]``: complex for MRI, real for CT.  Networks see real
``[B, C, H, W]`` tensors:

* complex ``[B, H, W]``  <->  ``[B, 2, H, W]`` with channels (real, imag);
* real    ``[B, H, W]``  <->  ``[B, 1, H, W]``.
"""
from __future__ import annotations

import torch


def to_channels(x: torch.Tensor) -> torch.Tensor:
    """``[B,H,W]`` complex → ``[B,2,H,W]`` (real, imag); real ``[B,H,W]`` → ``[B,1,H,W]``."""
    if x.ndim != 3:
        raise ValueError(f"expected an image batch [B, H, W], got shape {tuple(x.shape)}")
    if torch.is_complex(x):
        return torch.stack((x.real, x.imag), dim=1)
    return x.unsqueeze(1)


def from_channels(x: torch.Tensor, is_complex: bool) -> torch.Tensor:
    """Inverse of :func:`to_channels`: ``[B,2,H,W]`` → complex ``[B,H,W]``; ``[B,1,H,W]`` → real."""
    if x.ndim != 4:
        raise ValueError(f"expected a channel batch [B, C, H, W], got shape {tuple(x.shape)}")
    if is_complex:
        if x.shape[1] != 2:
            raise ValueError(f"complex images need 2 channels (real, imag), got {x.shape[1]}")
        return torch.complex(x[:, 0].contiguous(), x[:, 1].contiguous())
    if x.shape[1] != 1:
        raise ValueError(f"real images need 1 channel, got {x.shape[1]}")
    return x[:, 0]
