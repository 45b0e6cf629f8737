"""Score-MRI (Chung & Ye, "Score-based diffusion models for accelerated MRI", Medical Image
Analysis 2022), multi-coil "hybrid"/SENSE variant, on this project's VP/DDPM ε-priors.

The loop is :func:`solvers.sampling.sample_scoremri`; this file builds its data-consistency step.
Per reverse step ``t → t'`` (the respaced grid of :func:`solvers.sampling.dds_timesteps`):

1. predictor: ``ε̂ = ε_θ(x_t, t)`` and score-SDE's ancestral VP step
   ``x = (x_t + β s)/√(1−β) + η√β z``, ``s = −ε̂/√(1−ᾱ_t)``, ``β = 1 − ᾱ_t/ᾱ_{t'}``; then DC;
2. corrector: ``n_corrector`` Langevin steps at level ``t'``, ``x ← x + ε s + √(2ε) z`` with
   ``ε = 2(1−β_{t'})(r‖z‖/‖s‖)²``, ``r = snr``; then DC;
3. DC (:meth:`ScoreMRI.data_consistency`): ``x ← x + λ·Aᴴ(√ᾱ_{t'}·y − A x)``.

The last step (``0 → −1``) returns the DC'd predictor mean, which there is Tweedie's x̂₀.

How the official code is translated, and where this departs from it. References: ``H`` =
``inference_multi-coil_hybrid.py``, ``S`` = ``sampling.py``, ``U`` = ``utils.py``, ``V`` =
``sde_lib.py`` of github.com/HJ-harry/score-MRI (commit 8359aae); ``MCG/…`` = files of
github.com/HJ-harry/MCG_diffusion (commit d5bfd15), which carries score-SDE's VP code.

* Prior and SDE. The paper runs a VE-SDE NCSN++ score network trained on magnitude images
  (``V:112-159``, ``H:62``). Here: the VP/DDPM ε-prior of DDS (linear β 1e-4 → 0.02, 1000 steps;
  equal to score-SDE's ``VPSDE`` discretisation, ``MCG/sde_lib.py:126``) with its score
  ``−ε̂/√(1−ᾱ_t)`` (score-SDE's VP score function, ``MCG/models/utils.py:143-160``). Departure: ONE
  network call on the complex image (our priors are 2-channel complex); the official calls its
  magnitude network on the real and on the imaginary part separately (``S:547-557``), each with
  its own corrector norms.
* Predictor: the official script picks the reverse-diffusion predictor (``H:65``, ``S:165-175``);
  for the VE SDE its mean equals the ancestral predictor's. For VP we take score-SDE's ancestral
  predictor (``MCG/sampling.py:226-234``): its mean ``(x + βs)/√(1−β)`` is what the VP
  reverse-diffusion rule ``(2 − √(1−β))x + βs`` (``MCG/sde_lib.py:157-165``) expands to first
  order — on a respaced grid (β up to ≈ 0.2 for 100 steps) the expansion is off, while the
  ancestral step keeps the mean of Gaussian data exactly. ``eta`` scales its noise (1 = the
  paper's stochastic predictor; our knob).
* Corrector: score-SDE's Langevin corrector with the SNR rule (``S:178-199``; ``snr = 0.16``,
  ``H:68``; one corrector step, ``--m 1``, ``H:162``) and the VP factor ``α = 1 − β_t``
  (``MCG/sampling.py:268-270``; the VE code has ``α = 1``, ``S:188``). Departures: the norms
  ``‖z‖``, ``‖s‖`` are per slice (the official takes batch means, ``S:193-194``, which couples
  batch mates; identical for one slice); the official runs the corrector after the predictor at the
  *same* ``t`` (``S:583-589``), one level above its iterate — ours runs it at the level ``t'`` the
  predictor reached. No corrector after the last step (``t' = −1`` has no noise level).
* Data consistency. The hybrid variant reconstructs the C coil images separately: after every
  predictor and corrector update it replaces each coil's sampled k-space by ``y_c``
  (``S:527-530``, ``S:559-561``), and every ``m_steps = 50`` iterations (``H:115``, ``S:595-598``)
  it adds a SENSE Kaczmarz step ``x + λ_i Aᴴ(y − A x)`` (``S:538-541``; ``λ_i`` linear from 1.0
  towards 0.2 over ``total = 2000`` iterations, ``H:39-41``, ``U:62-77``, i.e. 1.0 → 0.8 over its
  default 500). Our prior sees the coil-combined image, so the state is ONE complex image; for coil
  maps with ``Σ_c|S_c|² = 1`` (ESPIRiT inside the object, our synthetic maps) replacing every
  coil's sampled k-space of ``S_c x`` and combining the coils with ``Σ_c S_c*`` is exactly
  ``x + Aᴴ(y − A x)``: the DC step above with ``λ = 1`` (``lam``, default). The hybrid's extra
  SENSE step is the same update; it is not repeated every 50 iterations (one more ``λ_i ≈ 0.8–1``
  step in 50 changes next to nothing) — departure.
* Scale. In the VE SDE ``x_t = x₀ + σ_t z``, and the official DC writes the clean ``y`` into
  ``x_t`` (``S:528``). The VP iterate is ``x_t = √ᾱ_t·(x₀ + σ z)`` with ``σ² = (1−ᾱ_t)/ᾱ_t``, so
  the same operation on the VE-equivalent ``x_t/√ᾱ_t`` is ``x ← x + λAᴴ(√ᾱ_t·y − A x)``: the
  target is ``√ᾱ_{t'}·y`` at level ``t'`` and ``y`` at the end (``ᾱ_{−1} = 1``).
* Start and output: ``x_T ~ N(0, I)`` (the hybrid also starts from pure prior noise,
  ``S:572-574``); the output is the noise-free mean of the last update (``denoise=True``,
  ``H:121``, ``S:607``).

Noisy data: with ``λ = 1`` and a single coil the DC step is a hard projection — it writes
``√ᾱ·y`` into the sampled k-space, **noise included** (it assumes noiseless ``y``, as the paper
does); ``lam < 1`` relaxes it so that the noise of ``y`` is averaged over the steps instead of
copied. For multi-coil SENSE the step is a Landweber step on ``‖A x − √ᾱy‖²`` (``‖A‖ ≤ 1`` for
normalised maps, so any ``0 < λ < 2`` is stable), already a relaxed step rather than a projection:
there a smaller ``λ`` mainly slows the data fit.

MRI only: constructing it with a real (CT) prior raises ``ValueError`` (use ``mcg`` or ``dds``).
Noise, batches, logging and the ``Result`` follow :mod:`solvers.dm_common`; logged:
``residual`` = ``‖A x̂₀ − y‖/‖y‖`` of the predictor's x̂₀ and ``step_size`` (the last corrector
step's ε); callbacks receive that x̂₀, and at the last step the returned image.
"""
from __future__ import annotations

import ml_collections
import torch

from solvers.common import Range
from solvers.dm_common import DMSolver, check_steps, relative_residual
from solvers.sampling import sample_scoremri

__all__ = ["ScoreMRI", "default_config"]


def default_config() -> ml_collections.ConfigDict:
    """Default Score-MRI configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Predictor steps (respaced grid of the 1000-step VP chain). Score-MRI hybrid default
    # (--N 500, score-MRI inference_multi-coil_hybrid.py:161).
    cfg.num_steps = 500
    # Langevin corrector steps per predictor step (--m 1, inference_multi-coil_hybrid.py:162).
    cfg.n_corrector = 1
    # Corrector signal-to-noise ratio r (snr = 0.16, inference_multi-coil_hybrid.py:68).
    cfg.snr = 0.16
    # Predictor noise scale η (1 = the paper's stochastic ancestral/reverse-diffusion predictor;
    # 0 = its mean). Our knob.
    cfg.eta = 1.0
    # DC weight λ in x ← x + λAᴴ(√ᾱ y − A x); 1 = the hybrid's per-coil k-space replacement
    # (score-MRI sampling.py:527-530) for maps with Σ|S_c|² = 1. Noisy data: module docstring.
    cfg.lam = 1.0
    # Logging (our choice): callback + history every `log_every` steps (and at the last step).
    cfg.log_every = 10
    # tqdm progress bar.
    cfg.progress = True
    return cfg


class ScoreMRI(DMSolver):
    """Score-MRI: ``ScoreMRI(cfg=None, denoiser=None, seed=0, device=None, seeds=None)``;
    ``ScoreMRI(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "ScoreMRI"
    modalities = ("MRI",)
    steps_field = "num_steps"
    log_keys = ("residual", "step_size")
    default_config = staticmethod(default_config)

    def __init__(self, cfg=None, denoiser=None, seed: int = 0, device=None, seeds=None):
        super().__init__(cfg, denoiser, seed, device, seeds)
        if not self.denoiser.is_complex:
            raise ValueError("scoremri reconstructs MRI and needs the complex MRI prior; for CT use "
                             "mcg or dds (--solver=mcg)")
        check_steps(self)

    RANGES = {"num_steps": Range(1, integer=True), "n_corrector": Range(0, integer=True),
              "snr": Range(0, lo_open=True), "lam": Range(0, 2, hi_open=True)}

    def data_consistency(self, x: torch.Tensor, y: torch.Tensor, physics, t: int) -> torch.Tensor:
        """``x + λ·Aᴴ(√ᾱ_t·y − A x)`` for an iterate ``x`` ``[B,H,W]`` at noise level ``t``."""
        scale = self.denoiser.schedule.alpha_bar(t, x).sqrt()
        return x + float(self.cfg.lam) * physics.adjoint(scale * y - physics.forward(x))

    def sample(self, problem, x, timesteps, noise, callback):
        def dc(v: torch.Tensor, t: int) -> torch.Tensor:
            return self.data_consistency(v, problem.y, problem.physics, t)

        cfg = self.cfg
        return sample_scoremri(self.denoiser, x, timesteps, dc, noise, snr=float(cfg.snr),
                               n_corrector=int(cfg.n_corrector), eta=float(cfg.eta), callback=callback)

    def log_values(self, problem, step):
        return {"residual": relative_residual(problem.physics, step["x0"], problem.y),
                "step_size": step["step_size"]}

    def nfe(self, num_steps: int) -> int:
        """One predictor call per step and ``n_corrector`` corrector calls per step but the last."""
        return num_steps + int(self.cfg.n_corrector) * (num_steps - 1)

    def log_image(self, step, last):
        return step["x_next"] if last else step["x0"]
