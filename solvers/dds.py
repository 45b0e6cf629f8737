"""Decomposed Diffusion Sampling (DDS; Chung, Lee & Ye, ICLR 2024) for MRI and sparse-view CT.

Baseline diffusion-model (DM) solver. One reverse step from raw step index ``t`` to ``t'`` (the
previous respaced index; ``t' = −1`` after the last step, where ``ᾱ_{−1} = 1``):

1. **NFE + Tweedie.** ``ε̂ = ε_θ(x_t, t)`` (one network call) and
   ``x̂₀ = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t``.
2. **Data consistency by CG** (``num_cg`` iterations, default 5, started at ``x̂₀``), one of

   * ``dc_mode = "proximal"`` (default here): solve ``(I + γ AᴴA) x = x̂₀ + γ Aᴴy``, i.e. the
     proximal step ``argmin_x ‖x − x̂₀‖² + γ‖Ax − y‖²``. This is the branch DDS's code takes when
     ``--sigma_y > 0``, with its default ``--gamma 5.0``;
   * ``dc_mode = "krylov"``: run CG on the normal equations ``AᴴA x = Aᴴy`` started at ``x̂₀``
     (no γ): the iterate stays in ``x̂₀ + Krylov(AᴴA, Aᴴy − AᴴA x̂₀)``, which is the "Krylov
     subspace around the clean manifold" of the DDS paper and the branch DDS's code takes for
     noiseless measurements (``--sigma_y 0``, its default). ``γ`` is unused in this mode.

   The result is ``x̂₀'``.
3. **DDIM update with η** (DDS's own coefficients, *not* the DDIM-paper σ_t):
   ``x_{t'} = √ᾱ_{t'}·x̂₀' + c₁·z + c₂·ε̂``, ``c₁ = η·√(1−ᾱ_{t'})``,
   ``c₂ = √(1−ᾱ_{t'})·√(1−η²)``, ``z ~ N(0, I)``. Following DDS, ``ε̂`` is the **network's** ε
   (computed from ``x_t``), not an ε recomputed from the data-consistent ``x̂₀'``
   (``eps_source = "dc"`` gives the recomputed variant ``(x_t − √ᾱ_t x̂₀')/√(1−ᾱ_t)`` for
   ablations). After the last step the output is ``x̂₀'`` itself (DDS: ``xt_next = x0_t_hat``).

Time grid (as DDS): ``skip = T // nfe``, steps ``t ∈ reversed(range(0, T, skip))`` paired with
``t' ∈ reversed([−1] + range(0, T, skip)[:-1])``; e.g. ``T = 1000, nfe = 50`` gives
``980, 960, …, 20, 0`` (exactly 50 NFEs; if ``T`` is not a multiple of ``nfe`` there are
``ceil(T/skip)`` steps, as in DDS). The network receives the raw step index ``t``.

Noise: ``x_T ~ N(0, I)`` and every ``z ~ N(0, I)`` come from a ``torch.Generator`` seeded with
``seed`` at the start of **each** call (so repeated calls are identical). For complex (MRI) images
real and imaginary parts are independent ``N(0, 1)`` — DDS draws noise on the 2-channel
(real, imag) network representation — i.e. ``E|z|² = 2`` per complex pixel.

Batches: ``y`` may hold ``B`` slices. Without ``seeds`` the whole batch draws from the ONE
generator (slice ``b``'s noise then depends on its batch mates). With ``seeds=[s_0, …, s_{B−1}]``
(``DDS(cfg, denoiser, seeds=…)``, as ``solvers.make_solver("dds", …, seeds=…)`` builds it)
slice ``b`` draws ``x_T`` and every ``z`` from its own generator seeded ``s_b``, in the order of a
single run, so slice ``b`` of the batch equals ``DDS(cfg, denoiser, seed=s_b)`` on ``y[b:b+1]`` up
to float rounding (the prior is called once per step on the whole batch; its batched kernels may
sum in another order). Everything else is per slice already: Tweedie and the DDIM update are
elementwise, the operator acts slice-wise, and :func:`solvers.cg.conjugate_gradient` takes every
inner product per batch element; its tolerance early exit (``cg_tol > 0``) fires only when every
element is frozen, and a frozen element's iterate never changes again, so a batch mate that needs
more iterations does not change a slice's CG result (``tests/test_dm_baselines.py`` checks this).

Shapes: images ``[B, H, W]`` complex (MRI) or real (CT); ``y`` as produced by ``physics.forward``.
``x_gt`` is handed only to ``callback`` (via :func:`solvers.base.notify`) and never used otherwise.

Logging: every ``log_every`` steps and at the last step, ``history`` gets ``step`` (0-based),
``t``, ``residual`` = batch mean of ``‖A x̂₀' − y‖/‖y‖`` (after CG) and ``residual_tweedie`` = the
same for ``x̂₀`` (before CG); ``callback(step, x̂₀', info)`` is called with these values. These use
``y`` only and cost two extra ``A`` applications per logged step (one host sync).
``callback`` may also be a sequence of ``B`` callables (one per slice, ``None`` entries skipped):
callable ``b`` gets ``(step, x̂₀'[b:b+1], info)`` with slice ``b``'s own residuals and
``info["x_gt"] = x_gt[b:b+1]``, exactly as a single run of that slice calls its callback.
Output: :class:`solvers.base.Result` with ``x_hat`` = final ``x̂₀'`` ``[B,H,W]`` and ``info``
(``nfe``, ``timesteps``, ``seed``, ``config``, and ``slices``: one single-run-style ``Result`` per
slice, ``x_hat [1,H,W]`` and a history with that slice's residuals, for
``solvers.base.split_result``). With ``seeds``, ``info["seeds"]`` lists them, each slice's
``info["seed"]`` is its own, and ``history["per_slice"]`` holds the per-slice histories.
"""
from __future__ import annotations

from typing import Optional, Sequence

import ml_collections
import torch
from tqdm.auto import tqdm

from models.diffusion import respaced_timesteps
from solvers.base import (Callback, Result, check_measurements, check_seeds, notify_slices, per_slice_callbacks,
                          slice_results)
from solvers.cg import batch_dot, conjugate_gradient
from solvers.common import resolve_config
from utils.rng import NoiseStreams

__all__ = ["DDS", "default_config", "dds_timesteps"]


def default_config() -> ml_collections.ConfigDict:
    """Default DDS configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Number of network evaluations (respaced reverse steps); DDS paper/code default
    # (--T_sampling 50; skip = 1000 // 50 = 20).
    cfg.nfe = 50
    # DDIM stochasticity η; DDS code default (--eta 0.85).
    cfg.eta = 0.85
    # CG iterations per step; DDS code default (--CG_iter 5).
    cfg.num_cg = 5
    # Relative tolerance of the inner CG (0 = always run num_cg iterations, as DDS does). Our knob.
    cfg.cg_tol = 0.0
    # Data-consistency system: "proximal" solves (I + γAᴴA)x = x̂₀ + γAᴴy (DDS's noisy-measurement
    # branch); "krylov" runs CG on AᴴA x = Aᴴy from x̂₀ (DDS's default noiseless branch).
    # Default "proximal" is our choice (robust to measurement noise; requested by the project).
    cfg.dc_mode = "proximal"
    # Proximal weight γ; DDS code default (--gamma 5.0). Unused for dc_mode = "krylov".
    cfg.gamma = 5.0
    # ε used in the DDIM update: "network" (DDS) or "dc" (recomputed from x̂₀'; ablation only).
    cfg.eps_source = "network"
    # Logging (our choice): callback + history every `log_every` steps (and at the last step).
    cfg.log_every = 10
    # tqdm progress bar.
    cfg.progress = True
    return cfg


def dds_timesteps(num_train_steps: int, nfe: int) -> list[tuple[int, int]]:
    """DDS's respaced (t, t_next) pairs, descending; the last pair is ``(0, -1)``
    (``models.diffusion.respaced_timesteps`` paired with its successors)."""
    if nfe < 1 or nfe > num_train_steps:
        raise ValueError(f"nfe must be in [1, {num_train_steps}], got {nfe}")
    steps = respaced_timesteps(int(nfe), int(num_train_steps))
    return list(zip(steps, steps[1:] + [-1]))


# ----------------------------------------------------------------------------- shared helpers
def _schedule(denoiser):
    """The denoiser's ``models.diffusion.DiffusionSchedule`` (validated)."""
    schedule = getattr(denoiser, "schedule", None)
    for attr in ("num_steps", "tweedie_x0", "ddim_step", "eps_from_x0"):
        if not hasattr(schedule, attr):
            raise ValueError("denoiser must have a .schedule that is a "
                             "models.diffusion.DiffusionSchedule (missing ." + attr + ")")
    return schedule


def _setup(y: torch.Tensor, physics, denoiser, device):
    """Validate inputs; return (y on device, image dtype, image shape [B,H,W], device)."""
    check_measurements(y)
    if device is not None:
        y = y.to(device)
    device = y.device
    phys_complex = bool(getattr(physics, "is_complex", torch.is_complex(y)))
    den_complex = bool(getattr(denoiser, "is_complex", phys_complex))
    if phys_complex != den_complex:
        raise ValueError(f"physics.is_complex={phys_complex} but denoiser.is_complex={den_complex}:"
                         " use the MRI prior with MRI operators and the CT prior with CT")
    if phys_complex:
        dtype = y.dtype if torch.is_complex(y) else torch.complex64
    else:
        if torch.is_complex(y):
            raise ValueError("real (CT) operator got complex measurements y")
        dtype = y.dtype
    H, W = physics.image_shape
    return y, dtype, (y.shape[0], int(H), int(W)), device, phys_complex


def sampler_result(method: str, x: torch.Tensor, history: dict, histories: list[dict], pairs, cfg,
                   seed: int, seeds: Optional[list[int]]) -> Result:
    """The :class:`Result` of a DDS/DPS call, with per-slice results in ``info["slices"]``."""
    info = {"method": method, "nfe": len(pairs), "seed": seed,
            "timesteps": [p[0] for p in pairs], "config": cfg.to_dict()}
    if seeds is not None:
        info["seeds"] = list(seeds)
        history["per_slice"] = histories
    info["slices"] = slice_results(x, histories, info, seeds)
    return Result(x_hat=x, history=history, info=info)


def relative_residual(physics, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖A x − y‖ / ‖y‖ per batch element (``[B]`` real)."""
    r = physics.forward(x) - y
    return torch.sqrt(batch_dot(r, r) / batch_dot(y, y).clamp_min(torch.finfo(torch.float32).tiny))


class DDS:
    """Decomposed Diffusion Sampling. ``DDS(cfg, denoiser, seed=0, device=None, seeds=None)``.

    ``denoiser`` follows ``models.denoiser.Denoiser``: ``eps(x_t, t)`` on ``[B,H,W]`` images,
    ``.schedule`` (``models.diffusion.DiffusionSchedule``), ``.is_complex``. ``cfg`` is a ConfigDict / dict overriding
    :func:`default_config` (missing keys take the defaults; unknown keys → ``ValueError``).
    ``seeds``: optional, one seed per slice of ``y``; slice ``b`` then reproduces a single run
    with ``seed=seeds[b]`` (see the module docstring; ``seed`` is then unused).
    """

    def __init__(self, cfg=None, denoiser=None, seed: int = 0, device=None,
                 seeds: Optional[Sequence[int]] = None):
        base = resolve_config(default_config(), cfg)
        if base.dc_mode not in ("proximal", "krylov"):
            raise ValueError(f"dc_mode must be 'proximal' or 'krylov', got {base.dc_mode!r}")
        if base.eps_source not in ("network", "dc"):
            raise ValueError(f"eps_source must be 'network' or 'dc', got {base.eps_source!r}")
        if not 0.0 <= base.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {base.eta}")
        if denoiser is None:
            raise ValueError("DDS needs a denoiser (models.denoiser.Denoiser)")
        self.cfg = base
        self.denoiser = denoiser
        self.seed = int(seed)
        self.seeds = check_seeds(seeds)
        self.device = device

    # ------------------------------------------------------------------ data consistency
    def data_consistency(self, x0_hat: torch.Tensor, y: torch.Tensor, physics,
                         ATy: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Return x̂₀' = CG(num_cg) on the configured DC system, started at ``x0_hat``."""
        cfg = self.cfg
        if ATy is None:
            ATy = physics.adjoint(y)
        if cfg.dc_mode == "proximal":
            gamma = float(cfg.gamma)

            def apply_M(x):
                return x + gamma * physics.normal(x)

            b = x0_hat + gamma * ATy
        else:
            apply_M = physics.normal
            b = ATy
        return conjugate_gradient(apply_M, b, x0_hat, num_iters=int(cfg.num_cg),
                                  tol=float(cfg.cg_tol))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(self, y: torch.Tensor, physics, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback | Sequence[Optional[Callback]]] = None) -> Result:
        cfg = self.cfg
        y, dtype, shape, device, is_complex = _setup(y, physics, self.denoiser, self.device)
        B = shape[0]
        cbs = per_slice_callbacks(callback, B, self.seeds)
        sched = _schedule(self.denoiser)
        pairs = dds_timesteps(sched.num_steps, int(cfg.nfe))
        noise = NoiseStreams(self.seed, self.seeds, device)

        ATy = physics.adjoint(y)
        x = noise.randn(shape, dtype, device)  # x_T ~ N(0, I)
        eta = float(cfg.eta)
        log_every = max(1, int(cfg.log_every))
        keys = ("step", "t", "residual", "residual_tweedie")
        history: dict[str, list] = {k: [] for k in keys}
        histories: list[dict] = [{k: [] for k in keys} for _ in range(B)]
        x0_dc = x
        for k, (t, t_next) in enumerate(tqdm(pairs, disable=not cfg.progress, desc="DDS",
                                             leave=False)):
            eps = self.denoiser.eps(x, t).to(dtype)                          # 1 NFE
            x0 = sched.tweedie_x0(x, eps, t)                                 # Tweedie
            x0_dc = self.data_consistency(x0, y, physics, ATy)               # CG
            if t_next >= 0:
                if cfg.eps_source == "dc":
                    eps = sched.eps_from_x0(x, x0_dc, t)
                # √ᾱ' x̂₀' + η√(1−ᾱ') z + √(1−ᾱ')√(1−η²) ε̂   (z: per slice with seeds)
                z = noise.like(x0_dc) if eta > 0 else None
                x = sched.ddim_step(x, x0_dc, eps, t, t_next, eta=eta, noise=z, variant="dds")
            else:
                x = x0_dc
            last = k == len(pairs) - 1
            if (k + 1) % log_every == 0 or last:
                r, r0 = relative_residual(physics, x0_dc, y), relative_residual(physics, x0, y)
                vals = torch.cat([r.mean().reshape(1), r0.mean().reshape(1), r, r0]).tolist()
                res, res0, per, per0 = vals[0], vals[1], vals[2:2 + B], vals[2 + B:]
                for h, row in [(history, (k, t, res, res0))] + [
                        (histories[b], (k, t, per[b], per0[b])) for b in range(B)]:
                    for key, v in zip(keys, row):
                        h[key].append(v)
                notify_slices(callback, cbs, k, x0_dc,
                              {"phase": "dds", "t": t, "residual": res, "residual_tweedie": res0},
                              lambda b: {"phase": "dds", "t": t, "residual": per[b],
                                         "residual_tweedie": per0[b]}, x_gt)
        return sampler_result("DDS", x, history, histories, pairs, cfg, self.seed, self.seeds)
