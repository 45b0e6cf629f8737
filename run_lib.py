"""One reconstruction run (what ``main.py`` starts): check every input, make the run folder,
reconstruct every slice with every solver, write the summary.

    reconstruct(cfg, resume)
      run_checks.plan_run   config values, device, data (every slice), priors, operators, solvers,
                            output folders, a resumed run's config — all checked before anything is
                            written (bad input → :class:`run_checks.InputError`, one line)
      make_run_dir          exp/<timestamp>_<name>/ (or the resumed folder), shared by torchrun ranks
      for each degradation, for each chunk of this rank's slices (``cfg.batch_size`` slices):
        run_chunk           prepare_slice per unfinished slice, then solve per solver
      finish                metrics.csv → summary.json / summary.md, printed as a table

The path of one slice (each arrow one call)::

    data file ─utils.data─▶ x_ref ─physics.make_physics─▶ A ─simulate_measurements─▶ y
    y ─build_solver(…)(y, A, x_gt=x_ref, callback)─▶ Result(x_hat) ─RunDir.save_slice─▶ exp/<run>/…

Ground truth reaches a solver only as ``x_gt`` for the metrics callback; the reconstruction is
computed from ``y`` alone (tests check bit-identity with and without it).  Slice ``s`` uses the seed
``run_checks.slice_seed(cfg.seed, s.name)`` (measurement noise, network initialisation, every
random draw of its solve), whatever the other slices of the run, the chunk or the rank.

One path for every solver (:func:`solve`): the unfinished slices of a chunk (at most
``cfg.batch_size``) are solved TOGETHER — operators stacked (``physics.stack_physics``), one solve
with one seed per slice, the result split per slice and each slice saved; per-slice results equal
one-at-a-time ones up to float rounding.  Slices whose operators cannot be stacked (different sizes
or geometry) are solved one at a time, with a warning.  Each slice's ``seconds`` is the solve's time
/ B and ``result.json`` records the solve under ``extra`` (``batch_size``, ``batch_slices``,
``batch_seconds``, the slice's ``seed``, and for the DIP solvers ``perf`` / ``cuda_graph``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from absl import logging
from tqdm import tqdm

from physics import make_physics, modality_of, noise_from_config, simulate_measurements, stack_physics
from run_checks import InputError, build_solver, plan_run, slice_seed
from solvers.base import split_result
from utils.distributed import finish, shard, shared_run_dir
from utils.run_dir import make_run_dir
from utils.run_log import MetricsCallback, print_summary


# ------------------------------------------------------------------------------------ one slice
@dataclass
class SliceJob:
    """One slice's problem: operator, reference, measurements and solver input (seed = its own)."""
    deg: str
    name: str            # "<deg>_<sample name>", the key of rd.is_done / rd.save_slice
    seed: int
    physics: torch.nn.Module
    x_ref: torch.Tensor  # [1,H,W]
    y: torch.Tensor      # [1,...]
    x_in: torch.Tensor   # zero-filled / FBP


def prepare_slice(cfg, deg, sample, device) -> SliceJob:
    """``make_physics`` → ``simulate_measurements`` (the config's noise model, seeded with the
    slice's seed)."""
    seed = slice_seed(cfg.seed, sample.name)
    physics = make_physics(deg, cfg.physics, sample).to(device)
    x_ref = sample.x_ref[None].to(device)
    y = simulate_measurements(physics, x_ref, noise=noise_from_config(cfg.physics, modality_of(deg)), seed=seed)
    return SliceJob(deg, f"{deg}_{sample.name}", seed, physics, x_ref, y, physics.input_image(y))


def _stacked(name: str, jobs: list[SliceJob]):
    """One operator for ``jobs`` (``None``, with a warning, when they cannot be stacked)."""
    if len(jobs) == 1:
        return jobs[0].physics
    shapes = {(tuple(j.x_ref.shape), tuple(j.y.shape), j.y.dtype) for j in jobs}
    reason = "different image / measurement shapes" if len(shapes) > 1 else None
    if reason is None:
        try:
            return stack_physics([j.physics for j in jobs])
        except (ValueError, RuntimeError) as e:
            reason = str(e)
    logging.warning("%s: cannot stack the operators of %s (%s); solving them one at a time",
                    name, [j.name for j in jobs], reason)
    return None


def solve(cfg, jobs: list[SliceJob], name: str, denoiser, device, rd) -> None:
    """Reconstruct ``jobs`` with ONE solve of solver ``name`` (one seed per slice) and save every
    slice; slices whose operators cannot be stacked are solved one at a time."""
    physics = _stacked(name, jobs)
    if physics is None:
        for j in jobs:
            solve(cfg, [j], name, denoiser, device, rd)
        return
    B = len(jobs)
    solver = build_solver(cfg, name, modality_of(jobs[0].deg), denoiser, [j.seed for j in jobs], device)
    callbacks = [MetricsCallback(j.x_ref, every=1) for j in jobs]
    y = torch.cat([j.y for j in jobs])
    x_ref = torch.cat([j.x_ref for j in jobs])
    t0 = time.perf_counter()
    result = solver(y, physics, x_gt=x_ref, callback=callbacks)
    seconds = time.perf_counter() - t0
    if B > 1:
        logging.info("%s: %d slices in one batched solve (%s) in %.2f s (%.2f s per slice)",
                     name, B, ", ".join(j.name for j in jobs), seconds, seconds / B)
    batch = {"batch_size": B, "batch_slices": [j.name for j in jobs], "batch_seconds": seconds}
    if result.info.get("perf") is not None:
        batch["perf"] = result.info["perf"]
    if "cuda_graph" in result.info:      # was the DIP step replayed from a CUDA graph (perf.cuda_graph)
        batch["cuda_graph"] = {"used": bool(result.info["cuda_graph"]), "error": result.info.get("cuda_graph_error")}
    label = "zero-filled" if modality_of(jobs[0].deg) == "MRI" else "FBP"
    for j, r, cb in zip(jobs, split_result(result), callbacks):
        rd.add_timing(f"{name}/{j.name}", seconds / B)
        rd.save_slice(name, j.name, deg=j.deg, recon=r.x_hat, ref=j.x_ref, inp=j.x_in, history=cb,
                      seconds=seconds / B, solver_history=r.history, input_label=label,
                      extra={**batch, "seed": j.seed})


def run_chunk(cfg, deg, chunk, names, denoiser, device, rd) -> None:
    """Reconstruct a chunk of samples with every solver, skipping the (solver, slice) pairs
    finished in an earlier run; each solver solves the chunk's unfinished slices together."""
    keys = [f"{deg}_{s.name}" for s in chunk]
    todo = {}
    for name in names:
        todo[name] = [i for i, key in enumerate(keys) if not rd.is_done(name, key)]
        for i in (i for i in range(len(chunk)) if i not in todo[name]):
            logging.info("skip %s / %s (finished in an earlier run)", name, keys[i])
    needed = sorted({i for idx in todo.values() for i in idx})
    jobs = {i: prepare_slice(cfg, deg, chunk[i], device) for i in needed}
    for name in names:
        if todo[name]:
            solve(cfg, [jobs[i] for i in todo[name]], name, denoiser, device, rd)


# ------------------------------------------------------------------------------------------ a run
def reconstruct(cfg, resume=None):
    """Run ``cfg`` (a ``configs/*.py`` config with the command-line overrides applied), into a new
    run folder or into ``resume``; returns the summary (``None`` on torchrun ranks other than 0)."""
    torch.manual_seed(cfg.seed)     # a safety net: library code draws from seeded generators only
    plan = plan_run(cfg, resume)
    info, device, bs = plan.info, plan.device, plan.batch_size
    try:
        rd, token = shared_run_dir(info, lambda: make_run_dir(
            cfg.workdir, name=cfg.run_name or None, resume=resume, config=cfg, config_source=None, device=device))
    except OSError as e:
        raise InputError(f"cannot create the run folder under --workdir={cfg.workdir}: {e}") from None
    logging.info("run folder: %s (rank %d of %d)", rd.path, info.rank, info.world_size)
    if info.is_main:
        print(f"run folder: {rd.path}", flush=True)
    for deg, samples, denoiser in plan.degradations:
        mine = shard(samples, info.rank, info.world_size)   # round-robin; seeds follow the slice names
        desc = f"{deg} slices" + (f" (batches of {bs})" if bs > 1 else "")
        with tqdm(total=len(mine), desc=desc, dynamic_ncols=True, disable=not info.is_main) as bar:
            for c in range(0, len(mine), bs):
                chunk = mine[c:c + bs]
                run_chunk(cfg, deg, chunk, plan.names, denoiser, device, rd)
                bar.update(len(chunk))
    summary = finish(rd, info, token)   # 1 process: write_summary; several: rank 0 merges
    if summary is not None:
        print_summary(summary)
        print(f"results: {rd.path}/metrics.csv, {rd.path}/summary.json")
    return summary


__all__ = ["InputError", "reconstruct", "plan_run", "build_solver", "solve", "run_chunk", "prepare_slice",
           "SliceJob"]
