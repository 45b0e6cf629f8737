"""Loading and saving ADM (guided-diffusion ``UNetModel``) checkpoints, with clear errors.

* :func:`load_state_dict_file` – ``torch.load(weights_only=True, map_location="cpu")``; accepts a
  bare state_dict or one wrapped in ``model`` / ``state_dict`` / ``ema`` (also our own format
  ``{"config", "state_dict", "ema", ...}``, EMA weights preferred), strips ``module.`` prefixes.
* :func:`load_adm_checkpoint` – builds the model from a config and loads it strictly; returns it
  in eval mode with ``requires_grad=False``.
* :func:`save_adm_checkpoint` – atomic write (temp file + ``os.replace``) of
  ``{"config", "state_dict", "ema", "extra"}``.

Errors:

* missing file → ``FileNotFoundError`` naming the expected file, its approximate size, where to
  put it, the ``--ckpt=...`` flag and the README section "Pretrained diffusion priors" (which also
  explains the ``.pt``/``.pth`` and ``brain``/``knee`` naming slip of DDS). Sibling names
  (``.pt``↔``.pth``, ``brain``↔``knee``) are tried first; a found sibling is used with a warning.
* truncated / corrupt file → :class:`CorruptCheckpointError` (a ``RuntimeError``) with the size on
  disk and the expected size: re-download.
* mismatched keys / shapes → :class:`CheckpointMismatchError` (a ``RuntimeError``) listing the
  first missing / unexpected keys and shape mismatches, and which known prior config the file
  looks like.
"""
from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch

from models import prior_registry as registry

__all__ = [
    "CorruptCheckpointError", "CheckpointMismatchError", "read_checkpoint", "unwrap_state_dict",
    "load_state_dict_file", "load_adm_checkpoint", "save_adm_checkpoint", "build_adm_model",
    "candidate_paths", "guess_prior_config", "model_from_checkpoint",
]

_WRAPPER_KEYS_EMA_FIRST = ("ema", "ema_state_dict", "state_dict", "model", "model_state_dict",
                           "net", "params")
_WRAPPER_KEYS_RAW_FIRST = ("state_dict", "model", "model_state_dict", "net", "params", "ema",
                           "ema_state_dict")


class CorruptCheckpointError(RuntimeError):
    """The checkpoint file exists but cannot be read (truncated download, wrong format)."""


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's tensors do not match the model built from the config."""


# --------------------------------------------------------------------------- helpers
def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} bytes"


def candidate_paths(path: str | os.PathLike) -> list[Path]:
    """Sibling names under which the same file circulates: ``.pt``↔``.pth``,
    ``brain``↔``knee`` (the DDS README saves the knee model as ``fastmri_brain_…``)."""
    path = Path(path)
    stems = [path.stem]
    for a, b in (("brain", "knee"), ("knee", "brain")):
        if a in path.stem:
            stems.append(path.stem.replace(a, b))
    suffixes = [path.suffix] if path.suffix else [""]
    suffixes += [s for s in (".pt", ".pth") if s not in suffixes]
    out = []
    for stem in stems:
        for suf in suffixes:
            p = path.with_name(stem + suf)
            if p != path and p not in out:
                out.append(p)
    return out


def _missing_file_error(path: Path) -> FileNotFoundError:
    prior = registry.prior_for_file(path)
    size = None
    if prior is not None and prior.num_params is not None:
        size = 4 * int(prior.num_params)
    if prior is not None:
        what = (f"the '{prior.name}' diffusion prior `{path.name}` "
                + (f"(≈{_fmt_bytes(size)}, {int(prior.num_params):,} float32 parameters)"
                   if size else "(size depends on the config)"))
        default = prior.checkpoint
    else:
        what = f"the diffusion prior checkpoint `{path.name}` ({_fmt_bytes(size)})"
        default = f"checkpoints/{path.name}"
    tried = ", ".join(str(p) for p in candidate_paths(path)) or "-"
    msg = (
        f"Checkpoint file not found: {path}\n"
        f"Expected {what}.\n"
        f"Download it and put it in `checkpoints/` (e.g. `{default}`), or pass its location with "
        f"`--ckpt=/path/to/{path.name}`.\n"
        f"The README section \"{registry.README_SECTION}\" has the download links and "
        f"explains the naming confusion: the DDS code uses `AAPM256_1M.pt` and "
        f"`fastmri_knee_320_complex_1m.pt`, its README says `.pth` and "
        f"`fastmri_brain_320_complex_1m.pth` — they are the same files.\n"
        f"Also looked for the sibling names: {tried}."
    )
    return FileNotFoundError(msg)


def _resolve_existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    for sib in candidate_paths(path):
        if sib.is_file():
            warnings.warn(f"checkpoint {path} not found; using the same file under its other "
                          f"name {sib} (.pt/.pth and brain/knee naming slip of DDS)", stacklevel=3)
            return sib
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; pass the .pt file, "
                                f"e.g. `--ckpt={path}/AAPM256_1M.pt`")
    raise _missing_file_error(path)


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with the missing-file and
    corrupt-file errors described in the module docstring."""
    path = _resolve_existing(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - damaged bytes make the unpickler raise almost anything
        # (UnpicklingError, EOFError, BadZipFile, RuntimeError, but also IndexError / KeyError /
        # UnicodeDecodeError on random bytes): every failure to read the file is reported the same way
        on_disk = path.stat().st_size
        prior = registry.prior_for_file(path)
        expected = (f"; expected ≈{_fmt_bytes(4 * int(prior.num_params))}"
                    if prior is not None and prior.num_params else "")
        weights_only_hint = ""
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            weights_only_hint = (" (it contains pickled Python objects beyond tensors; only "
                                 "tensor/dict checkpoints are loaded, with weights_only=True)")
        raise CorruptCheckpointError(
            f"Checkpoint {path} is incomplete or corrupt ({on_disk:,} bytes on disk = "
            f"{_fmt_bytes(on_disk)}{expected}){weights_only_hint}. It could not be read by "
            f"torch.load: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
            f"Re-download it (see the README section \"{registry.README_SECTION}\")."
        ) from err


def _is_state_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict()
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def unwrap_state_dict(obj: Any, prefer_ema: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """Find the state_dict inside a loaded checkpoint object (bare, or wrapped in
    ``ema``/``state_dict``/``model``/…; EMA first when ``prefer_ema``) and strip ``module.``."""
    if _is_state_dict(obj):
        return _strip_prefix(obj)
    if isinstance(obj, Mapping):
        order = _WRAPPER_KEYS_EMA_FIRST if prefer_ema else _WRAPPER_KEYS_RAW_FIRST
        for key in order:
            if key in obj and obj[key] is not None:
                try:
                    return unwrap_state_dict(obj[key], prefer_ema)
                except ValueError:
                    continue
        keys = list(obj)[:10]
        raise ValueError(f"no state_dict found in the checkpoint: top-level keys {keys} (expected "
                         f"a bare state_dict or one under 'model' / 'state_dict' / 'ema')")
    raise ValueError(f"no state_dict found in the checkpoint (got a {type(obj).__name__})")


def load_state_dict_file(path: str | os.PathLike, prefer_ema: bool = True
                         ) -> "OrderedDict[str, torch.Tensor]":
    """State dict stored in ``path`` (see :func:`unwrap_state_dict`)."""
    obj = read_checkpoint(path)
    try:
        return unwrap_state_dict(obj, prefer_ema)
    except ValueError as err:
        raise CorruptCheckpointError(f"{path}: {err}") from err


# --------------------------------------------------------------------------- model building
def build_adm_model(cfg: Any, device: str | torch.device | None = None):
    """``create_adm_model`` on the normalised config (see ``models.priors.model_kwargs``);
    ``device="meta"`` builds a shape-only model."""
    from models.adm_unet import create_adm_model

    kwargs = registry.model_kwargs(cfg)
    if device is None:
        return create_adm_model(kwargs)
    with torch.device(device):
        return create_adm_model(kwargs)


def _signature(sd: Mapping[str, torch.Tensor]) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


def guess_prior_config(sd: Mapping[str, torch.Tensor]) -> tuple[str | None, str]:
    """(name of the known prior whose key/shape signature matches ``sd`` exactly or None,
    a human-readable description of the best match)."""
    sig = _signature(sd)
    first = sig.get("input_blocks.0.0.weight")
    last = sig.get("out.2.weight")
    desc = [f"{len(sig)} tensors, {sum(math.prod(s) for s in sig.values()):,} params"]
    if first is not None and len(first) == 4:
        desc.append(f"in_channels={first[1]}, num_channels={first[0]}")
    if last is not None and len(last) == 4:
        desc.append(f"out_channels={last[0]}")
    best, best_score, exact = None, -1.0, None
    for name in registry.list_priors():
        try:
            ref = _signature(build_adm_model(registry.PRIORS[name], device="meta").state_dict())
        except Exception:  # adm_unet missing or config rejected: fall back to the header
            continue
        common = sum(1 for k, s in sig.items() if ref.get(k) == s)
        score = common / max(len(sig), len(ref))
        if common == len(sig) == len(ref):
            exact = name
        if score > best_score:
            best, best_score = name, score
    text = "; ".join(desc)
    if exact is not None:
        return exact, (f"the file ({text}) matches the known prior config '{exact}' exactly — "
                       f"use models.priors.get_prior_config('{exact}') (prior name '{exact}')")
    if best is not None:
        return None, (f"the file ({text}) matches no known prior config exactly; closest is "
                      f"'{best}' ({100 * best_score:.0f}% of tensors agree in name and shape). "
                      f"Check num_channels / num_res_blocks / channel_mult / "
                      f"attention_resolutions / image_size / learn_sigma")
    return None, f"the file has {text}"


def _check_compat(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], cfg: Any, path) -> None:
    ref = model.state_dict()
    missing = [k for k in ref if k not in sd]
    unexpected = [k for k in sd if k not in ref]
    shape = [(k, tuple(sd[k].shape), tuple(ref[k].shape)) for k in ref
             if k in sd and tuple(sd[k].shape) != tuple(ref[k].shape)]
    if not (missing or unexpected or shape):
        return
    n = 5
    lines = [f"Checkpoint {path} does not match the model built from the config "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shape)} shape "
             f"mismatches; model has {len(ref)} tensors, file has {len(sd)})."]
    if missing:
        lines.append(f"  missing keys (first {min(n, len(missing))}): {missing[:n]}")
    if unexpected:
        lines.append(f"  unexpected keys (first {min(n, len(unexpected))}): {unexpected[:n]}")
    if shape:
        lines.append("  shape mismatches (key: file vs model, first "
                     f"{min(n, len(shape))}): "
                     + ", ".join(f"{k}: {a} vs {b}" for k, a, b in shape[:n]))
    try:
        kw = registry.model_kwargs(cfg)
        lines.append(f"  config used: {kw}")
    except Exception:
        pass
    _, hint = guess_prior_config(sd)
    lines.append(f"  Hint: {hint}.")
    raise CheckpointMismatchError("\n".join(lines))


def _contains_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))


def load_adm_checkpoint(path: str | os.PathLike, cfg: Any = None, device="cpu",
                        dtype: torch.dtype = torch.float32, prefer_ema: bool = True):
    """Build ``UNetModel`` from ``cfg`` (a prior name, a model-config dict/ConfigDict or a full
    prior entry; ``None`` → the config stored in the file) and load ``path`` strictly.

    Returns the model on ``device`` in ``dtype``, ``eval()``, all ``requires_grad=False``.
    """
    return model_from_checkpoint(read_checkpoint(path), cfg, path, device=device, dtype=dtype,
                                 prefer_ema=prefer_ema)


def model_from_checkpoint(obj: Any, cfg: Any, path: str | os.PathLike = "<checkpoint>",
                          device="cpu", dtype: torch.dtype = torch.float32,
                          prefer_ema: bool = True):
    """:func:`load_adm_checkpoint` on an already-read checkpoint object ``obj``."""
    if cfg is None:
        cfg = obj.get("config") if isinstance(obj, Mapping) else None
        if cfg is None:
            prior = registry.prior_for_file(Path(path))
            if prior is None:
                raise ValueError(f"{path} stores no config and its name matches no known prior: "
                                 f"pass cfg (one of {registry.list_priors()} or a dict)")
            cfg = prior
    elif isinstance(cfg, str):
        cfg = registry.get_prior_config(cfg)
    try:
        sd = unwrap_state_dict(obj, prefer_ema)
    except ValueError as err:
        raise CorruptCheckpointError(f"{path}: {err}") from err

    # Build without allocating random weights (meta), then adopt the loaded tensors.
    model = build_adm_model(cfg, device="meta")
    _check_compat(model, sd, cfg, path)
    model.load_state_dict(sd, strict=True, assign=True)
    if _contains_meta(model):  # e.g. non-persistent buffers: build for real instead
        model = build_adm_model(cfg)
        model.load_state_dict(sd, strict=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


# --------------------------------------------------------------------------- saving
def _plain(cfg: Any) -> Any:
    """Config → plain python containers (loadable with ``weights_only=True``)."""
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if isinstance(cfg, Mapping):
        return {str(k): _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_plain(v) for v in cfg)
    if cfg is None or isinstance(cfg, (bool, int, float, str)):
        return cfg
    if isinstance(cfg, torch.dtype):
        return str(cfg)
    return str(cfg)


def save_adm_checkpoint(path: str | os.PathLike, model: torch.nn.Module, cfg: Any,
                        ema_state: Mapping[str, torch.Tensor] | None = None,
                        extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write ``{"config", "state_dict", "ema", "extra"}`` (CPU tensors) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = OrderedDict((k, v.detach().to("cpu").clone()) for k, v in model.state_dict().items())
    payload = {"config": _plain(cfg), "state_dict": state}
    if ema_state is not None:
        payload["ema"] = OrderedDict((k, v.detach().to("cpu").clone()) for k, v in ema_state.items())
    if extra:
        payload["extra"] = _plain(dict(extra)) if not any(
            isinstance(v, torch.Tensor) for v in extra.values()) else dict(extra)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
