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
``models/denoiser.py``).  ``t_k`` decreases over the purification iterations from ``t_start`` to
``t_end`` (``t_schedule`` = linear / cosine / geometric, see :func:`purification_timesteps`).

aSeqDIP (``solvers/seqdip.py``) is this class with step (2) always the plain update; the loop is
written once, in :meth:`UDiGDIP.__call__` below.

Determinism: the network initialisation comes from ``build_dip_net(seed)``, the purification noise
from a ``torch.Generator`` seeded with ``seed + 1``; ``x_gt`` only reaches ``callback``.  The same
seed therefore reproduces the result bit-for-bit (on GPU with ``deterministic=True``, which sets
``cudnn.deterministic`` during the call), with or without ``x_gt``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from models.dip_unet import build_dip_net
from solvers.base import Callback, Result, notify
from solvers.common import (DIPSolverBase, deterministic_mode, dip_common_defaults, fit_dip, initial_input,
                            make_generator, make_optimizer, net_output, progress_bar)

T_SCHEDULES = ("linear", "cosine", "geometric")
OUTPUTS = ("f_of_z", "last_fit")


def default_config():
    """uDiG-DIP defaults (``ml_collections.ConfigDict``); each field says where its value is from.

    The paper's exact numbers could not be checked here: values marked "our choice" are ours.
    """
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_outer=500,        # K, outer iterations (input updates). Our choice.
        inner_steps=4,        # N, Adam steps on θ per outer iteration (warm-started). Our choice.
        lam=1.0,              # λ, weight of the autoencoding term ‖f_θ(z) − z‖² (with reduction="mean"). Our choice.
        z0="input_image",     # z₀: "input_image" (Aᴴy MRI / FBP CT) | "adjoint" | "fbp" | "zeros". Paper (z₀ from the measurements); exact variant our choice.
        output="f_of_z",      # "f_of_z": return f_θ(z_K); "last_fit": f_θ(z_{K-1}) from step (1). Our choice (brief).
        t_schedule="linear",  # t_k decay: "linear" | "cosine" | "geometric". Our choice.
        t_start=200,          # t_k at the first purification (raw step of a T=1000 schedule). Our choice.
        t_end=10,             # t_k at the last purification. Our choice.
        reverse_steps=1,      # denoising steps of DP (1 = one Tweedie step). Our choice.
        eta=0.0,              # DDIM η for reverse_steps > 1. Our choice.
        purify_start=0,       # first outer iteration (0-based) with purification. Our choice.
        purify_stop=400,      # purification for k in [purify_start, purify_stop); None → K. Our choice.
        purify_normalize=False,  # divide by max|x| per image before DP and rescale after. Our choice.
    )
    return ml_collections.ConfigDict(cfg)


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


def scaled_purify(purify_fn, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``purify_fn(x)`` without gradients; with ``normalize`` each image is divided by its max |x|
    before and multiplied back after (config ``purify_normalize``)."""
    with torch.no_grad():
        if not normalize:
            return purify_fn(x).detach()
        scale = x.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
        return (purify_fn(x / scale) * scale).detach()


class UDiGDIP(DIPSolverBase):
    """uDiG-DIP solver: ``UDiGDIP(cfg, denoiser, seed)(y, physics, x_gt=None, callback=None)``.

    ``denoiser`` must provide ``purify(x [B,H,W], t, num_steps=, eta=, generator=) -> [B,H,W]``
    (``models/denoiser.Denoiser``) on the same device as the data.
    """

    name = "udig_dip"
    default_config = staticmethod(default_config)


    # ------------------------------------------------------------------ purification (step 2)
    def _validate(self) -> None:
        c = self.cfg
        if c.output not in OUTPUTS:
            raise ValueError(f"unknown output {c.output!r}; choose one of {OUTPUTS}")
        if int(c.num_outer) < 1 or int(c.inner_steps) < 1:
            raise ValueError("num_outer and inner_steps must be >= 1")
        stop = c.num_outer if c.purify_stop is None else c.purify_stop
        if not 0 <= int(c.purify_start) <= int(stop) <= int(c.num_outer):
            raise ValueError(f"need 0 <= purify_start <= purify_stop <= num_outer, got "
                             f"{c.purify_start}, {c.purify_stop}, {c.num_outer}")
        self.t_schedule = purification_timesteps(c.t_schedule, c.t_start, c.t_end, int(stop) - int(c.purify_start))
        if self.t_schedule and self.denoiser is None:
            raise ValueError("uDiG-DIP needs a diffusion denoiser for purification (models.denoiser.load_prior); "
                             "pass denoiser=..., or use SeqDIP for the purification-free variant")

    def purifies(self, k: int) -> bool:
        """Whether outer iteration ``k`` (0-based) uses diffusion purification."""
        return bool(self.t_schedule) and 0 <= k - int(self.cfg.purify_start) < len(self.t_schedule)

    def next_t(self, k: int, history: dict) -> int:
        """t_k of outer iteration ``k`` (inside the purification window); recorded in ``history``."""
        t_k = self.t_schedule[k - int(self.cfg.purify_start)]
        history.setdefault("t", []).append(t_k)
        history.setdefault("purify_outer", []).append(k)
        return t_k

    def purify(self, x: torch.Tensor, k: int, generator: torch.Generator, history: dict) -> torch.Tensor:
        """``DP(x, t_k)``: the diffusion purification of step (2); records ``t_k`` in ``history``."""
        c = self.cfg
        t_k = self.next_t(k, history)
        return scaled_purify(lambda v: self.denoiser.purify(v, t_k, num_steps=int(c.reverse_steps),
                                                            eta=float(c.eta), noise=generator),
                             x, bool(c.purify_normalize))

    # ------------------------------------------------------------------------------ the solver
    def __call__(self, y: torch.Tensor, physics: torch.nn.Module, x_gt: Optional[torch.Tensor] = None,
                 callback: Optional[Callback] = None) -> Result:
        device, y, is_complex = self._prepare(y, physics)
        c = self.cfg
        K, N = int(c.num_outer), int(c.inner_steps)
        history: dict = {}
        with deterministic_mode(c.deterministic), progress_bar(K * N, self.name, c.disable_progress) as pbar:
            z = initial_input(y, physics, c.z0)                                  # z₀
            net = build_dip_net(c.net, is_complex, self.seed, device=device)
            optimizer = make_optimizer(net, c)                                   # warm-started over k
            gen = make_generator(self.seed + 1, device)
            for k in range(K):
                # (1) θ ← N Adam steps on ‖A f_θ(z) − y‖² + λ‖f_θ(z) − z‖², z frozen
                x = fit_dip(net, z, y, physics, N, optimizer, lam=float(c.lam), is_complex=is_complex,
                            reduction=c.reduction, log_every=c.log_every, history=history,
                            step_offset=k * N, pbar=pbar, max_nan_events=int(c.max_nan_events),
                            log_last=k == K - 1,
                            callback=self._log_fn(callback, x_gt, k))
                # (2) input update: z ← DP(f_θ(z), t_k) while purifying, else z ← f_θ(z)
                z = self.purify(x, k, gen, history) if self.purifies(k) else x
            if c.output == "f_of_z":
                with torch.no_grad():
                    x = net_output(net, z, is_complex).detach()
        info = {"t_schedule": list(self.t_schedule), "seed": self.seed, "config": c.to_dict(),
                "num_params": sum(p.numel() for p in net.parameters())}
        return Result(x_hat=x, history=history, info=info)

    def _log_fn(self, callback: Optional[Callback], x_gt: Optional[torch.Tensor], k: int):
        if callback is None:
            return None
        return lambda step, x, info: notify(callback, step, x.clone(), {**info, "outer": k, "phase": "fit"}, x_gt)
