"""Least squares by conjugate gradient: CG-SENSE (MRI) and CGLS (CT); SIRT (CT) as an option.

``method = "cg"`` (default, both modalities): ``num_iters`` iterations of CG on the normal
equations ``AᴴA x = Aᴴy`` started at ``x₀ = 0`` (:func:`solvers.cg.conjugate_gradient` with
``physics.normal``; every inner product per slice).  For multi-coil MRI this is CG-SENSE
(Pruessmann, Weiger, Börnert & Boesiger, MRM 46:638, 2001: CG on the SENSE normal equations); for
CT it is CGLS (Hestenes & Stiefel 1952): CG on ``AᵀA x = Aᵀy``, whose iterates CGLS produces in
exact arithmetic (CGLS keeps the residual in the measurement space, which matters for thousands of
iterations, not for the tens used here).  Iterate ``k`` minimises ``‖A x − y‖`` over the Krylov
space ``span{Aᴴy, (AᴴA)Aᴴy, …}`` of dimension ``k``; there is no regulariser other than the
iteration count, so with noisy data the error first falls, then rises as the small singular values
fit the noise ("semi-convergence"): ``num_iters`` is a regularisation parameter, tuned per problem.

``method = "sirt"`` (CT only): ``x ← x + ω C Aᵀ R (y − A x)`` from ``x₀ = 0`` with
``R = diag(1 / A𝟙)`` (inverse ray sums) and ``C = diag(1 / Aᵀ𝟙)`` (inverse pixel sums; 0 where a
sum vanishes and outside the image support), relaxation ``ω = relax`` (converges for 0 < ω < 2;
Gregor & Benson, IEEE TMI 27:918, 2008; the SIRT of the ASTRA toolbox).  SIRT converges to a
weighted least-squares solution, much more slowly than CG.

Logged ``objective``: ``½‖A x − y‖²`` per slice.  Interface, batches, logging: :mod:`solvers.classical`.
"""
from __future__ import annotations

import ml_collections
import torch

from solvers.cg import batch_dot, conjugate_gradient
from solvers.classical import ClassicalSolver
from solvers.common import Range

__all__ = ["CGSense", "default_config", "METHODS"]

METHODS = ("cg", "sirt")


def default_config() -> ml_collections.ConfigDict:
    """Default CG-SENSE / CGLS configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # "cg": CG on the normal equations (CG-SENSE / CGLS); "sirt": SIRT (CT only). Our choice.
    cfg.method = "cg"
    # Iterations from x₀ = 0: the regularisation parameter (module docstring). Our choice; the
    # demo configs set their own per modality (configs/demo.py).
    cfg.num_iters = 20
    # SIRT relaxation ω in (0, 2); 1 = plain SIRT (ASTRA's default). Unused by "cg".
    cfg.relax = 1.0
    # Logging (our choice): history + callback every `log_every` iterations and at the last one.
    cfg.log_every = 5
    # tqdm progress bar.
    cfg.progress = True
    return cfg


def least_squares_objective(x: torch.Tensor, y: torch.Tensor, physics) -> torch.Tensor:
    """``½‖A x − y‖²`` per slice (``[B]``)."""
    r = physics.forward(x) - y
    return 0.5 * batch_dot(r, r)


class CGSense(ClassicalSolver):
    """CG-SENSE / CGLS / SIRT: ``CGSense(cfg=None, denoiser=None, seed=0, device=None, seeds=None)``;
    ``CGSense(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "CG-SENSE"
    default_config = staticmethod(default_config)

    RANGES = {"relax": Range(0, 2, lo_open=True, hi_open=True)}     # SIRT diverges at 2

    def check_config(self, cfg) -> None:
        if cfg.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {cfg.method!r}")

    def check_problem(self, y, physics) -> None:
        super().check_problem(y, physics)
        if self.cfg.method == "sirt" and physics.modality != "CT":
            raise ValueError(f"method='sirt' is a CT method; for {physics.modality} use method='cg' "
                             "(--config.solver_cfg.cgsense.method=cg)")

    def objective(self, x, y, physics):
        return least_squares_objective(x, y, physics)

    def solve(self, y, physics, support, log):
        values = self.log_values(y, physics)
        K = int(self.cfg.num_iters)
        if self.cfg.method == "sirt":
            return self._sirt(y, physics, support, K, values, log), {"algorithm": "SIRT"}
        x = conjugate_gradient(physics.normal, physics.adjoint(y), None, num_iters=K,
                               callback=lambda k, xk: log.tick(k, xk, values))
        return x, {"algorithm": "CG-SENSE" if physics.modality == "MRI" else "CGLS"}

    def _sirt(self, y, physics, support, K, values, log):
        mask = physics.measurement_mask(y).expand(y.shape).to(y.dtype)
        image_ones = support.to(y.dtype).expand(y.shape[0], *physics.image_shape)
        row, col = physics.forward(image_ones), physics.adjoint(mask)
        tiny = torch.finfo(y.dtype).eps
        R = torch.where(row > tiny, 1.0 / row.clamp_min(tiny), torch.zeros_like(row)) * mask
        C = torch.where(col > tiny, 1.0 / col.clamp_min(tiny), torch.zeros_like(col)) * support.to(y.dtype)
        x = torch.zeros_like(image_ones)
        w = float(self.cfg.relax)
        for k in range(K):
            x = x + w * C * physics.adjoint(R * (y - physics.forward(x)))
            log.tick(k, x, values)
        return x
