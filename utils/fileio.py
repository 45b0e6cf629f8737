"""File helpers shared by the run folder, the plots and the logs (a leaf: imports no project module).

* Atomic writes: :func:`atomic_writer` (temp file in the destination folder, fsync,
  ``os.replace``) and the one-liners built on it — :func:`atomic_write_text`,
  :func:`atomic_write_bytes`, :func:`atomic_write_json`, :func:`atomic_save_npy`,
  :func:`write_csv`. A killed process leaves either the old or the new file, never a torn one.
* :func:`read_csv` (numbers parsed back), :func:`to_numpy`, :func:`to_float`,
  :func:`to_jsonable` (configs, tensors, arrays, non-finite floats → JSON types),
  :func:`safe_name` (file-system-safe names), :func:`safe_path` (an injective, structure-keeping
  relative path for a slice name).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

__all__ = ["atomic_writer", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_save_npy", "write_csv", "read_csv", "to_numpy", "to_float", "to_jsonable",
           "safe_name", "safe_path", "name_hash"]


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_writer(path, mode: str = "w", fsync: bool = True, **open_kwargs) -> Iterator[Any]:
    """Context manager yielding a handle to a temp file that replaces ``path`` on success.

    The temp file lives in the destination folder (so ``os.replace`` is an atomic rename on the
    same filesystem).  If the body raises, the temp file is removed, ``path`` is left untouched
    and the exception propagates.  ``mode`` is ``"w"`` (text, utf-8) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
        open_kwargs.setdefault("newline", "")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    with atomic_writer(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Atomically write the string ``text`` (utf-8) to ``path``."""
    with atomic_writer(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (tensors/arrays/NaN made JSON-safe)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path, array) -> Path:
    """Atomically ``np.save`` an array (a torch tensor is detached and moved to the CPU)."""
    arr = to_numpy(array)
    with atomic_writer(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return Path(path)


def write_csv(path, rows: Sequence[Mapping[str, Any]], fieldnames: Optional[Sequence[str]] = None
              ) -> Path:
    """Atomically write ``rows`` (dicts) as CSV; columns = ``fieldnames`` + any extra keys."""
    fields = list(fieldnames) if fieldnames is not None else []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with atomic_writer(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in fields})
    return Path(path)


def read_csv(path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv`; numeric strings become int/float, '' → None."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse_value(v) for k, v in r.items()} for r in csv.DictReader(f)]


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    """Tensor / array-like → numpy array (detached, on CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if hasattr(x, "resolve_conj"):
            x = x.resolve_conj()
        return x.numpy()
    return np.asarray(x)


def to_float(x) -> Optional[float]:
    """Scalar-like (number, numeric string, tensor/array → mean, list → mean) → float or None."""
    if x is None:
        return None
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, str):  # numeric strings (CSV cells); anything else → None
        try:
            return float(x)
        except ValueError:
            return None
    if isinstance(x, (list, tuple)):
        vals = [to_float(v) for v in x]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None
    try:
        arr = to_numpy(x)
    except Exception:
        return None
    if arr.dtype.kind not in "biuf" or arr.size == 0:
        return None
    return float(arr.reshape(-1).mean())


def to_jsonable(obj: Any) -> Any:
    """Recursively convert configs, tensors, arrays, paths, non-finite floats to JSON types."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return to_jsonable(float(obj))
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # ml_collections.ConfigDict
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if hasattr(obj, "detach") or isinstance(obj, np.ndarray):
        arr = to_numpy(obj)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return to_jsonable(arr.reshape(-1)[0].item())
        if arr.dtype.kind == "c":
            return {"real": to_jsonable(arr.real.tolist()), "imag": to_jsonable(arr.imag.tolist())}
        return to_jsonable(arr.tolist())
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__dict__") and type(obj).__name__ == "Namespace":  # argparse.Namespace
        return to_jsonable(vars(obj))
    return str(obj)


def safe_name(name: str) -> str:
    """Filesystem-safe version of a solver / run name (other chars → ``_``; not injective: use
    :func:`safe_path` where distinct names must stay distinct)."""
    s = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(name)).strip("._")
    return s or "unnamed"


def name_hash(name: str, n: int = 8) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``name`` (UTF-8): stable across processes,
    machines and Python versions (unlike ``hash()``)."""
    return hashlib.sha256(str(name).encode("utf-8")).hexdigest()[:n]


def safe_path(name: str) -> str:
    """A relative path for a slice name that keeps its structure and stays distinct for distinct
    names: split at ``/``, each part kept as it is when it is already safe (``[A-Za-z0-9._+-]``,
    not starting or ending with ``.``/``_``), else :func:`safe_name` of it plus ``-`` and 8 hex
    digits of its SHA-256 (``"CT/a b/c.npy"`` → ``"CT/a_b-<hash>/c.npy"``; ``"völ"`` and
    ``"väl"`` get different folders).  Distinct names can only meet if two 32-bit hashes collide,
    which a run checks for (``run_checks.check_slice_folders``)."""
    parts = []
    for part in str(name).split("/"):
        safe = safe_name(part)
        parts.append(safe if safe == part else f"{safe}-{name_hash(part)}")
    return "/".join(parts)


def _csv_value(v):
    v = to_jsonable(v) if not isinstance(v, str) else v
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def _parse_value(v):
    if v is None or v == "":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v
