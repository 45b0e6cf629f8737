"""L1-wavelet compressed-sensing MRI: sigpy's ``sigpy.mri.app.L1WaveletRecon`` with our operator.

Problem, per slice (``λ = lam``; Lustig, Donoho & Pauly, MRM 58:1182, 2007)::

    min_x  ½‖M F(S x) − y‖²  +  λ ‖Ψ x‖₁

``M`` the k-space mask, ``F`` the centred orthonormal 2-D FFT, ``S`` the coil maps, ``Ψ`` sigpy's
orthonormal wavelet transform (``wave_name``, default ``db4`` as in sigpy; ``|·|`` the complex
modulus).  Solved by sigpy's default for this app, FISTA (``GradientMethod`` with Nesterov
acceleration) with the soft-threshold of the wavelet coefficients as proximal step, from ``x₀ = 0``,
for ``num_iters`` iterations.

Conventions: sigpy's SENSE operator is ``√w · fft(S x, center=True, norm="ortho")``; sigpy's
centred orthonormal FFT equals our ``fft2c`` (``physics/mri.py``), so with weights ``w = M²`` (= M
for a 0/1 mask) and the measurements divided by ``M`` on the sampled entries sigpy's objective is
exactly ours (a test checks the two forward operators agree).  Single-coil operators use the map
``S = 1``.  The FISTA step is ``1/L`` with ``L = 1.01·‖A‖²`` from our seeded power iteration
(:func:`solvers.classical.operator_norm`), given to sigpy as ``alpha`` so that sigpy's own power
method, which draws from numpy's global generator, is not used.

sigpy works on numpy arrays on the CPU: each slice is copied to the CPU, the slices of a batch are
iterated in lockstep, and the result is moved back to ``y``'s device.  MRI only.
Logged ``objective``: ``½‖A x − y‖² + λ‖Ψx‖₁``.  Interface, batches, logging: :mod:`solvers.classical`.
"""
from __future__ import annotations

import ml_collections
import numpy as np
import torch

from solvers.classical import ClassicalSolver, operator_norm
from solvers.common import Range

__all__ = ["L1Wavelet", "default_config", "sigpy_problem"]

#: FISTA step ``1 / (NORM_SAFETY · ‖A‖²)``.
NORM_SAFETY = 1.01


def default_config() -> ml_collections.ConfigDict:
    """Default L1-wavelet configuration (provenance of each value in the comments)."""
    cfg = ml_collections.ConfigDict()
    # Wavelet weight λ (absolute; images of magnitude ≲ 1, ‖A‖ ≈ 1). Our choice.
    cfg.lam = 1e-3
    # FISTA iterations from x = 0. Our choice (sigpy's LinearLeastSquares default is 100).
    cfg.num_iters = 100
    # pywt wavelet name; sigpy's L1WaveletRecon default.
    cfg.wave_name = "db4"
    # Power iterations estimating ‖A‖ for the FISTA step. Our choice.
    cfg.power_iters = 30
    # Logging (our choice): history + callback every `log_every` iterations and at the last one.
    cfg.log_every = 10
    # tqdm progress bar.
    cfg.progress = True
    return cfg


def sigpy_problem(y: torch.Tensor, physics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice ``y`` ``[C,H,W]`` of a one-slice MRI operator in sigpy's conventions: ``(y_s, mps,
    weights)`` with ``y_s = y / M`` where ``M ≠ 0`` (0 elsewhere), ``mps`` ``[C,H,W]`` (ones
    ``[1,H,W]`` for single coil) and ``weights = M²`` ``[H,W]``, so that
    ``sigpy.mri.linop.Sense(mps, weights=weights)`` is ``physics`` and sigpy's data term
    ``½‖√w·F(S x) − √w·y_s‖²`` is ``½‖A x − y‖²``."""
    H, W = physics.image_shape
    M = physics.mask.reshape(H, W).detach().cpu().double().numpy()
    maps = physics.sens_maps
    mps = np.ones((1, H, W), np.complex128) if maps is None else maps.reshape(-1, H, W).detach().cpu().numpy()
    yk = y.detach().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        y_s = np.where(M != 0, yk / np.where(M != 0, M, 1.0), 0)
    dtype = yk.dtype
    return y_s.astype(dtype), mps.astype(dtype), (M ** 2).astype(np.float32 if dtype == np.complex64 else np.float64)


class L1Wavelet(ClassicalSolver):
    """L1-wavelet CS-MRI via sigpy: ``L1Wavelet(cfg=None, denoiser=None, seed=0, device=None,
    seeds=None)``; ``L1Wavelet(...)(y, physics, x_gt=None, callback=None) -> Result`` (module docstring)."""

    method = "L1-wavelet"
    modalities = ("MRI",)
    default_config = staticmethod(default_config)

    RANGES = {"lam": Range(0), "power_iters": Range(1, 10_000, integer=True)}

    def check_config(self, cfg) -> None:
        import pywt

        if cfg.wave_name not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"wave_name must be a discrete pywt wavelet (e.g. db4, haar, sym8), got {cfg.wave_name!r}")

    def check_problem(self, y, physics) -> None:
        super().check_problem(y, physics)
        if not hasattr(physics, "mask") or not hasattr(physics, "sens_maps"):
            raise ValueError(f"l1wavelet needs a Cartesian MRI operator with .mask and .sens_maps "
                             f"(physics.MultiCoilMRI), got {type(physics).__name__}")

    def objective(self, x, y, physics):
        from sigpy.linop import Wavelet

        r = physics.forward(x) - y
        data = 0.5 * (r.abs() ** 2).reshape(r.shape[0], -1).sum(dim=1)
        W = Wavelet(tuple(physics.image_shape), wave_name=self.cfg.wave_name)
        l1 = [float(np.abs(W(xb)).sum()) for xb in x.detach().cpu().numpy()]
        return data + float(self.cfg.lam) * torch.tensor(l1, dtype=data.dtype, device=data.device)

    def solve(self, y, physics, support, log):
        from sigpy.mri.app import L1WaveletRecon

        values = self.log_values(y, physics)
        B = int(y.shape[0])
        like = torch.zeros(B, *physics.image_shape, dtype=y.dtype, device=y.device)
        L = NORM_SAFETY * operator_norm(physics, like, int(self.cfg.power_iters)) ** 2
        apps = []
        for b in range(B):
            y_s, mps, weights = sigpy_problem(y[b], physics.slice(b))
            apps.append(L1WaveletRecon(y_s, mps, float(self.cfg.lam), weights=weights, wave_name=self.cfg.wave_name,
                                       max_iter=int(self.cfg.num_iters), alpha=1.0 / float(L[b]), show_pbar=False))

        def current() -> torch.Tensor:
            return torch.from_numpy(np.stack([app.alg.x for app in apps])).to(device=y.device, dtype=y.dtype)

        for k in range(int(self.cfg.num_iters)):
            for app in apps:
                if not app.alg.done():
                    app.alg.update()
            log.tick(k, current(), values)
        return current(), {"lipschitz": L.tolist(), "solver": "sigpy L1WaveletRecon (FISTA)"}
