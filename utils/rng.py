"""Seeded random streams shared by every solver (a leaf module: imports torch only).

* :func:`make_generator` — a ``torch.Generator`` on a device, seeded.
* :func:`randn_like` — N(0, I) shaped like a tensor; complex → real and imaginary parts each
  N(0, 1) (the 2-channel noise the networks see, *not* ``torch.randn(dtype=complex)``, whose
  parts have variance 1/2).
* :class:`NoiseStreams` — the noise source of a batch of ``B`` slices: either one generator for
  the whole batch, or one generator per slice (``seeds``), in which case slice ``b``'s draws come
  from its own generator in the order and with the shapes of a one-slice run.  This is what makes a
  batched solve of ``B`` slices equal ``B`` one-slice solves (up to float rounding of batched
  kernels), and a slice's result independent of its batch mates.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["make_generator", "randn_like", "NoiseStreams"]


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(int(seed))
    return g


def randn_like(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``; complex ``x`` → real and imag parts each N(0,1)."""
    if torch.is_complex(x):
        real_dtype = x.real.dtype
        re = torch.randn(x.shape, generator=generator, dtype=real_dtype, device=x.device)
        im = torch.randn(x.shape, generator=generator, dtype=real_dtype, device=x.device)
        return torch.complex(re, im)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


class NoiseStreams:
    """Random draws for a batch ``[B, ...]``: one generator seeded ``seed`` for the whole batch
    (``seeds=None``), or one generator per slice seeded ``seeds[b]``.

    With per-slice generators every draw of shape ``[B, ...]`` is the concatenation of ``B``
    draws of shape ``[1, ...]``, slice ``b``'s from generator ``b``: exactly what a one-slice run
    with seed ``seeds[b]`` draws.  ``NoiseStreams.per_slice(seeds, device)`` is the usual
    constructor; ``streams.slice(b)`` is the one-slice stream of slice ``b`` (same generator).
    """

    def __init__(self, seed: int = 0, seeds: Optional[Sequence[int]] = None,
                 device: torch.device | str = "cpu", generators: Optional[Sequence[torch.Generator]] = None):
        self.device = torch.device(device)
        if generators is not None:
            self.gens: Optional[list[torch.Generator]] = list(generators)
            self.gen = None
        elif seeds is None:
            self.gens = None
            self.gen = make_generator(seed, self.device)
        else:
            seeds = [int(s) for s in seeds]
            if not seeds:
                raise ValueError("seeds must hold one seed per slice (got an empty list)")
            self.gens = [make_generator(s, self.device) for s in seeds]
            self.gen = None

    @classmethod
    def coerce(cls, noise: "NoiseStreams | torch.Generator | None",
               device: torch.device | str = "cpu") -> "NoiseStreams":
        """``noise`` as a stream: a stream is returned as is, a ``torch.Generator`` becomes one
        stream shared by the batch, ``None`` the global generator's stream."""
        if isinstance(noise, NoiseStreams):
            return noise
        if noise is not None and not isinstance(noise, torch.Generator):
            raise TypeError(f"noise must be a NoiseStreams, a torch.Generator or None, got {type(noise).__name__}")
        s = cls.__new__(cls)
        s.device, s.gens, s.gen = torch.device(device), None, noise
        return s

    @classmethod
    def per_slice(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> "NoiseStreams":
        return cls(seeds=seeds, device=device)

    @property
    def batch(self) -> Optional[int]:
        """Number of per-slice generators (``None`` for one shared generator)."""
        return None if self.gens is None else len(self.gens)

    def slice(self, b: int) -> "NoiseStreams":
        """The stream of slice ``b`` alone (shares its generator; a shared stream returns itself)."""
        if self.gens is None:
            return self
        return NoiseStreams(device=self.device, generators=[self.gens[b]])

    def subset(self, idx: Sequence[int]) -> "NoiseStreams":
        """The streams of slices ``idx`` (sharing their generators), for redrawing a few slices."""
        if self.gens is None:
            return self
        return NoiseStreams(device=self.device, generators=[self.gens[b] for b in idx])

    def _check(self, B: int) -> None:
        if self.gens is not None and B != len(self.gens):
            raise ValueError(f"batch of {B} slices but {len(self.gens)} noise streams (one per slice)")

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
        """N(0, I) of ``shape`` ``[B, ...]`` (complex dtype → independent N(0,1) real/imag parts)."""
        device = self.device if device is None else torch.device(device)
        like = torch.empty((1,) + tuple(shape[1:]), dtype=dtype, device=device)
        if self.gens is None:
            return randn_like(torch.empty(tuple(shape), dtype=dtype, device=device), self.gen)
        self._check(int(shape[0]))
        return torch.cat([randn_like(like, g) for g in self.gens])

    def rand(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> torch.Tensor:
        """U[0, 1) of ``shape`` ``[B, ...]`` (real dtypes), per slice as :meth:`randn`."""
        device = self.device if device is None else torch.device(device)
        if self.gens is None:
            return torch.rand(tuple(shape), generator=self.gen, dtype=dtype, device=device)
        self._check(int(shape[0]))
        one = (1,) + tuple(shape[1:])
        return torch.cat([torch.rand(one, generator=g, dtype=dtype, device=device) for g in self.gens])

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """N(0, I) shaped like ``x`` (same dtype and device)."""
        return self.randn(x.shape, x.dtype, x.device)
