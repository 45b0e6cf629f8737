"""Frozen diffusion denoiser wrapping an ADM ``UNetModel`` for ``[B,H,W]`` images
(built from a registry name or a checkpoint file by :func:`models.priors.load_prior`).

Data convention (as DDS; nothing is rescaled here):

* CT: real ``[B,H,W]`` slices in [0, 1] (HU window) are fed as is, as 1 channel.
* MRI: complex ``[B,H,W]`` images normalised so that the magnitude is about ≤ 1 are fed as 2
  channels (real, imag) via ``utils.complex.to_channels``; ε̂ comes back the same way.
* ``t`` is the raw step index 0…T−1 (int or ``[B]`` tensor), handed to the network as a float
  tensor ``[B]`` with no rescaling (the ADM timestep embedding is [cos, sin] of the raw value).
* With a learned variance (``learn_sigma``) the network outputs 2·C channels and ε̂ is the first
  C of them (channel 0 for CT, channels 0–1 = real, imag for MRI).

Maths (see ``models/diffusion.py``):

* ``eps(x_t, t)``      = ε̂_θ(x_t, t) (``[B,H,W]``, same dtype as ``x_t``);
* ``forward(x_t, t)``  = Tweedie x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t;
* ``purify(x, t_start, num_steps, eta)``: x_{t_start} = √ᾱ x + √(1−ᾱ) ε, then one Tweedie step
  (``num_steps=1``) or DDS/DDIM updates over ``respaced_timesteps(num_steps, T, t_start)``
  (from ``t_start`` down to 0, then x̂₀).

The network's parameters are frozen (``requires_grad=False``, always in eval mode), but
``eps``/``forward`` do not disable autograd, so gradients w.r.t. the input can flow when
needed; ``purify`` runs under ``torch.no_grad()`` unless ``grad=True``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from models.diffusion import DiffusionSchedule, respaced_timesteps
from utils.complex import from_channels, to_channels
from utils.rng import NoiseStreams

__all__ = ["Denoiser"]


class Denoiser(nn.Module):
    """ε-prediction diffusion prior on ``[B,H,W]`` images (complex for MRI, real for CT).

    Args:
        unet: network ``unet(x [B,C_in,H,W], t [B] float) -> [B,C_out,H,W]``.
        schedule: :class:`DiffusionSchedule` (default: linear 1e-4 → 0.02, 1000 steps).
        is_complex: images are complex (2 channels) rather than real (1 channel).
        learn_sigma: the network outputs 2·C channels; ε̂ = the first C.
        autocast_bf16: run the network under ``torch.autocast(dtype=torch.bfloat16)``
            (output cast back to float32).
    """

    def __init__(self, unet: nn.Module, schedule: DiffusionSchedule | None = None,
                 is_complex: bool = False, learn_sigma: bool = True,
                 autocast_bf16: bool = False):
        super().__init__()
        self.unet = unet
        self.schedule = schedule if schedule is not None else DiffusionSchedule()
        self.is_complex = bool(is_complex)
        self.learn_sigma = bool(learn_sigma)
        self.autocast_bf16 = bool(autocast_bf16)
        self.channels = 2 if self.is_complex else 1
        self.unet.eval()
        self.unet.requires_grad_(False)

    def train(self, mode: bool = True):  # the prior stays frozen in eval mode
        super().train(False)
        return self

    # ------------------------------------------------------------------ helpers
    def _net_dtype(self) -> torch.dtype:
        for p in self.unet.parameters():
            return p.dtype if p.dtype.is_floating_point else torch.float32
        return torch.float32

    def _net_device(self, fallback: torch.device) -> torch.device:
        for p in self.unet.parameters():
            return p.device
        return fallback

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"Denoiser expects images [B, H, W], got {shape}; use "
                             f"x.unsqueeze(0) for a single image")
        if self.is_complex and not torch.is_complex(x):
            raise ValueError("this prior is complex (MRI): pass a complex [B,H,W] image")
        if not self.is_complex and torch.is_complex(x):
            raise ValueError("this prior is real (CT): pass a real [B,H,W] image")

    @staticmethod
    def _t_vector(t, batch: int, device) -> torch.Tensor:
        if isinstance(t, torch.Tensor):
            t = t.detach().reshape(-1).to(device=device, dtype=torch.float32)
            if t.numel() == 1:
                t = t.expand(batch)
            elif t.numel() != batch:
                raise ValueError(f"t has {t.numel()} entries but the batch has {batch}")
            return t.contiguous()
        return torch.full((batch,), float(int(t)), dtype=torch.float32, device=device)

    # ------------------------------------------------------------------ model calls
    def eps(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """ε̂_θ(x_t, t) as a ``[B,H,W]`` image of ``x_t``'s dtype."""
        self._check_input(x_t)
        h = to_channels(x_t)
        out_real_dtype = h.dtype
        device = self._net_device(x_t.device)
        h = h.to(device=device, dtype=self._net_dtype())
        tt = self._t_vector(t, x_t.shape[0], device)
        ctx = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
               if self.autocast_bf16 else contextlib.nullcontext())
        with ctx:
            out = self.unet(h, tt)
        C = self.channels
        expected = 2 * C if self.learn_sigma else C
        if out.ndim != 4 or out.shape[1] != expected:
            raise ValueError(f"network output has shape {tuple(out.shape)}; expected {expected} "
                             f"channels (is_complex={self.is_complex}, "
                             f"learn_sigma={self.learn_sigma})")
        eps = out[:, :C].to(device=x_t.device, dtype=out_real_dtype)
        return from_channels(eps, self.is_complex)

    def forward(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """Tweedie estimate x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t."""
        return self.schedule.tweedie_x0(x_t, self.eps(x_t, t), t)

    def purify(self, x: torch.Tensor, t_start: int, num_steps: int = 1, eta: float = 0.0,
               noise: NoiseStreams | torch.Generator | None = None, variant: str = "dds",
               grad: bool = False) -> torch.Tensor:
        """Forward-noise ``x`` ``[B,H,W]`` to ``t_start`` (an int, or for ``num_steps=1`` a ``[B]``
        tensor: one level per slice) and denoise: Tweedie for ``num_steps=1``,
        else DDS/DDIM (``eta``, ``variant``) over ``respaced_timesteps(num_steps, T, t_start)`` down
        to 0, returning the final x̂₀.

        ``noise`` is the source of every draw (the forward noise, then one draw per DDIM step when
        ``eta > 0``): a :class:`utils.rng.NoiseStreams` (per-slice generators make slice ``b`` of a
        batch equal a one-slice call with slice ``b``'s generator), a ``torch.Generator`` shared by
        the batch, or ``None`` (torch's global generator)."""
        self._check_input(x)
        noise = NoiseStreams.coerce(noise, x.device)
        ctx = contextlib.nullcontext() if grad else torch.no_grad()
        with ctx:
            x_t = self.schedule.q_sample(x, t_start, noise=noise.like(x))
            steps = [t_start] if int(num_steps) == 1 else respaced_timesteps(num_steps, self.schedule.num_steps,
                                                                               t_start)
            x0 = x
            for i, t in enumerate(steps):
                t_next = steps[i + 1] if i + 1 < len(steps) else -1
                eps = self.eps(x_t, t)
                x0 = self.schedule.tweedie_x0(x_t, eps, t)
                if t_next < 0:
                    break
                z = noise.like(x0) if float(eta) > 0 else None
                x_t = self.schedule.ddim_step(x_t, x0, eps, t, t_next, eta=eta, noise=z, variant=variant)
        return x0
