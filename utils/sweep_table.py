"""ONE table for a sweep: the run folders of ``eval_MRI_multi.sh`` / ``eval_SVCT_2d.sh`` (or any run
folders) combined into setting × solver → mean ± std PSNR / SSIM and seconds per slice.

    python -m utils.sweep_table exp/sweep_20261201-120000_mri        # → sweep.csv + sweep.md there
    python -m utils.sweep_table RUN RUN ... --out results/my_table    # → my_table.csv + my_table.md

A path holding ``metrics.csv`` is a run folder; any other path is searched one level down for run
folders (in name order, i.e. by start time).  Each run's ``config.json`` gives the setting of its
rows: the degradation, the mask and acceleration (MRI) or the views (and arc, LA-CT), and the noise
(:func:`physics.noise.noise_label`).  Rows of runs with the same setting are pooled (e.g. a sweep
resumed into a second folder).  Per setting the table also has the solvers' common input (the
zero-filled image for MRI, FBP for CT) over the setting's distinct slices.  Statistics:
final-iterate metrics, mean ± population standard deviation (ddof = 0) over slices, as in each
run's ``summary.md`` (``utils.run_log.summarize``).  Existing outputs are not overwritten unless
``--overwrite`` is given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from utils.fileio import atomic_write_text, read_csv, write_csv
from utils.run_log import summarize

__all__ = ["find_runs", "setting_of", "sweep_rows", "combine", "write_table", "main"]

METRICS = ("psnr", "ssim", "seconds")
INPUT_LABELS = {"MRI": "zero-filled (input)", "CT": "FBP (input)"}
CSV_FIELDS = ["deg", "setting", "noise", "method", "n", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std",
              "seconds_mean", "seconds_std", "runs"]


def find_runs(paths: Sequence[Any]) -> list[Path]:
    """Run folders (holding ``metrics.csv``) among ``paths`` and their sub-folders, in order."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder (pass a sweep folder or run folders)")
        if (p / "metrics.csv").is_file():
            runs.append(p)
        else:
            runs.extend(sorted(q for q in p.iterdir() if (q / "metrics.csv").is_file()))
    if not runs:
        raise FileNotFoundError(f"no run folders (with metrics.csv) in {', '.join(map(str, paths))}")
    return runs


def _modality(deg: str) -> str:
    from physics.registry import modality_of

    try:
        return modality_of(deg)
    except ValueError:
        return ""


def setting_of(config: dict, deg: str) -> tuple[str, str]:
    """``(setting, noise)`` labels of degradation ``deg`` of a run config (``config.json``)."""
    from physics.noise import noise_label

    phys = config.get("physics", {})
    if _modality(deg) == "MRI":
        setting = f"{phys.get('mask', '?')} {float(phys.get('acceleration', 0)):g}×"
    else:
        setting = f"{phys.get('num_views', '?')} views"
        if deg == "LA-CT":
            setting += f" over {float(phys.get('angle_range', 0)):g}°"
    try:
        noise = noise_label(phys)
    except ValueError as e:                   # a config written before a noise field existed
        noise = f"? ({e})"
    return setting, noise


def sweep_rows(runs: Sequence[Path]) -> list[dict]:
    """Every ``metrics.csv`` row of ``runs`` with ``setting``, ``noise`` and ``run`` added."""
    rows = []
    for run in runs:
        cfg_file = run / "config.json"
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        for r in read_csv(run / "metrics.csv"):
            deg = str(r.get("deg", ""))
            setting, noise = setting_of(config, deg) if config else (run.name, "?")
            rows.append({**r, "deg": deg, "setting": setting, "noise": noise, "run": run.name})
    return rows


def _stat(group: dict, metric: str, which: str) -> Optional[float]:
    ms = group["final"].get(metric) or {}
    return ms.get(which)


def combine(rows: Sequence[dict]) -> list[dict]:
    """Table rows: per (deg, setting, noise) first the input, then each solver (first-seen order)."""
    keys = ("deg", "setting", "noise")
    solvers = summarize(rows, metrics=METRICS, group_by=keys + ("solver",))["groups"]
    table = []
    for key in dict.fromkeys(tuple(g[k] for k in keys) for g in solvers):
        mine = [r for r in rows if tuple(str(r[k]) for k in keys) == key]
        runs = ",".join(dict.fromkeys(r["run"] for r in mine))
        seen, inputs = set(), []
        for r in mine:                         # the input image is shared by the solvers of a slice
            if (r["run"], r.get("slice")) not in seen:
                seen.add((r["run"], r.get("slice")))
                inputs.append({"psnr": r.get("input_psnr"), "ssim": r.get("input_ssim")})
        inp = summarize(inputs, metrics=("psnr", "ssim"), group_by=())["groups"][0]
        table.append(_row(key, INPUT_LABELS.get(_modality(key[0]), "input"), inp, runs))
        for g in solvers:
            if tuple(g[k] for k in keys) == key:
                table.append(_row(key, g["solver"], g, runs))
    return table


def _row(key, method: str, group: dict, runs: str) -> dict:
    out = {"deg": key[0], "setting": key[1], "noise": key[2], "method": method, "n": group["n"], "runs": runs}
    for m in METRICS:
        for which in ("mean", "std"):
            out[f"{m}_{which}"] = _stat(group, m, which) if m in group["final"] else None
    return out


def _ms(row: dict, metric: str, fmt: str) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    return "–" if mean is None else f"{mean:{fmt}} ± {std:{fmt}}"


def markdown(table: Sequence[dict]) -> str:
    """The table as markdown (one line per setting × method)."""
    head = ["Degradation", "Setting", "Noise", "Method", "n", "PSNR (dB)", "SSIM", "s/slice"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table:
        cells = [r["deg"], r["setting"], r["noise"], r["method"], str(r["n"]), _ms(r, "psnr", ".2f"),
                 _ms(r, "ssim", ".4f"), _ms(r, "seconds", ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Final-iterate metrics, mean ± population standard deviation (ddof=0) over slices; "
              "s/slice: wall-clock seconds per slice (a batched solve's time / its slices)."]
    return "\n".join(lines) + "\n"


def write_table(table: Sequence[dict], out: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """``out.csv`` and ``out.md``; existing files are an error unless ``overwrite``."""
    csv_path, md_path = out.with_suffix(".csv"), out.with_suffix(".md")
    for p in (csv_path, md_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it or --out=<other name>")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(csv_path, table, CSV_FIELDS)
    atomic_write_text(md_path, markdown(table))
    return csv_path, md_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m utils.sweep_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="a sweep folder, or run folders")
    ap.add_argument("--out", help="output name without extension (default: <first path>/sweep)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = ap.parse_args(argv)
    try:
        table = combine(sweep_rows(find_runs(args.paths)))
        out = Path(args.out) if args.out else Path(args.paths[0]) / "sweep"
        csv_path, md_path = write_table(table, out, args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"sweep_table: {e}", file=sys.stderr)
        return 2
    print(markdown(table), end="")
    print(f"combined table: {csv_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
