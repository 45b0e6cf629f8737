"""aSeqDIP: autoencoding sequential deep image prior (Alkhouri, Liang, Bell, Qu, Wang, Ravishankar,
NeurIPS 2024), on the DIP loop of ``solvers/dip_loop.py``::

    z₀ = physics.input_image(y)             (zero-filled Aᴴy for MRI, FBP for CT; config ``z0``)
    for k = 1..K:
      (1) θ ← N warm-started Adam steps on ‖A f_θ(z) − y‖² + λ ‖f_θ(z) − z‖²   (z frozen)
      (2) z ← f_θ(z)
    return f_θ(z_K)                          (config ``output``)

uDiG-DIP (``solvers/udig_dip.py``) is this method with diffusion purification in step (2).
"""
from __future__ import annotations

import torch

from solvers.common import Range, dip_common_defaults, initial_input
from solvers.dip_loop import DIPProblem, DIPSolver

OUTPUTS = ("f_of_z", "last_fit")


def default_config():
    """aSeqDIP defaults (``ml_collections.ConfigDict``); each field says where its value is from."""
    import ml_collections

    cfg = dip_common_defaults()
    cfg.update(
        num_outer=500,     # K, outer iterations (input updates), >= 1. Our choice.
        inner_steps=4,     # N, Adam steps on θ per outer iteration (warm-started), >= 1. Our choice.
        lam=1.0,           # λ >= 0, weight of the autoencoding term ‖f_θ(z) − z‖² (with reduction="mean"). Our choice.
        z0="input_image",  # z₀: "input_image" (Aᴴy MRI / FBP CT) | "adjoint" | "fbp" | "zeros". Paper (z₀ from the measurements); exact variant our choice.
        output="f_of_z",   # "f_of_z": return f_θ(z_K); "last_fit": f_θ(z_{K-1}) from step (1). Our choice.
    )
    return ml_collections.ConfigDict(cfg)


#: valid ranges of aSeqDIP's own numeric fields (the shared ones: solvers.common.DIP_COMMON_RANGES)
RANGES = {"num_outer": Range(1, integer=True), "inner_steps": Range(1, integer=True), "lam": Range(0)}


class SeqDIP(DIPSolver):
    """aSeqDIP solver: ``SeqDIP(cfg, seed=seed)(y, physics, x_gt=None, callback=None)``."""

    name = "aseqdip"
    default_config = staticmethod(default_config)
    RANGES = RANGES

    def _validate(self) -> None:
        c = self.cfg
        if c.output not in OUTPUTS:
            raise ValueError(f"unknown output {c.output!r}; choose one of {OUTPUTS}")

    def iterations(self) -> tuple[int, int]:
        return int(self.cfg.num_outer), int(self.cfg.inner_steps)

    def initial_input(self, p: DIPProblem) -> torch.Tensor:
        return initial_input(p.y, p.physics, self.cfg.z0)

    def update_input(self, p, k, x, z, history) -> torch.Tensor:
        return x                                                   # z ← f_θ(z)

    def output(self, p, net, z, x) -> torch.Tensor:
        return self.estimate(p, net, z) if self.cfg.output == "f_of_z" else x
