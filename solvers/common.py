"""Shared pieces of the DIP-type solvers (vanilla DIP, aSeqDIP, uDiG-DIP, self-guided DIP).

* :func:`net_output` — image ``[B,H,W]`` (or a raw channel tensor ``[B,C,H,W]``) → network →
  image ``[B,H,W]`` (complex packed as 2 channels, see ``utils/complex.py``).
* :func:`make_optimizer` — Adam on the network (plus extra parameter groups, e.g. the trainable
  input of self-guided DIP).
* :func:`dip_loss` — ``‖A x − y‖² + λ ‖x − z‖²`` with a documented reduction.
* :func:`fit_dip` — the inner Adam loop with logging and a NaN / divergence guard.
* :func:`resolve_config`, :func:`initial_input`, :func:`deterministic_mode`, :func:`make_generator`.

Loss reduction (``reduction`` config field, our choice):

* ``"mean"`` (default): ``mean_i |(A x − y)_i|² + λ · mean_j |x_j − z_j|²`` — each term is a
  per-element mean squared error, so the learning rate and λ do not depend on the image size /
  number of coils / views.  (The papers write plain squared norms; with ``"sum"`` you get exactly
  ``‖A x − y‖² + λ‖x − z‖²``, which is the same objective up to a rescaling of λ and of Adam's
  effective step — Adam is invariant to a global loss scale apart from its ε.)
* ``"sum"``: plain squared norms.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from physics import finite_checks
from utils.complex import from_channels, to_channels
from utils.rng import make_generator  # noqa: F401  (the DIP solvers seed their streams with it)

REDUCTIONS = ("mean", "sum")
Z0_CHOICES = ("input_image", "adjoint", "fbp", "zeros")


# --------------------------------------------------------------------------------------- config
def _to_plain(cfg: Any) -> dict:
    if cfg is None:
        return {}
    if hasattr(cfg, "to_dict"):  # ml_collections.ConfigDict
        return cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {k: (_to_plain(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v)
                for k, v in cfg.items()}
    raise TypeError(f"config must be a dict or ml_collections.ConfigDict, got {type(cfg).__name__}")


def _merge(base: dict, over: dict, where: str) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config field {where}{k!r}; valid fields: {sorted(base)}")
        if isinstance(base[k], dict) and isinstance(v, Mapping):
            out[k] = _merge(base[k], dict(v), f"{where}{k}.")
        else:
            out[k] = v
    return out


def resolve_config(defaults: Any, cfg: Any = None):
    """Defaults overridden by ``cfg`` (dict or ConfigDict, nested allowed) → ``ConfigDict``.

    Unknown fields raise ``ValueError`` (typos must not be silently ignored).
    """
    import ml_collections

    merged = _merge(_to_plain(defaults), _to_plain(cfg), "")
    return ml_collections.ConfigDict(merged)


def dip_common_defaults() -> dict:
    """Fields shared by the DIP-type solvers (each solver's ``default_config`` extends these)."""
    return dict(
        lr=1e-4,            # Adam learning rate for θ. Our choice (typical DIP value).
        betas=(0.9, 0.999),  # Adam betas. Our choice (PyTorch default).
        weight_decay=0.0,   # Adam weight decay. Our choice.
        reduction="mean",   # data/regulariser reduction, "mean" | "sum" (module docstring). Our choice.
        log_every=50,       # history / callback / NaN-check period in optimizer steps. Our choice.
        max_nan_events=10,  # give up (RuntimeError) after this many roll-backs. Our choice.
        deterministic=True,  # cudnn.deterministic inside the call (restored after). Our choice.
        disable_progress=False,  # hide the tqdm bar. Our choice.
        net=dict(           # DIPUNet architecture (models/dip_unet.py).
            channels=(64, 128, 256, 256),  # 3 down levels. Our choice (brief), not from the paper.
            bilinear=True,  # bilinear up-sampling. Our choice.
            norm="batch",   # BatchNorm. Our choice.
        ),
    )


# ------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def deterministic_mode(enabled: bool = True):
    """Temporarily set ``cudnn.deterministic=True, cudnn.benchmark=False`` (restored on exit)."""
    if not enabled:
        yield
        return
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def initial_input(y: torch.Tensor, physics: nn.Module, choice: str) -> torch.Tensor:
    """The network input ``z₀`` ``[B,H,W]`` from the measurements: ``"input_image"`` (the physics'
    own choice: zero-filled Aᴴy for MRI, FBP for CT), ``"adjoint"`` (Aᴴy), ``"fbp"``, ``"zeros"``."""
    with torch.no_grad():
        if choice == "input_image":
            z = physics.input_image(y)
        elif choice == "adjoint":
            z = physics.adjoint(y)
        elif choice == "fbp":
            if not hasattr(physics, "fbp"):
                raise ValueError(f"z0='fbp' needs a physics with .fbp (CT); {type(physics).__name__} "
                                 "has none — use z0='input_image' or 'adjoint'")
            z = physics.fbp(y)
        elif choice == "zeros":
            z = torch.zeros_like(physics.adjoint(y))
        else:
            raise ValueError(f"unknown z0 {choice!r}; choose one of {Z0_CHOICES}")
    return z.detach().clone()


def net_output(net: nn.Module, z: torch.Tensor, is_complex: bool) -> torch.Tensor:
    """``f_θ(z)`` as an image ``[B,H,W]`` (complex if ``is_complex``).

    ``z`` is either an image ``[B,H,W]`` (packed with ``to_channels``) or an already channel-packed
    tensor ``[B,C,H,W]`` (e.g. the noise input of vanilla DIP).
    """
    zc = to_channels(z) if z.ndim == 3 else z
    return from_channels(net(zc), is_complex)


def make_optimizer(net: nn.Module, cfg: Any, extra_groups: Sequence[dict] = ()) -> torch.optim.Optimizer:
    """Adam over ``net.parameters()`` with ``cfg.lr``, ``cfg.betas``, ``cfg.weight_decay`` (defaults
    1e-4, (0.9, 0.999), 0), plus ``extra_groups`` (e.g. ``[{"params": [z], "lr": 1e-3}]``)."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d: getattr(cfg, k, d))
    groups = [{"params": list(net.parameters())}, *extra_groups]
    return torch.optim.Adam(groups, lr=float(get("lr", 1e-4)), betas=tuple(get("betas", (0.9, 0.999))),
                            weight_decay=float(get("weight_decay", 0.0)))


def _sq(t: torch.Tensor, reduction: str) -> torch.Tensor:
    a = t.abs().square() if torch.is_complex(t) else t.square()
    if reduction == "mean":
        return a.mean()
    if reduction == "sum":
        return a.sum()
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")


def dip_loss(x: torch.Tensor, y: torch.Tensor, physics: nn.Module, lam: float = 0.0,
             z_target: Optional[torch.Tensor] = None, reduction: str = "mean"):
    """``(total, data, reg)`` with data = ‖A x − y‖², reg = ‖x − z_target‖² (0 if λ = 0 or no
    target), total = data + λ·reg; reductions per the module docstring."""
    data = _sq(physics(x) - y, reduction)
    if lam and z_target is not None:
        reg = _sq(x - z_target, reduction)
        return data + lam * reg, data, reg
    return data, data, torch.zeros((), device=data.device, dtype=data.dtype)


# -------------------------------------------------------------------------------- the DIP loop
def _snapshot(net: nn.Module, opt: torch.optim.Optimizer, extra: Sequence[torch.Tensor]) -> dict:
    return {"net": {k: v.detach().clone() for k, v in net.state_dict().items()},
            "opt": copy.deepcopy(opt.state_dict()),
            "extra": [t.detach().clone() for t in extra]}


def _restore(snap: dict, net: nn.Module, opt: torch.optim.Optimizer, extra: Sequence[torch.Tensor]) -> None:
    net.load_state_dict(snap["net"])
    opt.load_state_dict(copy.deepcopy(snap["opt"]))
    with torch.no_grad():
        for t, s in zip(extra, snap["extra"]):
            t.copy_(s)


def _append(history: dict, key: str, value: Any) -> None:
    history.setdefault(key, []).append(value)


def fit_dip(net: nn.Module, z: torch.Tensor, y: torch.Tensor, physics: nn.Module, num_steps: int,
            optimizer: Optional[torch.optim.Optimizer] = None, *, lr: Optional[float] = None,
            lam: float = 0.0, z_target: Optional[torch.Tensor] = None, is_complex: Optional[bool] = None,
            forward: Optional[Callable[[], torch.Tensor]] = None, reduction: str = "mean",
            log_every: int = 50, history: Optional[dict] = None, step_offset: int = 0,
            callback: Optional[Callable[[int, torch.Tensor, dict], None]] = None,
            pbar: Any = None, guard_tensors: Sequence[torch.Tensor] = (),
            max_nan_events: int = 10, log_last: bool = True) -> torch.Tensor:
    """``num_steps`` optimizer steps on ``‖A f_θ(z) − y‖² + λ‖f_θ(z) − z_target‖²``; returns the
    detached output ``f_θ(z)`` after the last step.

    Args:
        net, z: network and its input (frozen unless it is itself an optimizer parameter, as in
            self-guided DIP).  ``z_target`` defaults to ``z`` (the autoencoding term of aSeqDIP);
            with ``lam == 0`` the regulariser is skipped.
        optimizer: passed in so it can be warm-started across outer iterations; if ``None`` a
            fresh Adam with ``lr`` (default 1e-4) is made.
        forward: optional ``() -> x`` replacing ``net_output(net, z, is_complex)`` (self-guided DIP
            averages over input perturbations); it must be deterministic given its own generator.
        log_every: every ``log_every``-th global step (``step_offset + i``, 1-based), and at the
            last step if ``log_last``, the losses are synced (``.item()``), appended to ``history``
            (``step``, ``loss``, ``data_loss``, ``reg_loss``, ``lr``) and ``callback(step, x, info)``
            is called with the (pre-update) estimate of that step.  Apart from these and one
            finiteness check of the returned output, no host sync happens.  Outer loops calling
            ``fit_dip`` repeatedly pass ``log_last`` only for their final call, so the history is
            on a regular grid.
        guard_tensors: extra tensors rolled back by the NaN guard (e.g. a trainable input).

    NaN / divergence guard: at every check step the loss is tested; a finite loss snapshots the
    weights / optimizer state (before the update); a non-finite one restores the last snapshot,
    halves the learning rate of every parameter group and appends ``{"step", "lr"}`` to
    ``history["nan_events"]``.  The final output is checked as well.  More than
    ``max_nan_events`` events in total raise ``RuntimeError``.
    """
    if is_complex is None:
        is_complex = torch.is_complex(z) if z.ndim == 3 else bool(getattr(physics, "is_complex", False))
    if optimizer is None:
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4 if lr is None else lr)
    if forward is None:
        forward = lambda: net_output(net, z, is_complex)  # noqa: E731
    if z_target is None and lam:
        z_target = z
    history = {} if history is None else history
    log_every = max(1, int(log_every))
    snap = _snapshot(net, optimizer, guard_tensors)
    net.train()

    def on_nan(step: int) -> None:
        _restore(snap, net, optimizer, guard_tensors)
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * 0.5
        _append(history, "nan_events", {"step": step, "lr": optimizer.param_groups[0]["lr"]})
        if len(history["nan_events"]) > max_nan_events:
            raise RuntimeError(f"DIP optimisation diverged {len(history['nan_events'])} times (non-finite "
                               "loss); lower the learning rate or check the measurement scaling")

    # The operators' per-call NaN check is a host-device sync on GPU: it is off inside the loop
    # (y was checked once by the solver); non-finite losses are caught at the check steps.
    with finite_checks(physics, False):
        for i in range(1, int(num_steps) + 1):
            step = step_offset + i
            check = step % log_every == 0 or (log_last and i == num_steps)
            optimizer.zero_grad(set_to_none=True)
            x = forward()
            try:
                loss, data, reg = dip_loss(x, y, physics, lam, z_target, reduction)
            except ValueError:
                # operators reject non-finite images with ValueError: treat it as a NaN event
                if is_finite(x.detach()):
                    raise
                on_nan(step)
                if pbar is not None:
                    pbar.update(1)
                continue
            if check:
                lv, dv, rv = (float(v) for v in torch.stack((loss.detach(), data.detach(), reg.detach())).tolist())
                if not math.isfinite(lv):
                    on_nan(step)
                    if pbar is not None:
                        pbar.update(1)
                    continue
                snap = _snapshot(net, optimizer, guard_tensors)
                lr_now = optimizer.param_groups[0]["lr"]
                for key, val in (("step", step), ("loss", lv), ("data_loss", dv), ("reg_loss", rv), ("lr", lr_now)):
                    _append(history, key, val)
                if callback is not None:
                    callback(step, x.detach(), {"loss": lv, "data_loss": dv, "reg_loss": rv, "lr": lr_now})
                if pbar is not None:
                    pbar.set_postfix(loss=f"{lv:.3e}", refresh=False)
            loss.backward()
            optimizer.step()
            if pbar is not None:
                pbar.update(1)

    with torch.no_grad():
        out = forward().detach()
        if not bool(torch.isfinite(torch.view_as_real(out) if torch.is_complex(out) else out).all()):
            on_nan(step_offset + int(num_steps))
            out = forward().detach()
    return out


def is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(torch.view_as_real(x) if torch.is_complex(x) else x).all())


def progress_bar(total: int, desc: str, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=int(total), desc=desc, disable=bool(disable), leave=False, dynamic_ncols=True)


class DIPSolverBase:
    """Shared constructor and call prologue of the DIP-type solvers.

    ``Solver(cfg=None, denoiser=None, seed=0, device=None)``: ``cfg`` overrides the class's
    ``default_config()`` (unknown fields raise), ``_validate()`` checks the result.
    :meth:`_prepare` checks ``y`` for NaN/Inf and moves it to the solver's device.
    """

    name = "dip-base"

    @classmethod
    def _config_template(cls):
        """The config ``cfg`` is resolved against (``default_config()``; a subclass whose public
        config differs from the one its loop runs on overrides this)."""
        return cls.default_config()

    def __init__(self, cfg: Any = None, denoiser: Any = None, seed: int = 0,
                 device: Optional[torch.device | str] = None):
        self.cfg = resolve_config(type(self)._config_template(), cfg)
        self.denoiser, self.seed = denoiser, int(seed)
        self.device = None if device is None else torch.device(device)
        self._validate()

    def _validate(self) -> None:
        """Raise ``ValueError`` for an invalid ``self.cfg`` (subclasses)."""

    def _prepare(self, y: torch.Tensor, physics: nn.Module):
        """``(device, y on device, is_complex)`` after checking ``y`` for NaN/Inf."""
        from solvers.base import check_measurements

        check_measurements(y)
        device = self.device or y.device
        return device, y.to(device), bool(getattr(physics, "is_complex", torch.is_complex(y)))
