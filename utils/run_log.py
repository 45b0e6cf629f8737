"""Metric tracking during a solve and per-run summaries (the run's log of numbers).

* :class:`MetricsCallback` — the ``callback(step, x_hat, info)`` handed to a solver; records
  step, PSNR/SSIM/NMSE against the reference and every scalar loss found in ``info``.  Its
  :attr:`~MetricsCallback.history` feeds ``curves.csv``/``curves.png``; :meth:`oracle` gives the
  best PSNR over the logged iterates (uses the reference → reported only as ``oracle_*``).
* :func:`summarize` — mean ± std per (solver, deg) over metrics rows; final-iterate metrics are
  the headline (``"final"``), oracle values sit only under ``"oracle_best_over_iterations"``.
* :func:`summary_markdown` / :func:`print_summary` — the README / end-of-run table.

Imports ``utils.fileio`` and ``utils.metrics`` only (both leaves).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from utils.fileio import to_float, write_csv
from utils.metrics import compute_metrics

#: Metrics aggregated as the headline (final iterate / solver input).
HEADLINE_METRICS = ("psnr", "ssim", "nmse", "input_psnr", "input_ssim", "seconds")
#: Oracle metrics (best over iterations chosen WITH the reference) — reported separately.
ORACLE_METRICS = ("oracle_best_psnr", "oracle_best_iter")
_METRIC_KEYS = ("psnr", "ssim", "nmse")


class MetricsCallback:
    """Solver callback ``(step, x_hat, info)`` recording image metrics and losses per log step.

    Args:
        x_ref: reference image ``[B,H,W]`` (or ``[H,W]``), complex for MRI, real for CT.
        every: record only when ``step % every == 0`` (solvers already call every
            ``log_every`` steps; keep 1 unless you want to thin further).
        compute: ``compute(x_hat, x_ref) -> {"psnr", "ssim", "nmse", ...}``; default
            ``utils.metrics.compute_metrics`` with ``convention``.  Per-slice tensors/lists
            (``B>1``) are averaged over the batch.
        convention: passed to the default ``compute_metrics`` (``"fastmri"`` or ``"dds"``).
        log: optional ``print``-like function / logger method, called with a one-line summary
            every ``log_every_print`` recorded steps (0 = never).

    ``x_hat`` is never modified: metrics are computed on a detached clone.  Each record holds
    ``step``, ``psnr``, ``ssim``, ``nmse`` and every scalar in ``info`` (tensors with one
    element, numbers, strings such as ``phase``; ``x_gt`` and larger tensors are skipped).
    """

    def __init__(self, x_ref, every: int = 1, compute: Optional[Callable[..., Mapping]] = None,
                 convention: str = "fastmri", log: Optional[Callable[[str], Any]] = None,
                 log_every_print: int = 0) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.x_ref = x_ref.detach() if hasattr(x_ref, "detach") else x_ref
        self.every = int(every)
        self.convention = convention
        self._compute = compute
        self.log = log
        self.log_every_print = int(log_every_print)
        self.records: list[dict[str, Any]] = []

    # -- callback ---------------------------------------------------------------------------
    def _metrics(self, x_hat, x_ref) -> Mapping:
        if self._compute is not None:
            return self._compute(x_hat, x_ref)
        return compute_metrics(x_hat, x_ref, convention=self.convention)

    def __call__(self, step: int, x_hat, info: Optional[Mapping[str, Any]] = None) -> None:
        if int(step) % self.every != 0:
            return
        x = x_hat.detach().clone() if hasattr(x_hat, "detach") else np.array(x_hat, copy=True)
        ref = self.x_ref
        if hasattr(ref, "to") and hasattr(x, "device") and ref.device != x.device:
            ref = ref.to(x.device)
            self.x_ref = ref  # cache on the solver's device
        if hasattr(x, "ndim") and x.ndim == 2:
            x = x[None]
        if hasattr(ref, "ndim") and ref.ndim == 2:
            ref = ref[None]
        rec: dict[str, Any] = {"step": int(step)}
        m = self._metrics(x, ref)
        for k, v in m.items():
            f = to_float(v)
            if f is not None:
                rec[k] = f
        for k, v in (info or {}).items():
            if k == "x_gt" or k in rec:
                continue
            if isinstance(v, str):
                rec[k] = v
                continue
            if hasattr(v, "numel") and v.numel() != 1:
                continue
            if isinstance(v, np.ndarray) and v.size != 1:
                continue
            if isinstance(v, (list, tuple, dict)):
                continue
            f = to_float(v)
            if f is not None:
                rec[k] = f
        self.records.append(rec)
        if self.log is not None and self.log_every_print and \
                len(self.records) % self.log_every_print == 0:
            self.log(format_record(rec))

    # -- accessors --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    @property
    def history(self) -> dict[str, list]:
        """Column view ``{key: [value per record]}`` (``None`` where a record lacks the key)."""
        return records_to_columns(self.records)

    def last(self) -> dict[str, Any]:
        """The most recent record (``{}`` if none)."""
        return dict(self.records[-1]) if self.records else {}

    def oracle(self) -> dict[str, Any]:
        """``{"oracle_best_psnr", "oracle_best_iter"}`` over recorded steps (uses the reference)."""
        return oracle_from_history(self.history)

    def to_csv(self, path) -> Path:
        """Atomically write the history as CSV."""
        return save_history_csv(path, self.history)


# ---------------------------------------------------------------------------------------------
# History helpers
# ---------------------------------------------------------------------------------------------
def records_to_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """List of dicts → dict of equal-length lists (missing → ``None``), key order preserved."""
    keys: list[str] = []
    for r in records:
        for k in r:
            if k not in keys:
                keys.append(k)
    return {k: [r.get(k) for r in records] for k in keys}


def history_columns(history) -> dict[str, list]:
    """Normalise a history: a :class:`MetricsCallback`, a dict of lists or a list of dicts."""
    if history is None:
        return {}
    if isinstance(history, MetricsCallback):
        return history.history
    if hasattr(history, "history") and not isinstance(history, Mapping):
        return history_columns(history.history)
    if isinstance(history, Mapping):
        out: dict[str, list] = {}
        for k, v in history.items():
            if hasattr(v, "tolist"):  # tensor / ndarray
                v = v.tolist()
            if not isinstance(v, (list, tuple)):
                v = [v]
            out[str(k)] = [x.item() if hasattr(x, "item") else x for x in v]
        return out
    return records_to_columns(list(history))


def save_history_csv(path, history) -> Path:
    """Atomically write a history (see :func:`history_columns`) as CSV, ``step`` first.

    Columns of different lengths are padded with empty cells.
    """
    cols = history_columns(history)
    n = max((len(v) for v in cols.values()), default=0)
    keys = (["step"] if "step" in cols else []) + [k for k in cols if k != "step"]
    rows = [{k: (cols[k][i] if i < len(cols[k]) else None) for k in keys} for i in range(n)]
    return write_csv(path, rows, keys)


def oracle_from_history(history) -> dict[str, Any]:
    """Best PSNR over the logged iterates and its step: ``{"oracle_best_psnr",
    "oracle_best_iter"}`` (``None`` values without a PSNR history).

    This selects an iterate with the ground truth, so it is an *oracle* number: report it only
    in the labelled ``oracle_*`` fields, never as the method's result.
    """
    cols = history_columns(history)
    ps = cols.get("psnr") or []
    steps = cols.get("step") or list(range(len(ps)))
    best, best_i = None, None
    for i, p in enumerate(ps):
        f = to_float(p)
        if f is None or not math.isfinite(f):
            continue
        if best is None or f > best:
            best, best_i = f, i
    if best is None:
        return {"oracle_best_psnr": None, "oracle_best_iter": None}
    it = steps[best_i] if best_i < len(steps) else best_i
    return {"oracle_best_psnr": best, "oracle_best_iter": None if it is None else int(it)}


def format_record(rec: Mapping[str, Any]) -> str:
    """One-line text of a record, e.g. ``step 100 | psnr 31.20 | ssim 0.8610 | loss 1.2e-03``."""
    parts = []
    for k, v in rec.items():
        if isinstance(v, float):
            if k == "psnr" or k.endswith("psnr"):
                parts.append(f"{k} {v:.2f}")
            elif k.startswith("ssim") or k.endswith("ssim"):
                parts.append(f"{k} {v:.4f}")
            else:
                parts.append(f"{k} {v:.3e}")
        else:
            parts.append(f"{k} {v}")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[Any], ddof: int) -> dict[str, Any]:
    vals = [f for f in (to_float(v) for v in values) if f is not None and math.isfinite(f)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=ddof)) if len(arr) > ddof else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(len(arr))}


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = HEADLINE_METRICS,
              group_by: Sequence[str] = ("solver", "deg"), ddof: int = 0) -> dict:
    """Mean ± std over slices for each (solver, deg) group of metrics rows.

    ``rows``: dicts as in ``metrics.csv`` (numbers or numeric strings; empty/None/NaN ignored).
    Returns::

        {"headline": "...", "std": "population std (ddof=0) over slices",
         "groups": [{"solver": ..., "deg": ..., "n": <rows>,
                     "final": {"psnr": {"mean", "std", "n"}, "ssim": ..., ...},
                     "oracle_best_over_iterations": {"note": ..., "oracle_best_psnr": {...},
                                                     "oracle_best_iter": {...}}}, ...]}

    Groups are ordered by first appearance.  ``"final"`` holds the headline (final-iterate)
    numbers; oracle numbers (best iterate selected using the reference) appear only in the
    labelled ``oracle_best_over_iterations`` block.
    """
    groups: dict[tuple, list] = {}
    for r in rows:
        key = tuple("" if r.get(g) is None else str(r.get(g)) for g in group_by)
        groups.setdefault(key, []).append(r)
    out_groups = []
    for key, rs in groups.items():
        g: dict[str, Any] = dict(zip(group_by, key))
        g["n"] = len(rs)
        g["final"] = {m: _mean_std([r.get(m) for r in rs], ddof) for m in metrics}
        g["oracle_best_over_iterations"] = {
            "note": "ORACLE: best iterate chosen with the reference image; not a valid result",
            **{m: _mean_std([r.get(m) for r in rs], ddof) for m in ORACLE_METRICS},
        }
        out_groups.append(g)
    return {
        "headline": "final-iterate metrics (mean ± std over slices) under 'final'",
        "std": f"{'population' if ddof == 0 else 'sample'} standard deviation (ddof={ddof}) "
               "over slices",
        "group_by": list(group_by),
        "groups": out_groups,
    }


_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "nmse": "NMSE", "input_psnr": "Input PSNR",
           "input_ssim": "Input SSIM", "seconds": "Time (s)",
           "oracle_best_psnr": "Oracle best PSNR*", "oracle_best_iter": "Oracle best iter*"}
_FMT = {"psnr": ".2f", "input_psnr": ".2f", "ssim": ".4f", "input_ssim": ".4f", "nmse": ".4g",
        "seconds": ".1f", "oracle_best_psnr": ".2f", "oracle_best_iter": ".0f"}


def _fmt_ms(ms: Mapping[str, Any], key: str) -> str:
    if not ms or ms.get("mean") is None:
        return "–"
    f = _FMT.get(key, ".4g")
    return f"{ms['mean']:{f}} ± {ms['std']:{f}}"


def summary_markdown(summary: Mapping[str, Any],
                     metrics: Sequence[str] = ("psnr", "ssim", "input_psnr", "input_ssim",
                                               "seconds"),
                     oracle: bool = False) -> str:
    """Markdown table (one line per group) of ``mean ± std``; ``oracle=True`` adds the
    ``oracle_best_psnr`` column, labelled with ``*`` and a footnote."""
    group_by = list(summary.get("group_by", ["solver", "deg"]))
    cols = list(metrics) + (["oracle_best_psnr"] if oracle else [])
    head = [g.capitalize() if g != "deg" else "Degradation" for g in group_by] + ["n"] + \
        [_LABELS.get(m, m) for m in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for g in summary.get("groups", []):
        cells = [str(g.get(k, "")) for k in group_by] + [str(g.get("n", ""))]
        for m in cols:
            src = g["oracle_best_over_iterations"] if m in ORACLE_METRICS else g["final"]
            cells.append(_fmt_ms(src.get(m), m))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Final-iterate metrics, mean ± {summary.get('std', 'std')}.")
    if oracle:
        lines.append("\\* Oracle: best PSNR over iterations, selected with the reference image "
                     "(not achievable in practice).")
    return "\n".join(lines)


def print_summary(summary: Mapping[str, Any], file=None, **kwargs) -> str:
    """Print :func:`summary_markdown` (to stdout by default) and return the text."""
    text = summary_markdown(summary, **kwargs)
    print(text, file=file or sys.stdout, flush=True)
    return text


__all__ = [
    "MetricsCallback", "summarize", "summary_markdown", "print_summary", "oracle_from_history",
    "history_columns", "records_to_columns", "save_history_csv", "format_record",
    "HEADLINE_METRICS", "ORACLE_METRICS",
]
