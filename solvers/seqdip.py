"""aSeqDIP: autoencoding sequential deep image prior (Alkhouri, Liang, Bell, Qu, Wang, Ravishankar,
NeurIPS 2024).

The uDiG-DIP loop without diffusion purification (step (2) is always the plain input update)::

    z₀ = physics.input_image(y)
    for k = 1..K:
      (1) θ ← N warm-started Adam steps on ‖A f_θ(z) − y‖² + λ ‖f_θ(z) − z‖²   (z frozen)
      (2) z ← f_θ(z)
    return f_θ(z_K)

The loop itself is :meth:`solvers.udig_dip.UDiGDIP.__call__` (written once); this class only
switches purification off and drops the purification fields from the config.
"""
from __future__ import annotations

from solvers.common import dip_common_defaults
from solvers.udig_dip import UDiGDIP


def default_config():
    """aSeqDIP defaults (``ml_collections.ConfigDict``); same meaning/values as uDiG-DIP's shared fields."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_outer=500,     # K, outer iterations (input updates). Our choice (matches uDiG-DIP default).
        inner_steps=4,     # N, Adam steps on θ per outer iteration. Our choice.
        lam=1.0,           # λ, autoencoding weight (reduction="mean"). Our choice.
        z0="input_image",  # z₀ from the measurements (Aᴴy / FBP). Paper (aSeqDIP initialises from Aᴴy/FBP); variant our choice.
        output="f_of_z",   # "f_of_z" → f_θ(z_K); "last_fit" → f_θ(z_{K-1}). Our choice.
    )
    return ml_collections.ConfigDict(cfg)


class SeqDIP(UDiGDIP):
    """aSeqDIP solver: ``SeqDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None)``."""

    name = "aseqdip"
    default_config = staticmethod(default_config)

    def _validate(self) -> None:
        c = self.cfg
        if c.output not in ("f_of_z", "last_fit"):
            raise ValueError(f"unknown output {c.output!r}; choose 'f_of_z' or 'last_fit'")
        if int(c.num_outer) < 1 or int(c.inner_steps) < 1:
            raise ValueError("num_outer and inner_steps must be >= 1")
        self.t_schedule = []

    def purifies(self, k: int) -> bool:
        return False
