"""Provenance of a run: the git state of the code and the software / hardware it ran on.

* :func:`git_info` — commit, dirty flag (tracked files) and branch; never raises.
* :func:`git_diff` — ``git diff HEAD`` of a dirty tree (capped at 1 MB), or ``None``.
* :func:`environment_info` — command line, python / torch / numpy versions, host, device.
* :func:`now_iso` — the local time as an ISO-8601 string (seconds).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["git_info", "git_diff", "environment_info", "now_iso"]

_GIT_DIFF_LIMIT = 1 << 20
_REPO = Path(__file__).resolve().parent.parent


def git_info(repo: Optional[os.PathLike] = None) -> dict:
    """``{"commit", "dirty", "branch", "available", "error"}`` of the repository holding ``repo``.

    ``dirty`` considers tracked files only (``git status --porcelain --untracked-files=no``).
    Outside a git repository, or without git installed, returns ``available=False``,
    ``commit=None`` and the reason in ``error`` (never raises).
    """
    cwd = Path(repo) if repo is not None else _REPO
    out: dict[str, Any] = {"available": False, "commit": None, "dirty": None, "branch": None,
                           "error": None}

    def _git(*args) -> str:
        return subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True,
                              check=True, timeout=20).stdout.strip()

    try:
        out["commit"] = _git("rev-parse", "HEAD")
        out["dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
        with contextlib.suppress(Exception):
            out["branch"] = _git("rev-parse", "--abbrev-ref", "HEAD")
        out["available"] = True
    except FileNotFoundError:
        out["error"] = "git executable not found"
    except subprocess.CalledProcessError as e:
        out["error"] = (e.stderr or str(e)).strip()[:500] or "not a git repository"
    except (subprocess.TimeoutExpired, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def git_diff(repo: Optional[os.PathLike] = None) -> Optional[str]:
    """``git diff HEAD`` of the repository holding ``repo`` (capped at 1 MB); ``None`` on failure."""
    cwd = Path(repo) if repo is not None else _REPO
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=str(cwd), capture_output=True,
                              text=True, check=True, timeout=30).stdout
    except Exception:
        return None
    if len(diff) > _GIT_DIFF_LIMIT:
        diff = diff[:_GIT_DIFF_LIMIT] + "\n... [truncated]\n"
    return diff


def environment_info(device=None, argv: Optional[Sequence[str]] = None) -> dict:
    """Command line, python/torch/numpy versions, host, and the device (name if CUDA)."""
    argv = list(sys.argv if argv is None else argv)
    info: dict[str, Any] = {
        "argv": argv,
        "command": shlex.join(argv) if argv else "",
        "python_executable": sys.executable,
        "cwd": os.getcwd(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": platform.node(),
        "numpy": np.__version__,
        "device": None if device is None else str(device),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        dev = torch.device(device) if device is not None else None
        if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(dev)
    except Exception as e:  # torch missing or broken: record, don't fail the run
        info["torch"] = f"unavailable ({type(e).__name__})"
    return info


def now_iso() -> str:
    """The local time, ISO-8601 with the UTC offset, to the second."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
