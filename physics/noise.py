"""Simulated measurements ``y = A x + n``: seeded, device-independent noise models.

:func:`simulate_measurements` applies a :class:`NoiseModel` to the clean measurements ``A x``;
:func:`noise_from_config` builds the model a run config asks for (``config.physics``, below).
Every model leaves the entries that are not measured (``LinearOperator.measurement_mask``, e.g.
unsampled k-space) exactly as they are (zero), and draws from a CPU ``torch.Generator`` (in
``y``'s real dtype, then moved to ``y``'s device: one seed gives the same noise on every device).

The models
----------
* :class:`GaussianNoise` (``noise="gaussian"``, σ = ``noise_sigma``, absolute): additive white
  Gaussian noise of standard deviation σ per measured entry —

  - MRI (complex k-space): ``n = σ (a + i b) / √2`` with ``a, b ~ N(0, 1)`` independent, so
    ``E|n|² = σ²`` and the real and imaginary parts are each ``N(0, σ²/2)``;
  - CT (real sinogram): ``n ~ N(0, σ²)`` per detector bin.
* :class:`RelativeGaussianNoise` (``noise="relative"``, level = ``noise_level``): the same
  Gaussian noise with, **per slice** ``b``, ``σ_b = level × RMS_b`` where
  ``RMS_b = sqrt(mean |A x|²)`` over the measured entries of slice ``b`` (MRI: every coil at every
  sampled k-space location; CT: every detector bin of every view) of the *noiseless* measurements.
  So ``E|n|² = (level · RMS_b)²`` per measured entry: ``level = 0.05`` is noise of 5 % of the RMS
  measured value (for MRI dominated by the k-space centre).
* :class:`PoissonNoise` (``noise="poisson"``, CT only): photon counting at ``I0`` incident photons
  per detector bin.  With ``s = mu_max · pixel_mm`` the factor that turns our line integrals
  (``A x`` in pixel units, image values in [0, 1]) into physical ones (dimensionless), each bin
  ``p = (A x)_j`` gives counts ``N ~ Poisson(I0 · exp(−s p))`` (Beer–Lambert), zero counts are
  replaced by ``min_count = 0.1`` photon (LoDoPaB-CT's rule: Leuschner et al., Sci. Data 8:109,
  2021, ``ORIG_MIN_PHOTON_COUNT = 0.1``), and the measurement is ``y = −log(N / I0) / s``, back in
  pixel units (the operator is unchanged).  The default scale: image value 1 is the top of the
  window [−1000, 2000] HU of the shipped CT samples, i.e. ``μ = 3 μ_water``; with ``μ_water =
  0.02 mm⁻¹`` (LoDoPaB-CT's 20 m⁻¹, water at ≈ 60–70 keV) ``mu_max = 0.06 mm⁻¹``; ``pixel_mm``
  is the data's pixel size (3.83 mm for the shipped 64² samples).  ``I0 = 4096`` is LoDoPaB-CT's
  low-dose photon count.  For large counts ``y ≈ p + n`` with ``Var n ≈ e^{s p} / (I0 s²)``:
  strongly attenuated rays are the noisiest.

Config (``config.physics``)
---------------------------
``noise`` = ``"none" | "gaussian" | "relative" | "poisson"``, ``noise_sigma`` (gaussian),
``noise_level`` (relative), ``I0``, ``mu_max``, ``pixel_mm`` (poisson).  The default is
``noise="gaussian"`` with ``noise_sigma = 0`` (noiseless), so ``--config.physics.noise_sigma=σ``
alone still gives Gaussian noise of σ.  A field of another model set to a non-zero value is an
error (e.g. ``noise_level`` with ``noise="gaussian"``), not silently ignored.
:func:`is_noiseless` tells whether a config's measurements are exact (for data-consistency steps
that assume noiseless data, e.g. DDS with ``dc_mode="krylov"``).

A new model is a :class:`NoiseModel` subclass passed as ``noise=``; nothing else changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .base import LinearOperator

__all__ = ["NoiseModel", "GaussianNoise", "RelativeGaussianNoise", "PoissonNoise", "NOISE_KINDS",
           "standard_normal", "simulate_measurements", "noise_from_config", "is_noiseless",
           "noise_label", "measured_rms"]

#: Values of ``config.physics.noise``.
NOISE_KINDS = ("none", "gaussian", "relative", "poisson")


class NoiseModel:
    """How clean measurements become noisy ones: ``apply(y, mask, generator) -> y_noisy``.

    ``mask`` (real 0/1, broadcastable to ``y``) marks the measured entries; ``generator`` is a
    seeded CPU generator, the only source of randomness a model may use.
    """

    #: whether :meth:`apply` returns ``y`` unchanged
    noiseless: bool = False

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement apply(y, mask, generator)")


def _check_number(value, name: str, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return v


@dataclass(frozen=True)
class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise ``y + σ n`` with ``E|n|² = 1`` per measured entry (see the
    module docstring); ``sigma = 0`` returns ``y`` unchanged."""

    sigma: float = 0.0

    def __post_init__(self):
        _check_number(self.sigma, "noise_sigma")

    @property
    def noiseless(self) -> bool:
        return float(self.sigma) == 0

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return y if self.noiseless else add_gaussian(y, mask, generator, float(self.sigma))


def add_gaussian(y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, sigma) -> torch.Tensor:
    """``y + σ·n·mask`` with ``n`` from :func:`standard_normal` (``σ`` a float, or a tensor
    broadcastable to ``y``, e.g. one σ per slice)."""
    n = standard_normal(y.shape, y.dtype, generator).to(y.device)
    return y + sigma * (n * mask)


def measured_rms(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` real: ``sqrt(mean |y|²)`` over the measured entries (``mask != 0``) of each slice
    (0 for a slice without measured entries)."""
    m = (mask != 0).to(y.real.dtype).expand(y.shape).reshape(y.shape[0], -1)
    power = (y.abs() ** 2).reshape(y.shape[0], -1)
    return torch.sqrt((power * m).sum(dim=1) / m.sum(dim=1).clamp_min(1))


@dataclass(frozen=True)
class RelativeGaussianNoise(NoiseModel):
    """Gaussian noise with ``σ_b = level × RMS`` of slice ``b``'s noiseless measured entries
    (:func:`measured_rms`); otherwise exactly :class:`GaussianNoise` (same draws per unit σ)."""

    level: float = 0.0

    def __post_init__(self):
        _check_number(self.level, "noise_level")

    @property
    def noiseless(self) -> bool:
        return float(self.level) == 0

    def sigmas(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: the σ of each slice of the clean measurements ``y``."""
        return float(self.level) * measured_rms(y, mask)

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.noiseless:
            return y
        return add_gaussian(y, mask, generator, self.sigmas(y, mask).reshape((-1,) + (1,) * (y.ndim - 1)))


@dataclass(frozen=True)
class PoissonNoise(NoiseModel):
    """Photon-counting noise of a transmission measurement (CT; module docstring): counts
    ``N ~ Poisson(I0 · exp(−s·y))`` with ``s = mu_max · pixel_mm``, zero counts → ``min_count``,
    ``y_noisy = −log(N / I0) / s`` on the measured entries."""

    I0: float = 4096.0
    mu_max: float = 0.06
    pixel_mm: float = 1.0
    min_count: float = 0.1

    def __post_init__(self):
        _check_number(self.I0, "I0", positive=True)
        _check_number(self.mu_max, "mu_max", positive=True)
        _check_number(self.pixel_mm, "pixel_mm", positive=True)
        if not 0 < _check_number(self.min_count, "min_count", positive=True) < 1:
            raise ValueError(f"min_count must be in (0, 1) (it replaces zero counts), got {self.min_count!r}")

    @property
    def scale(self) -> float:
        """``s``: physical line integral per pixel-unit line integral of a [0, 1] image."""
        return float(self.mu_max) * float(self.pixel_mm)

    def expected_counts(self, y: torch.Tensor) -> torch.Tensor:
        """``I0 · exp(−s·y)`` (float64, on the CPU) for clean line integrals ``y``."""
        return float(self.I0) * torch.exp(-self.scale * y.detach().cpu().double())

    def counts(self, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Poisson photon counts (float64, CPU, before the zero-count replacement)."""
        return torch.poisson(self.expected_counts(y), generator=generator)

    def apply(self, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if y.is_complex():
            raise ValueError("Poisson photon noise models CT sinograms (real); for MRI use "
                             "noise='relative' or 'gaussian'")
        n = self.counts(y, generator).clamp_min(float(self.min_count))
        noisy = (-torch.log(n / float(self.I0)) / self.scale).to(device=y.device, dtype=y.dtype)
        return torch.where(mask.expand(y.shape) != 0, noisy, y)


def standard_normal(shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``N(0, 1)`` noise on the CPU with ``E|n|² = 1``: real dtypes ``randn``; complex dtypes
    ``(a + i b)/√2`` with all real parts ``a`` drawn before the imaginary parts ``b``."""
    if not dtype.is_complex:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    a = torch.randn(tuple(shape), generator=generator, dtype=real)
    b = torch.randn(tuple(shape), generator=generator, dtype=real)
    return torch.complex(a, b) / 2 ** 0.5


def simulate_measurements(physics: LinearOperator, x: torch.Tensor, noise_sigma: float = 0.0,
                          seed: int = 0, noise: Optional[NoiseModel] = None,
                          seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
    """``y = A x + n``: ``GaussianNoise(noise_sigma)`` by default (see the module docstring), or
    the model ``noise`` (then ``noise_sigma`` must be 0); seeded with ``seed`` on the CPU, or, with
    ``seeds`` (one per slice of ``x``), slice ``b`` seeded ``seeds[b]`` exactly as a one-slice call
    with ``seed=seeds[b]``."""
    if noise is not None and noise_sigma:
        raise ValueError("pass either noise_sigma (Gaussian noise) or a noise model, not both")
    model = GaussianNoise(noise_sigma) if noise is None else noise
    y = physics(x)
    mask = physics.measurement_mask(y)
    if seeds is None:
        return model.apply(y, mask, torch.Generator().manual_seed(int(seed)))
    seeds = [int(s) for s in seeds]
    if len(seeds) != y.shape[0]:
        raise ValueError(f"x has {y.shape[0]} slices but {len(seeds)} seeds were given (one per slice)")
    return torch.cat([model.apply(y[b:b + 1], mask[b:b + 1] if mask.shape[0] > 1 else mask,
                                  torch.Generator().manual_seed(s)) for b, s in enumerate(seeds)])


# ------------------------------------------------------------------------------------ config
def _field(cfg, name: str, default):
    value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    return default if value is None else value


def noise_from_config(cfg, modality: Optional[str] = None) -> NoiseModel:
    """The :class:`NoiseModel` of a config's ``physics`` section (module docstring), checked:
    bad values and fields of another model raise one-line ``ValueError`` s naming the
    ``--config.physics.*`` flag; ``modality`` (``"MRI"`` | ``"CT"``) refuses Poisson noise for MRI."""
    kind = str(_field(cfg, "noise", "gaussian")).strip().lower()
    if kind not in NOISE_KINDS:
        raise ValueError(f"--config.physics.noise must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
    sigma = _check_number(_field(cfg, "noise_sigma", 0.0), "--config.physics.noise_sigma")
    level = _check_number(_field(cfg, "noise_level", 0.0), "--config.physics.noise_level")
    owner = {"noise_sigma": ("gaussian", sigma), "noise_level": ("relative", level)}
    for name, (needs, value) in owner.items():
        if value and kind != needs:
            raise ValueError(f"--config.physics.{name}={value:g} applies to noise={needs!r} but "
                             f"noise={kind!r}; set --config.physics.noise={needs} or {name}=0")
    if kind == "poisson":
        if modality is not None and modality != "CT":
            raise ValueError("--config.physics.noise=poisson models CT photon counts; for "
                             f"{modality} use noise=relative or noise=gaussian")
        try:
            return PoissonNoise(I0=_field(cfg, "I0", 4096.0), mu_max=_field(cfg, "mu_max", 0.06),
                                pixel_mm=_field(cfg, "pixel_mm", 1.0))
        except ValueError as e:
            raise ValueError(f"--config.physics.{e}") from None
    if kind == "relative":
        return RelativeGaussianNoise(level)
    return GaussianNoise(sigma if kind == "gaussian" else 0.0)


def is_noiseless(cfg) -> bool:
    """Whether a config's ``physics`` section gives exact measurements ``y = A x``
    (``noise="none"``, or a Gaussian / relative model of σ = 0 / level = 0)."""
    return bool(noise_from_config(cfg).noiseless)


def noise_label(cfg) -> str:
    """Short description of a config's noise, e.g. ``"none"``, ``"gaussian σ=0.01"``,
    ``"relative 0.05"``, ``"poisson I0=4096"``."""
    model = noise_from_config(cfg)
    if model.noiseless:
        return "none"
    if isinstance(model, GaussianNoise):
        return f"gaussian σ={model.sigma:g}"
    if isinstance(model, RelativeGaussianNoise):
        return f"relative {model.level:g}"
    if isinstance(model, PoissonNoise):
        return f"poisson I0={model.I0:g}"
    return type(model).__name__
