"""uDiG-DIP: diffusion-guided deep image prior with input purification.

Liang, Alkhouri, Qu, Wang, Ravishankar, ICASSP 2025 (arXiv 2410.04482).

Algorithm (``K`` outer iterations, ``N`` Adam steps each; ``f_θ`` = ``models/dip_unet.DIPUNet``)::

    z₀ = physics.input_image(y)            (zero-filled Aᴴy for MRI, FBP for CT; config ``z0``)
    for k = 1..K:
      (1) θ ← N warm-started Adam steps on  ‖A f_θ(z) − y‖² + λ ‖f_θ(z) − z‖²      (z frozen)
      (2) z ← DP(f_θ(z), t_k)   for k in [purify_start, purify_stop)   (diffusion purification)
          z ← f_θ(z)            otherwise                               (aSeqDIP input update)
    return f_θ(z_K)                        (config ``output``)

``DP(x, t) = denoiser.purify(x, t, num_steps=reverse_steps, eta=eta, noise=g)``: forward-noise
``x`` to diffusion step ``t`` then denoise back to 0 (Tweedie for one step, DDIM otherwise;
``models/denoiser.py``), ``g`` the per-slice noise streams.  ``t_k`` decreases over the
purification iterations from ``t_start`` to ``t_end`` (``t_schedule`` = linear / cosine /
geometric, see :func:`purification_timesteps`).

uDiG-DIP is aSeqDIP (``solvers/seqdip.py``) with step (2) replaced by the purification inside its
window; the loop is ``solvers/dip_loop.py``.

Data-adaptive purification strength (``t_adapt="residual"``, an option of ours; the default
``"none"`` is the schedule above): a prior that does not know the anatomy moves the image away from
the measurements when it purifies.  So purification may raise a slice's relative data residual
by at most ``adapt_tau``: ``‖A z − y‖/‖y‖ ≤ ‖A x − y‖/‖y‖ + adapt_tau`` for ``z = DP(x, t)``, ``x =
f_θ(z_old)``; when it does not, that slice's purification level is halved
(``t ← ⌊s_b·t_k⌋`` with a per-slice scale ``s_b`` that starts at 1 and halves, at most
``adapt_max_halvings`` times per purification, and stays halved for the later iterations) and the
purification redrawn from the slice's own noise stream.  ``history["t"]`` then records each
slice's levels.  The residual that purification adds to a clean slice grows with t and with how far
the slice is from the prior's training data (``docs/results.md``), which is what the rule uses;
it needs ``reverse_steps = 1``.  Measured on the validation slices, the rule rarely acts: the
early DIP iterates fit the data worse than their purified versions (purification *lowers* their
residual), so on CT with the demo settings it never reduced a level for ``adapt_tau`` down to
0.003, and on MRI it halved the first level once at ``adapt_tau = 0.01``.  It is kept as an
option, not as a remedy for out-of-distribution data (``docs/results.md``).

Determinism: slice ``b``'s network initialisation comes from ``build_dip_net(seeds[b])``, its
purification noise from a generator seeded ``seeds[b] + 1``; ``x_gt`` only reaches ``callback``.
The same seed therefore reproduces the result bit-for-bit (on GPU with ``deterministic=True``, which
sets ``cudnn.deterministic`` during the call), with or without ``x_gt``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from solvers.dip_loop import DIPProblem
from solvers.dm_common import relative_residual
from solvers.common import Range
from solvers.seqdip import RANGES as SEQDIP_RANGES
from solvers.seqdip import SeqDIP, default_config as seqdip_default_config

T_SCHEDULES = ("linear", "cosine", "geometric")


def default_config():
    """uDiG-DIP defaults (``ml_collections.ConfigDict``): aSeqDIP's fields plus purification;
    each field says where its value is from.  The paper's exact numbers could not be checked here:
    values marked "our choice" are ours."""
    cfg = seqdip_default_config()
    cfg.update(dict(
        t_schedule="linear",  # t_k decay: "linear" | "cosine" | "geometric". Our choice.
        t_start=200,          # t_k at the first purification, in [0, T−1] (raw step; T = 1000 for the shipped priors). Our choice.
        t_end=10,             # t_k at the last purification, in [0, t_start] (>= 1 for "geometric"). Our choice.
        reverse_steps=1,      # denoising steps of DP, in [1, t_start + 1] (1 = one Tweedie step). Our choice.
        eta=0.0,              # DDIM η in [0, 1] for reverse_steps > 1. Our choice.
        purify_start=0,       # first outer iteration (0-based) with purification, in [0, purify_stop]. Our choice.
        purify_stop=400,      # purification for k in [purify_start, purify_stop), <= num_outer; None → K. Our choice.
        purify_normalize=False,  # divide by max|x| per image before DP and rescale after. Our choice.
        t_adapt="none",       # "none" (the t_k schedule) | "residual" (per-slice halving, module docstring). Our choice.
        adapt_tau=0.05,       # residual: largest rise of ‖A z − y‖/‖y‖ by purification, in (0, 10]. Our choice.
        adapt_max_halvings=4,  # residual: halvings of t per purification, in [0, 20]. Our choice.
    ))
    return cfg


#: valid ranges of uDiG-DIP's numeric fields (with aSeqDIP's; relations between fields and the
#: prior's number of steps T are checked in ``UDiGDIP._validate``)
RANGES = {**SEQDIP_RANGES, "t_start": Range(0, integer=True), "t_end": Range(0, integer=True),
          "reverse_steps": Range(1, integer=True), "eta": Range(0, 1), "purify_start": Range(0, integer=True),
          "purify_stop": Range(0, integer=True, none_ok=True), "adapt_tau": Range(0, 10, lo_open=True),
          "adapt_max_halvings": Range(0, 20, integer=True)}
T_ADAPT = ("none", "residual")


def purification_timesteps(kind: str, t_start: int, t_end: int, n: int) -> list[int]:
    """``n`` integer diffusion steps going from ``t_start`` down to ``t_end`` (both included).

    * linear:    ``t_i = t_start + (t_end − t_start)·s``
    * cosine:    ``t_i = t_end + (t_start − t_end)·(1 + cos(π s))/2``  (slow start, slow end)
    * geometric: ``t_i = t_start·(t_end/t_start)^s``  (needs ``t_end ≥ 1``)

    with ``s = i/(n−1)``; values are rounded and made non-increasing.
    """
    if kind not in T_SCHEDULES:
        raise ValueError(f"unknown t_schedule {kind!r}; choose one of {T_SCHEDULES}")
    t_start, t_end, n = int(t_start), int(t_end), int(n)
    if n <= 0:
        return []
    if t_end > t_start or t_end < 0:
        raise ValueError(f"need 0 <= t_end <= t_start, got t_start={t_start}, t_end={t_end}")
    if kind == "geometric" and t_end < 1:
        raise ValueError("geometric t_schedule needs t_end >= 1")
    out = []
    for i in range(n):
        s = i / (n - 1) if n > 1 else 0.0
        if kind == "linear":
            t = t_start + (t_end - t_start) * s
        elif kind == "cosine":
            t = t_end + (t_start - t_end) * 0.5 * (1.0 + math.cos(math.pi * s))
        else:
            t = t_start * (t_end / t_start) ** s
        t = int(round(t))
        out.append(min(t, out[-1]) if out else t)
    return out


def scaled_purify(purify_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``purify_fn(x)`` without gradients; with ``normalize`` each image is divided by its max |x|
    before and multiplied back after (config ``purify_normalize``)."""
    with torch.no_grad():
        if not normalize:
            return purify_fn(x).detach()
        scale = x.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        return (purify_fn(x / scale) * scale).detach()


class UDiGDIP(SeqDIP):
    """uDiG-DIP solver: ``UDiGDIP(cfg, denoiser, seed)(y, physics, x_gt=None, callback=None)``.

    ``denoiser`` must provide ``purify(x [B,H,W], t, num_steps=, eta=, noise=) -> [B,H,W]``
    (``models/denoiser.Denoiser``) on the same device as the data.
    """

    name = "udig_dip"
    default_config = staticmethod(default_config)
    RANGES = RANGES

    def _validate(self) -> None:
        super()._validate()
        c = self.cfg
        if c.t_adapt not in T_ADAPT:
            raise ValueError(f"t_adapt must be one of {', '.join(map(repr, T_ADAPT))}, got {c.t_adapt!r}")
        if c.t_adapt != "none" and int(c.reverse_steps) != 1:
            raise ValueError(f"t_adapt={c.t_adapt!r} needs reverse_steps=1 (one Tweedie step per purification), "
                             f"got {c.reverse_steps}")
        T = getattr(getattr(self.denoiser, "schedule", None), "num_steps", None)
        if T is not None and int(c.t_start) > int(T) - 1:
            raise ValueError(f"t_start must be in [0, {int(T) - 1}] (the prior has T={int(T)} diffusion steps), "
                             f"got {c.t_start}")
        if int(c.reverse_steps) > int(c.t_start) + 1:
            raise ValueError(f"reverse_steps must be in [1, t_start + 1] = [1, {int(c.t_start) + 1}], "
                             f"got {c.reverse_steps}")
        stop = c.num_outer if c.purify_stop is None else c.purify_stop
        if not 0 <= int(c.purify_start) <= int(stop) <= int(c.num_outer):
            raise ValueError(f"need 0 <= purify_start <= purify_stop <= num_outer, got "
                             f"{c.purify_start}, {c.purify_stop}, {c.num_outer}")
        self.t_schedule = purification_timesteps(c.t_schedule, c.t_start, c.t_end, int(stop) - int(c.purify_start))
        if self.t_schedule and self.denoiser is None:
            raise ValueError("uDiG-DIP needs a diffusion denoiser for purification (models.priors.load_prior); "
                             "pass denoiser=..., or use SeqDIP for the purification-free variant")

    def purifies(self, k: int) -> bool:
        """Whether outer iteration ``k`` (0-based) uses diffusion purification."""
        return 0 <= k - int(self.cfg.purify_start) < len(self.t_schedule)

    def update_input(self, p: DIPProblem, k: int, x: torch.Tensor, z: torch.Tensor, history: dict) -> torch.Tensor:
        """(2) ``z ← DP(f_θ(z), t_k)`` inside the purification window (``t_k`` recorded in
        ``history``), else aSeqDIP's ``z ← f_θ(z)``."""
        if not self.purifies(k):
            return super().update_input(p, k, x, z, history)
        c = self.cfg
        t_k = self.t_schedule[k - int(c.purify_start)]
        history.setdefault("purify_outer", []).append(k)
        if c.t_adapt == "none":
            history.setdefault("t", []).append(t_k)
            return p.restrict(self._purify(p, x, t_k, p.noise))
        return self._purify_adaptive(p, x, t_k)

    def _purify(self, p: DIPProblem, x: torch.Tensor, t, noise) -> torch.Tensor:
        """``DP(x, t)`` (``t`` an int, or one level per slice of ``x``), before the support restriction."""
        c = self.cfg
        return scaled_purify(lambda v: self.denoiser.purify(v, t, num_steps=int(c.reverse_steps), eta=float(c.eta),
                                                            noise=noise), x, bool(c.purify_normalize))

    def _purify_adaptive(self, p: DIPProblem, x: torch.Tensor, t_k: int) -> torch.Tensor:
        """``t_adapt="residual"`` (module docstring): each slice's level ``⌊s_b·t_k⌋`` is halved
        until purification raises its data residual by at most ``adapt_tau``; slices redraw only
        their own noise."""
        c = self.cfg
        B = x.shape[0]
        with torch.no_grad():
            limit = [v + float(c.adapt_tau) for v in relative_residual(p.physics, x, p.y).tolist()]
        scale = p.state.setdefault("t_scale", [1.0] * B)          # s_b, kept over the solve
        levels = [int(s * t_k) for s in scale]
        z = p.restrict(self._purify(p, x, torch.tensor(levels), p.noise))
        for _ in range(int(c.adapt_max_halvings)):
            with torch.no_grad():
                r = relative_residual(p.physics, z, p.y).tolist()
            todo = [b for b in range(B) if r[b] > limit[b] and levels[b] > 0]
            if not todo:
                break
            for b in todo:
                scale[b] /= 2
                levels[b] = int(scale[b] * t_k)
            z = z.clone()
            z[todo] = self._purify(p, x[todo], torch.tensor([levels[b] for b in todo]), p.noise.subset(todo))
            z = p.restrict(z)
        for b in range(B):
            p.histories[b].setdefault("t", []).append(levels[b])
        return z

    def extra_info(self) -> dict:
        return {"t_schedule": list(self.t_schedule)}
