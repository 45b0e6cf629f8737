"""The speed settings of the DIP solvers (``perf``), in one place: their defaults, their validation,
the ``auto`` choices per device and batch size, and what is refused where.

Every DIP solver takes ``perf`` (a dict / ConfigDict of the fields below, missing fields take the
defaults) as a constructor argument next to ``device``: like the device, it changes how the
solve executes, not what it computes (results agree up to float rounding).  ``main.py`` hands
the run config's ``config.perf`` (``--config.perf.*``) to every DIP solver.

Fields (:func:`default_config`):

* ``bf16``: autocast the DIP networks to bfloat16 (CUDA; on CPU only with ``bf16_cpu``).
* ``bf16_cpu``: allow ``bf16`` on CPU.
* ``compile``: ``torch.compile`` the B networks (CPU only; refused on CUDA with a warning).
* ``cuda_graph``: ``"auto"`` (on CUDA: replay every optimiser step from a captured CUDA graph),
  ``"on"`` (the same; on CPU a warning and eager steps), ``"off"``; bools are accepted.
* ``net_impl``: how the networks are evaluated: ``"auto"``, or one of
  :data:`models.stacked_dip.NET_IMPLS` (``"vmap"``, ``"grouped"``, ``"grouped_cl"``).

:func:`plan` turns ``perf``, the device and the number of slices ``B`` into a :class:`Plan`;
``net_impl="auto"`` picks :data:`AUTO_NET_IMPL`: on CPU ``"grouped"`` for one slice (the plain
network, call for call: one-slice results are those of a :class:`models.dip_unet.DIPUNet` with
``torch.optim.Adam``, bit for bit) and ``"grouped_cl"`` for several, on CUDA ``"vmap"``.  Why
these defaults: ``docs/performance.md``, "Why the speed defaults are what they are".
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from models.stacked_dip import NET_IMPLS

__all__ = ["default_config", "validate", "plan", "Plan", "parse_graph_mode", "graph_wanted",
           "resolve_net_impl", "compile_refusal", "net_impl_caveat", "NET_IMPLS", "AUTO_NET_IMPL"]

GRAPH_MODES = ("auto", "on", "off")

#: ``net_impl="auto"`` per device type: on CPU by number of slices (1 / more), on CUDA for any.
AUTO_NET_IMPL = {("cpu", "one"): "grouped", ("cpu", "many"): "grouped_cl", "cuda": "vmap"}


def default_config():
    """THE perf defaults (``ml_collections.ConfigDict``): float32, eager networks, CUDA graphs on
    CUDA, automatic network evaluation."""
    import ml_collections

    return ml_collections.ConfigDict(dict(bf16=False, bf16_cpu=False, compile=False, cuda_graph="auto",
                                          net_impl="auto"))


def parse_graph_mode(value: Any) -> str:
    """``perf.cuda_graph`` → ``"auto"`` | ``"on"`` | ``"off"`` (accepts bools and on/off/true/false/1/0)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    v = str(value).strip().lower()
    for mode, words in (("on", ("on", "true", "1", "yes")), ("off", ("off", "false", "0", "no")), ("auto", ("auto",))):
        if v in words:
            return mode
    raise ValueError(f"perf.cuda_graph must be 'auto', 'on' or 'off' (or a bool), got {value!r}")


def resolve_net_impl(value: Any, device: torch.device | str, batch: int = 2) -> str:
    """``perf.net_impl`` → one of :data:`NET_IMPLS` (``"auto"`` → :data:`AUTO_NET_IMPL` for the
    device type and the number of slices ``batch``)."""
    v = str(value).strip().lower()
    if v == "auto":
        kind = torch.device(device).type
        if kind == "cpu":
            return AUTO_NET_IMPL[("cpu", "one" if int(batch) == 1 else "many")]
        return AUTO_NET_IMPL.get(kind, "vmap")
    if v not in NET_IMPLS:
        raise ValueError(f"perf.net_impl must be 'auto' or one of {NET_IMPLS}, got {value!r}")
    return v


def validate(perf: Any = None):
    """``perf`` (dict / ConfigDict / ``None``) merged over :func:`default_config` → ConfigDict;
    an unknown field or a bad value raises ``ValueError`` naming the valid choices."""
    from solvers.common import resolve_config

    try:
        cfg = resolve_config(default_config(), perf)
    except ValueError as e:
        raise ValueError(f"perf: {e}") from None
    for key in ("bf16", "bf16_cpu", "compile"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"perf.{key} must be True or False, got {cfg[key]!r}")
    parse_graph_mode(cfg.cuda_graph)
    resolve_net_impl(cfg.net_impl, "cpu")
    return cfg


def compile_refusal(device: torch.device | str) -> Optional[str]:
    """Why ``torch.compile`` of the B networks is refused on ``device`` (``None`` = allowed)."""
    if torch.device(device).type == "cuda":
        return ("torch.compile of the vmapped DIP networks returned wrong images on CUDA "
                "(see docs/performance.md)")
    return None


def graph_refusal(device: torch.device | str) -> Optional[str]:
    """Why the DIP step cannot be replayed from a CUDA graph on ``device`` (``None`` = it can)."""
    kind = torch.device(device).type
    return None if kind == "cuda" else f"CUDA graphs need a CUDA device (running on {kind})"


def net_impl_caveat(impl: str, device: torch.device | str) -> Optional[str]:
    """A warning for ``impl`` on ``device`` when that combination is not validated (else ``None``)."""
    if impl != "vmap" and torch.device(device).type == "cuda":
        return (f"perf.net_impl={impl!r} on CUDA is not validated (a CUDA-vs-CPU check failed its "
                "tolerance; see docs/performance.md); 'vmap' is the validated choice")
    return None


def graph_wanted(perf: Any, device: torch.device | str, warn: bool = False) -> bool:
    """Whether DIP steps are replayed from a CUDA graph with ``perf`` on ``device``: ``"auto"`` and
    ``"on"`` → on CUDA only (``"on"`` elsewhere: a warning when ``warn``), ``"off"`` → never."""
    mode = parse_graph_mode("auto" if perf is None else perf.get("cuda_graph", "auto"))
    if mode == "off":
        return False
    reason = graph_refusal(device)
    if reason and mode == "on" and warn:
        warnings.warn(f"perf.cuda_graph ignored: {reason}", stacklevel=3)
    return reason is None


@dataclass(frozen=True)
class Plan:
    """How a DIP solve of ``batch`` slices executes (see :func:`plan`)."""

    net_impl: str
    cuda_graph: bool
    bf16: bool
    compile: bool
    batch: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan(perf: Any, device: torch.device | str, batch: int) -> Plan:
    """The execution of a DIP solve of ``batch`` slices on ``device`` with settings ``perf``
    (validated by :func:`validate`): the ``auto`` choices are made and refused requests are turned
    off with a warning (``compile`` on CUDA, ``cuda_graph="on"`` off CUDA, a non-``vmap``
    ``net_impl`` on CUDA is allowed with a warning)."""
    p = validate(perf)
    device = torch.device(device)
    impl = resolve_net_impl(p.net_impl, device, batch)
    caveat = net_impl_caveat(impl, device)
    if caveat:
        warnings.warn(caveat, stacklevel=3)
    compile_ = bool(p.compile)
    reason = compile_refusal(device)
    if compile_ and reason:
        warnings.warn(f"perf.compile ignored, running eagerly: {reason}", stacklevel=3)
        compile_ = False
    bf16 = bool(p.bf16) and (device.type == "cuda" or bool(p.bf16_cpu))
    return Plan(net_impl=impl, cuda_graph=graph_wanted(p, device, warn=True), bf16=bf16, compile=compile_,
                batch=int(batch))
