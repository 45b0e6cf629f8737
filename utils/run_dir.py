"""Run folders under ``exp/``: crash-safe, never overwritten, resumable.

Layout of one run (``exp/<YYYYmmdd-HHMMSS>_<name>[_<k>]/``)::

    meta.json            git commit + dirty flag, command line, torch version, device, start time
    git_diff.patch       ``git diff HEAD`` when the tree was dirty (capped at 1 MB)
    config.json/.yaml    config snapshot (+ ``config_source.<ext>`` copy of the config file)
    metrics.csv          one row per (solver, slice): METRIC_COLUMNS (+ any extra keys)
    summary.json/.md     mean ± std per (solver, deg); final-iterate metrics are the headline,
                         the oracle best-over-iterations values only under a labelled key
    timings.json         accumulated wall-clock seconds per named phase
    slices/<solver>/<slice path>/   (utils.fileio.safe_path: the slice name's structure kept,
                                     a part with other characters gets a short hash, so distinct
                                     names never share a folder)
        recon.npy        final reconstruction (complex for MRI, real for CT), batch dim squeezed
        recon.png        magnitude image
        comparison.png   reference | input | reconstruction | |rec - ref| with PSNR/SSIM titles
        curves.csv/.png  per-logged-iteration step, psnr, ssim, nmse, losses
        solver_history.csv  the solver's own ``Result.history`` (if given)
        result.json      the metrics row + extras (source of truth for ``metrics.csv``)
        DONE             completion marker, written LAST

Crash safety: every file is written through ``utils.fileio.atomic_writer`` (temp file in the same
folder, fsync, ``os.replace``), so a killed run leaves either the old or the new version of each file,
never a truncated one.  A slice counts as finished only once ``DONE`` exists; its row is added to
``metrics.csv`` after that.  Reopening with ``resume=`` re-derives ``metrics.csv`` from the
``result.json`` of finished slices, so an interruption between the marker and the CSV update
loses nothing and no row is ever duplicated.  A ``DONE`` without a readable ``result.json`` of that
slice does not count: the slice is computed again (with a warning), never silently dropped.

Typical use (``run_lib.py`` does this for every slice and solver)::

    rd = make_run_dir("exp", name=args.name, resume=args.resume, config=cfg, device=device)
    for sl in slices:
        for solver_name, solver in solvers.items():
            if rd.is_done(solver_name, sl.name):
                continue                                   # --resume: skip finished slices
            cb = MetricsCallback(sl.x_ref, every=cfg.log_every)
            with rd.timer("solve") as t:
                res = solver(sl.y, physics, x_gt=sl.x_ref, callback=cb)
            rd.save_slice(solver_name, sl.name, deg=deg, recon=res.x_hat, ref=sl.x_ref,
                          inp=physics.input_image(sl.y), history=cb, seconds=t.seconds,
                          solver_history=res.history)
    summary = rd.write_summary()
    print_summary(summary)                # utils.run_log

A run covers one degradation per (solver, slice name); if one run mixes degradations, put the
degradation into the slice name (e.g. ``f"{deg}/{name}"``) so the keys stay unique.

Layering: this module imports ``utils.fileio``, ``utils.provenance``, ``utils.run_log``,
``utils.metrics`` and ``utils.plots``; none of them imports it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from utils.fileio import (atomic_save_npy, atomic_write_json, atomic_write_text, read_csv, safe_name, safe_path,
                          to_float, to_jsonable, to_numpy, write_csv)
from utils.metrics import compute_metrics
from utils.plots import comparison_figure, curves_png, save_image_png
from utils.provenance import environment_info, git_diff, git_info, now_iso
from utils.run_log import history_columns, oracle_from_history, save_history_csv, summarize, summary_markdown

#: Column order of ``metrics.csv`` (extra keys, if any, follow these).  ``oracle_*`` columns use
#: the reference image to pick the best iterate and are NOT the headline numbers.
METRIC_COLUMNS = (
    "run", "solver", "deg", "slice", "psnr", "ssim", "nmse", "input_psnr", "input_ssim",
    "seconds", "oracle_best_psnr", "oracle_best_iter",
)

DONE_MARKER = "DONE"
RESULT_JSON = "result.json"
log = logging.getLogger(__name__)


class _Timer:
    """Result of :meth:`RunDir.timer`; ``seconds`` is set when the ``with`` block exits."""

    def __init__(self) -> None:
        self.seconds: float = float("nan")


class RunDir:
    """One run folder; see the module docstring for the layout and the crash-safety rules."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise FileNotFoundError(f"run folder {self.path} does not exist")
        self.name = self.path.name
        self.timings: dict[str, float] = {}
        tj = self.path / "timings.json"
        if tj.exists():
            with contextlib.suppress(Exception):
                self.timings = {k: float(v) for k, v in
                                json.loads(tj.read_text()).get("seconds", {}).items()}

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # -- paths ------------------------------------------------------------------------------
    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @staticmethod
    def slice_folder(solver: str, slice_name: str) -> str:
        """``slices/<solver>/<slice path>`` relative to the run folder (:func:`utils.fileio.safe_path`)."""
        return f"slices/{safe_name(solver)}/{safe_path(slice_name)}"

    def slice_dir(self, solver: str, slice_name: str, create: bool = False) -> Path:
        """``<run>/slices/<solver>/<slice path>/`` (:meth:`slice_folder`)."""
        d = self.path / self.slice_folder(solver, slice_name)
        if create:
            d.mkdir(parents=True, exist_ok=True)
        return d

    def _finished(self, d: Path, solver: str, slice_name: str) -> Optional[bool]:
        """``True``: ``d`` holds the finished slice (``DONE`` + its ``result.json``); ``False``: a
        ``DONE`` without a readable ``result.json`` of this slice; ``None``: no ``DONE``."""
        if not (d / DONE_MARKER).is_file():
            return None
        try:
            row = json.loads((d / RESULT_JSON).read_text())["row"]
            return (str(row["solver"]), str(row["slice"])) == (str(solver), str(slice_name))
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def is_done(self, solver: str, slice_name: str) -> bool:
        """True when the slice is finished: its ``DONE`` marker AND a readable ``result.json`` of
        this (solver, slice) exist.  A ``DONE`` without it is reported and counts as unfinished (the
        slice is computed again).  Run folders written before slice paths kept their structure
        (``slices/<solver>/<safe_name(slice)>``) are recognised by the slice name in their
        ``result.json``."""
        state = self._finished(self.slice_dir(solver, slice_name), solver, slice_name)
        if state is None:
            legacy = self.path / "slices" / safe_name(solver) / safe_name(slice_name)
            state = self._finished(legacy, solver, slice_name) or None
        if state is False:
            log.warning("%s / %s: DONE marker without a readable result.json of this slice in %s; "
                        "computing the slice again", solver, slice_name, self.slice_dir(solver, slice_name))
        return bool(state)

    # -- provenance -------------------------------------------------------------------------
    def save_meta(self, argv: Optional[Sequence[str]] = None, device=None,
                  extra: Optional[Mapping[str, Any]] = None) -> dict:
        """Write ``meta.json`` (git commit + dirty flag, command line, versions, device).

        On a resumed run the original entry is kept and this invocation is appended to
        ``meta["resumes"]``.  A dirty tree's ``git diff HEAD`` goes to ``git_diff.patch``.
        """
        git = git_info()
        entry = {"time": now_iso(), "git": git, **environment_info(device, argv)}
        if extra:
            entry["extra"] = dict(extra)
        p = self.path / "meta.json"
        if p.exists():
            try:
                meta = json.loads(p.read_text())
            except Exception:
                meta = {"run": self.name, "note": "previous meta.json unreadable"}
            meta.setdefault("resumes", []).append(entry)
        else:
            meta = {"run": self.name, "path": str(self.path), "created": entry["time"], **entry}
        atomic_write_json(p, meta)
        if git.get("dirty"):
            diff = git_diff()
            if diff:
                name = "git_diff.patch" if not (self.path / "git_diff.patch").exists() else \
                    f"git_diff.resume{len(meta.get('resumes', []))}.patch"
                atomic_write_text(self.path / name, diff)
        return meta

    def save_config(self, config: Any, source: Optional[os.PathLike] = None) -> Path:
        """Snapshot ``config`` (ConfigDict / dataclass / dict / Namespace) as JSON and YAML.

        ``source``: path of the config file; its text is copied to ``config_source<suffix>``.
        If a snapshot already exists (resume) and differs, the new one is written as
        ``config.resume<k>.json`` instead, so the original is never overwritten.
        """
        data = to_jsonable(config)
        text = json.dumps(data, indent=2) + "\n"
        target = self.path / "config.json"
        if target.exists():
            if target.read_text() == text:
                return target
            k = 1
            while (self.path / f"config.resume{k}.json").exists():
                k += 1
            target = self.path / f"config.resume{k}.json"
        atomic_write_text(target, text)
        if target.name == "config.json":
            with contextlib.suppress(Exception):
                import yaml

                atomic_write_text(self.path / "config.yaml",
                                  yaml.safe_dump(data, sort_keys=False))
            if source is not None and Path(source).is_file():
                atomic_write_text(self.path / f"config_source{Path(source).suffix or '.txt'}",
                                  Path(source).read_text())
        return target

    # -- timings ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def timer(self, name: str) -> Iterator[_Timer]:
        """``with rd.timer("load_prior") as t:`` — adds the elapsed seconds to ``timings.json``
        under ``name`` (accumulated across calls and resumes); ``t.seconds`` holds this one."""
        t = _Timer()
        t0 = time.perf_counter()
        try:
            yield t
        finally:
            t.seconds = time.perf_counter() - t0
            self.add_timing(name, t.seconds)

    def add_timing(self, name: str, seconds: float) -> None:
        """Accumulate ``seconds`` under ``name`` and rewrite ``timings.json``."""
        self.timings[name] = self.timings.get(name, 0.0) + float(seconds)
        atomic_write_json(self.path / "timings.json",
                          {"seconds": self.timings, "updated": now_iso()})

    # -- per-slice outputs ------------------------------------------------------------------
    def save_slice(self, solver: str, slice_name: str, *, recon, ref=None, inp=None,
                   deg: str = "", metrics: Optional[Mapping[str, Any]] = None,
                   input_metrics: Optional[Mapping[str, Any]] = None, history=None,
                   seconds: Optional[float] = None, oracle: Optional[Mapping[str, Any]] = None,
                   solver_history: Optional[Mapping[str, Sequence]] = None,
                   extra: Optional[Mapping[str, Any]] = None, input_label: str = "input",
                   plots: bool = True) -> dict:
        """Write every output of one (solver, slice), then ``DONE``, then the ``metrics.csv`` row.

        Args:
            recon, ref, inp: final reconstruction, reference, solver input (zero-filled / FBP);
                ``[H,W]`` or ``[1,H,W]`` tensors/arrays, complex (MRI) or real (CT).
            deg: degradation name (``MRI-multi``, ``SV-CT``, ...), stored in the row.
            metrics / input_metrics: dicts with ``psnr``, ``ssim``, ``nmse`` of the final iterate /
                of ``inp``.  When ``None`` and ``ref`` is given they are computed with
                ``utils.metrics.compute_metrics``.
            history: a :class:`utils.run_log.MetricsCallback` or a dict of per-log-step lists
                (``step``, ``psnr``, ``ssim``, losses) → ``curves.csv``/``curves.png``.
            oracle: ``{"oracle_best_psnr", "oracle_best_iter"}``; default: derived from
                ``history`` (max PSNR over the logged iterates — uses the reference, so it is
                reported only in the ``oracle_*`` columns, never as the headline).
            solver_history: the solver's ``Result.history`` (written to ``solver_history.csv``).
            extra: more JSON-able keys stored in ``result.json`` (not in the CSV).
            input_label: e.g. ``"zero-filled"`` or ``"FBP"`` for the comparison figure.
        Returns the metrics row (dict with ``METRIC_COLUMNS``).
        """
        d = self.slice_dir(solver, slice_name, create=True)
        marker = d / DONE_MARKER
        if marker.exists():  # re-doing a finished slice: invalidate first, marker is last again
            marker.unlink()

        if (metrics is None or (input_metrics is None and inp is not None)) and ref is not None:
            if metrics is None:
                metrics = compute_metrics(_as_batch(recon), _as_batch(ref))
            if input_metrics is None and inp is not None:
                input_metrics = compute_metrics(_as_batch(inp), _as_batch(ref))
        metrics = dict(metrics or {})
        input_metrics = dict(input_metrics or {})

        hist = history_columns(history) if history is not None else {}
        if oracle is None:
            oracle = oracle_from_history(hist)

        row: dict[str, Any] = {
            "run": self.name, "solver": solver, "deg": deg, "slice": slice_name,
            "psnr": to_float(metrics.get("psnr")), "ssim": to_float(metrics.get("ssim")),
            "nmse": to_float(metrics.get("nmse")),
            "input_psnr": to_float(input_metrics.get("psnr")),
            "input_ssim": to_float(input_metrics.get("ssim")),
            "seconds": to_float(seconds),
            "oracle_best_psnr": to_float((oracle or {}).get("oracle_best_psnr")),
            "oracle_best_iter": (oracle or {}).get("oracle_best_iter"),
        }
        if row["oracle_best_iter"] is not None:
            row["oracle_best_iter"] = int(to_float(row["oracle_best_iter"]))

        rec_np = _squeeze_image(to_numpy(recon))
        atomic_save_npy(d / "recon.npy", rec_np)
        if hist:
            save_history_csv(d / "curves.csv", hist)
        if solver_history:
            save_history_csv(d / "solver_history.csv", solver_history)
        if plots:
            save_image_png(d / "recon.png", rec_np)
            if ref is not None or inp is not None:
                comparison_figure(
                    d / "comparison.png", ref, inp, rec_np, input_metrics=input_metrics or None,
                    rec_metrics=metrics or None, input_label=input_label,
                    rec_label=f"{solver}", suptitle=f"{slice_name}  [{deg}]" if deg else slice_name)
            if hist:
                curves_png(d / "curves.png", hist, title=f"{solver} — {slice_name}")

        result = {"row": row, "metrics": metrics, "input_metrics": input_metrics,
                  "oracle": oracle, "finished_at": time.time(), "finished": now_iso(),
                  "extra": dict(extra or {})}
        atomic_write_json(d / RESULT_JSON, result)
        atomic_write_text(marker, now_iso() + "\n")  # LAST file of the slice
        self.append_metrics_row(row, replace=True)
        return row

    # -- metrics.csv ------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """Rows of ``metrics.csv`` (numbers parsed)."""
        return read_csv(self.metrics_csv)

    def append_metrics_row(self, row: Mapping[str, Any], replace: bool = False) -> bool:
        """Add ``row`` to ``metrics.csv`` unless its (solver, slice) is already there.

        ``replace=True`` swaps an existing row of that key for ``row`` instead (used when a
        finished slice is saved again).  The file is rewritten atomically.  Returns True if the
        file changed.
        """
        rows = self.read_metrics()
        key = (str(row["solver"]), str(row["slice"]))
        same = [(str(r.get("solver")), str(r.get("slice"))) == key for r in rows]
        if any(same):
            if not replace:
                return False
            rows = [r for r, s in zip(rows, same) if not s]
        rows.append(dict(row))
        write_csv(self.metrics_csv, rows, METRIC_COLUMNS)
        return True

    def finished_results(self) -> list[dict[str, Any]]:
        """``result.json`` contents of all finished (``DONE``) slices, in completion order (a
        marker without a readable ``result.json`` is reported and left out: :meth:`is_done` treats
        that slice as unfinished, so it is computed again)."""
        out = []
        root = self.path / "slices"
        if not root.is_dir():
            return out
        for marker in root.rglob(DONE_MARKER):
            rj = marker.parent / RESULT_JSON
            try:
                res = json.loads(rj.read_text())
                if not {"solver", "slice"} <= set(res["row"]):
                    raise ValueError("no solver/slice in its row")
            except Exception:
                log.warning("%s without a readable %s: that slice counts as unfinished", marker, RESULT_JSON)
                continue
            out.append(res)
        out.sort(key=lambda r: (r.get("finished_at") or 0.0, str(r["row"].get("solver")),
                                str(r["row"].get("slice"))))
        return out

    def sync_metrics(self) -> list[dict[str, Any]]:
        """Rebuild ``metrics.csv`` from finished slices' ``result.json`` (one row per key).

        Called when a run is resumed: rows of finished slices missing from the CSV (killed
        between ``DONE`` and the CSV update) are restored, rows without a finished slice and
        duplicates are dropped.  Returns the rows.
        """
        rows, seen = [], set()
        for res in self.finished_results():
            r = res["row"]
            key = (str(r.get("solver")), str(r.get("slice")))
            if key in seen:
                continue
            seen.add(key)
            rows.append({**r, "run": self.name})
        if rows or self.metrics_csv.exists():
            write_csv(self.metrics_csv, rows, METRIC_COLUMNS)
        return rows

    # -- summary ----------------------------------------------------------------------------
    def write_summary(self, rows: Optional[Sequence[Mapping[str, Any]]] = None) -> dict:
        """Write ``summary.json`` (see :func:`utils.run_log.summarize`) and ``summary.md``."""
        rows = self.read_metrics() if rows is None else list(rows)
        summary = summarize(rows)
        summary["run"] = self.name
        summary["timings_seconds"] = dict(self.timings)
        summary["total_slice_seconds"] = float(
            sum(to_float(r.get("seconds")) or 0.0 for r in rows))
        atomic_write_json(self.path / "summary.json", summary)
        atomic_write_text(self.path / "summary.md", summary_markdown(summary) + "\n")
        return summary


def _squeeze_image(a: np.ndarray) -> np.ndarray:
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    return a


def _as_batch(x):
    """``[H,W]`` → ``[1,H,W]`` torch tensor (for ``compute_metrics``)."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    while t.ndim > 3 and t.shape[0] == 1:
        t = t[0]
    return t.unsqueeze(0) if t.ndim == 2 else t


def _timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def make_run_dir(root: os.PathLike = "exp", name: Optional[str] = None,
                 resume: Optional[os.PathLike] = None, *, config: Any = None,
                 config_source: Optional[os.PathLike] = None, device=None,
                 argv: Optional[Sequence[str]] = None, write_meta: bool = True) -> RunDir:
    """Create a NEW run folder ``<root>/<YYYYmmdd-HHMMSS>[_<name>]`` or reopen ``resume``.

    * New run: if the folder exists (same second, same name) a suffix ``_1``, ``_2``, ... is
      added; creation uses ``os.mkdir`` so two concurrent runs can never share a folder.
    * ``resume=<path>``: reopen that existing run (``FileNotFoundError`` if missing) and rebuild
      ``metrics.csv`` from the finished slices; use :meth:`RunDir.is_done` to skip them.
    * ``config`` / ``config_source``: snapshot via :meth:`RunDir.save_config`.
    * ``write_meta``: write/append ``meta.json`` (git commit, dirty flag, argv, torch, device).
    """
    if resume is not None:
        rd = RunDir(resume)
        rd.sync_metrics()
    else:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        base = _timestamp() + (f"_{safe_name(name)}" if name else "")
        k = 0
        while True:
            cand = root / (base if k == 0 else f"{base}_{k}")
            try:
                cand.mkdir()
                break
            except FileExistsError:
                k += 1
        rd = RunDir(cand)
    if write_meta:
        rd.save_meta(argv=argv, device=device)
    if config is not None:
        rd.save_config(config, source=config_source)
    return rd


__all__ = ["METRIC_COLUMNS", "DONE_MARKER", "RESULT_JSON", "RunDir", "make_run_dir"]
