"""One reconstruction run (what ``main.py`` starts): check every input, make the run folder,
reconstruct every slice with every solver, write the summary.

    reconstruct(cfg, resume)
      plan_run            flags/config, device, data, priors, solver configs — all checked before
                          anything is written (bad input → :class:`InputError`, one line)
      open_run_dir        exp/<timestamp>_<name>/ (or the resumed folder), shared by torchrun ranks
      for each degradation, for each chunk of this rank's slices (``cfg.batch_size`` slices):
        run_chunk         prepare_slice per unfinished slice, then solve_chunk per solver
      finish              metrics.csv → summary.json / summary.md, printed as a table

The path of one slice (each arrow one call)::

    data file ─utils.data─▶ x_ref ─physics.make_physics─▶ A ─simulate_measurements─▶ y
    y ─build_solver(…)(y, A, x_gt=x_ref, callback)─▶ Result(x_hat) ─RunDir.save_slice─▶ exp/<run>/…

Ground truth reaches a solver only as ``x_gt`` for the metrics callback; the reconstruction is
computed from ``y`` alone (tests check bit-identity with and without it).  Slice ``i`` (its index
in the degradation's slice list, whatever the rank or chunk) uses seed ``cfg.seed + i``.

With ``cfg.batch_size = B > 1`` the solvers of :data:`BATCHED_SOLVERS` reconstruct the unfinished
slices of a chunk in ONE batched solve (operators stacked, the same ``y`` and seed per slice as a
one-at-a-time run, so the results agree up to float rounding); each slice is saved as in the
one-slice path, its ``seconds`` are the batch's time / B and ``result.json`` records the batch
under ``extra``.  How solvers are built and batched is confined to the section "Solvers" below.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from absl import logging
from tqdm import tqdm

import solvers
from configs.base import solver_config_for
from physics import make_physics, modality_of, noise_from_config, simulate_measurements, stack_physics
from solvers.base import split_result
from utils.data import load_dataset
from utils.distributed import device_for, dist_info, finish, init_distributed, shard, shared_run_dir
from utils.fileio import to_jsonable
from utils.run_dir import make_run_dir
from utils.run_log import MetricsCallback, print_summary


class InputError(ValueError):
    """Bad input found before the run folder is made (``main.py`` prints it as a usage error)."""


# ------------------------------------------------------------------------------------------ solvers
#: Solvers that reconstruct several slices in one solve (``seeds``: one per slice).
BATCHED_SOLVERS = tuple(solvers.REGISTRY)      # every solver takes a batch of slices
#: Solvers that take ``perf`` (``config.perf``, ``solvers/perf.py``: the DIP solvers).
PERF_SOLVERS = tuple(n for n in solvers.REGISTRY if solvers.takes_perf(n))


def graph_path(cfg, name: str, device) -> bool:
    """Whether solver ``name`` replays its DIP steps from a CUDA graph (``config.perf.cuda_graph``,
    "auto" = on CUDA); such chunks go through :func:`solve_batch` even for a single slice."""
    from solvers.perf import graph_wanted

    return name in PERF_SOLVERS and graph_wanted(cfg.get("perf"), torch.device(device))


def uses_batched_solve(cfg, name: str, num_slices: int, device) -> bool:
    """Whether ``num_slices`` slices of solver ``name`` go to ONE batched solve."""
    return name in BATCHED_SOLVERS and (num_slices > 1 or graph_path(cfg, name, device))


def build_solver(cfg, name: str, modality: str, denoiser, seeds: list[int], device, batched: bool):
    """Solver ``name`` for slices seeded ``seeds`` (one per slice of a batched solve; a one-slice
    solve uses ``seeds[0]``), with its config for ``modality`` and, for the DIP solvers, the run's
    ``config.perf``.  The only place that constructs solvers."""
    den = denoiser if solvers.needs_prior(name) else None
    return solvers.make_solver(name, solver_config_for(cfg, name, modality), den, seed=seeds[0], device=device,
                               seeds=list(seeds) if batched else None, perf=cfg.get("perf"))


def check_perf(cfg, names: list[str], device, batch_size: int) -> None:
    """Validate ``cfg.perf`` (cuda_graph / net_impl values) and say where it applies."""
    from solvers.perf import validate

    try:
        validate(cfg.get("perf"))
        graphs = [n for n in names if graph_path(cfg, n, device)]
    except ValueError as e:      # a bad perf.cuda_graph / perf.net_impl value
        raise InputError(f"--config.perf: {e}") from None
    if batch_size > 1:
        unbatched = [n for n in names if n not in BATCHED_SOLVERS]
        logging.info("batch_size=%d: %s in batched solves%s", batch_size,
                     ", ".join(n for n in names if n in BATCHED_SOLVERS) or "no solver",
                     f"; {', '.join(unbatched)} one slice at a time (no batched variant)" if unbatched else "")
    if graphs:
        logging.info("CUDA graphs (config.perf.cuda_graph): %s replay their DIP steps", ", ".join(graphs))


def check_solver_configs(cfg, names, denoiser, device, modality: str) -> None:
    """Build every solver once (constructors only validate their config) so that a bad
    ``--config.solver_cfg.*`` value fails before any run folder is written."""
    for name in names:
        try:
            build_solver(cfg, name, modality, denoiser, [cfg.seed], device, batched=False)
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"invalid config of solver {name!r} "
                             f"(--config.solver_cfg.{name}.*): {e}") from None


# --------------------------------------------------------------------------------- checking input
def check_batch_size(cfg) -> int:
    """``cfg.batch_size`` as an int >= 1 (else an InputError before anything is loaded or written)."""
    bs = cfg.get("batch_size", 1)
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise InputError(f"--batch_size (config.batch_size) must be an integer >= 1, got {bs!r} "
                         "(1 = one slice at a time)")
    return bs


def parse_lists(cfg) -> tuple[list[str], list[str]]:
    """Validated degradation and solver lists; errors name the valid choices."""
    degs = [d.strip() for d in cfg.deg.split(",") if d.strip()]
    names = [s.strip() for s in cfg.solvers.split(",") if s.strip()]
    if not degs or not names:
        raise InputError("need at least one degradation (--deg) and one solver (--solver)")
    try:
        for d in degs:
            modality_of(d)
        names = [solvers.canonical(n) for n in names]
    except ValueError as e:
        raise InputError(str(e)) from None
    return degs, names


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; an unavailable CUDA device is an InputError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device={name} but CUDA is not available; use --device=cpu")
    return dev


def load_samples(cfg, modality: str):
    """The slices to reconstruct: ``utils.data.load_dataset`` on ``cfg.data.path``."""
    path = Path(cfg.data.path)
    if not path.exists():
        raise InputError(f"data path {path} does not exist; pass --data=<folder or file> "
                         f"(the shipped samples are in indist_samples/)")
    kw = {}
    if path.is_dir() and (path / modality).is_dir() and cfg.data.volumes:
        kw["volumes"] = [v.strip() for v in cfg.data.volumes.split(",") if v.strip()]
    try:
        samples = load_dataset(path, modality, **kw)
    except (FileNotFoundError, ValueError) as e:  # missing files, wrong dtype/shape, NaN/Inf
        raise InputError(f"cannot read the {modality} data under {path}: {e}") from None
    if cfg.data.max_slices:
        samples = samples[: int(cfg.data.max_slices)]
    if not samples:
        raise InputError(f"no {modality} slices found under {path}")
    return samples


def load_denoiser(cfg, modality: str, device: torch.device, single_modality: bool):
    """The frozen diffusion prior of this modality (``models.priors.load_prior``)."""
    from models.checkpoint import CheckpointMismatchError, CorruptCheckpointError
    from models.priors import load_prior

    name = cfg.prior.mri if modality == "MRI" else cfg.prior.ct
    ckpt = cfg.prior.ckpt or None
    if ckpt and not single_modality:
        raise InputError("--ckpt applies to one modality; run MRI and CT separately")
    try:
        return load_prior(name, device=device, ckpt=ckpt, autocast_bf16=cfg.prior.bf16)
    except (FileNotFoundError, ValueError, KeyError, CheckpointMismatchError,
            CorruptCheckpointError) as e:
        raise InputError(f"cannot load the {modality} prior {name!r}"
                         f"{f' from {ckpt}' if ckpt else ''}: {e}") from None


def check_prior_matches(denoiser, sample, modality: str) -> None:
    """The prior must be complex for MRI / real for CT and trained at the data's image size."""
    want_complex, is_complex = modality == "MRI", bool(denoiser.is_complex)
    if is_complex != want_complex:
        kind = {True: "complex (MRI)", False: "real (CT)"}
        src = getattr(denoiser, "checkpoint_path", None) or getattr(denoiser, "prior_name", "?")
        raise InputError(
            f"checkpoint mismatch: the prior {src} is a {kind[is_complex]} prior but {modality} "
            f"data needs a {kind[want_complex]} prior; pass the {modality} checkpoint with --ckpt "
            f"or set --config.prior.{modality.lower()}")
    size = getattr(denoiser.unet, "image_size", None)
    if size is not None and tuple(sample.x_ref.shape[-2:]) != (size, size):
        raise InputError(
            f"the {modality} prior expects {size}×{size} images but slice {sample.name} is "
            f"{tuple(sample.x_ref.shape[-2:])}; choose a matching prior (--config.prior.*) or data")


#: Config fields that may change when a run is resumed (they do not affect the results beyond
#: float rounding: ``device`` and ``batch_size`` change the kernels, not the computation).
RESUME_FREE_FIELDS = ("workdir", "run_name", "device", "data.max_slices", "batch_size", "perf.cuda_graph",
                      "perf.net_impl")
#: Fields added after run folders were first written: a saved config.json without them ran with
#: these values (so such runs can still be resumed).
ADDED_FIELD_DEFAULTS = {"batch_size": 1, "perf.bf16": False, "perf.bf16_cpu": False,
                        "perf.compile": False, "perf.cuda_graph": "off", "perf.net_impl": "vmap",
                        "physics.noise": "gaussian", "physics.noise_level": 0.0, "physics.I0": 4096.0,
                        "physics.mu_max": 0.06, "physics.pixel_mm": 3.83}


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_resume_config(cfg, run_path) -> None:
    """A resumed run must use the config it started with (only ``RESUME_FREE_FIELDS`` and
    progress-bar switches may differ), else its slices would mix settings silently."""
    if not Path(run_path).is_dir():
        raise InputError(f"--resume={run_path}: no such run folder")
    saved_file = Path(run_path) / "config.json"
    if not saved_file.is_file():
        raise InputError(f"--resume={run_path}: no config.json there (not a run folder?)")
    saved = _flatten(json.loads(saved_file.read_text()))
    now = _flatten(json.loads(json.dumps(to_jsonable(cfg))))
    for k, v in ADDED_FIELD_DEFAULTS.items():
        saved.setdefault(k, v)
        now.setdefault(k, v)
    diff = [k for k in sorted(set(saved) | set(now))
            if k not in RESUME_FREE_FIELDS and not k.endswith("progress")
            and saved.get(k, "<unset>") != now.get(k, "<unset>")]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} → {now.get(k, '<unset>')!r}"
                          for k in diff[:8])
        raise InputError(
            f"--resume={run_path}: the config differs from the run's config.json in {len(diff)} "
            f"field(s) ({shown}); pass the same --config/flags as the original run "
            f"(only {', '.join(RESUME_FREE_FIELDS)} may change)")


@dataclass
class RunPlan:
    """Everything a run needs, checked: the config, where it runs, and per degradation its
    slices and prior (``None`` when no solver needs one)."""
    cfg: object
    names: list[str]
    batch_size: int
    device: torch.device
    info: object                       # utils.distributed.DistInfo
    degradations: list[tuple]          # [(deg, samples, denoiser)]


def plan_run(cfg, resume=None) -> RunPlan:
    """Check every input (config values, device, data, priors, solver configs, a resumed run's
    config) BEFORE the run folder exists, so bad input fails with a clear message and leaves no
    half-made run behind."""
    batch_size = check_batch_size(cfg)
    degs, names = parse_lists(cfg)
    info = dist_info()              # torchrun: RANK / WORLD_SIZE / LOCAL_RANK (1 process otherwise)
    if info.distributed:
        try:
            device = device_for(info, cfg.device)
        except ValueError as e:
            raise InputError(str(e)) from None
        init_distributed(info, device_hint=cfg.device)
    else:
        device = resolve_device(cfg.device)
    check_perf(cfg, names, device, batch_size)
    if resume is not None:
        check_resume_config(cfg, resume)
    plan, priors = [], {}
    one_modality = len({modality_of(d) for d in degs}) == 1
    for deg in degs:
        modality = modality_of(deg)
        try:
            noise_from_config(cfg.physics, modality)
        except ValueError as e:
            raise InputError(f"{deg}: {e}") from None
        samples = load_samples(cfg, modality)
        denoiser = None
        if any(solvers.needs_prior(n) for n in names):
            if modality not in priors:
                priors[modality] = load_denoiser(cfg, modality, device, one_modality)
            denoiser = priors[modality]
            check_prior_matches(denoiser, samples[0], modality)
        check_solver_configs(cfg, names, denoiser, device, modality)
        plan.append((deg, samples, denoiser))
    return RunPlan(cfg, names, batch_size, device, info, plan)


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


def prepare_slice(cfg, deg, sample, device, seed: int) -> SliceJob:
    """``make_physics`` → ``simulate_measurements`` (the config's noise model, seeded ``seed``)
    for one slice."""
    physics = make_physics(deg, cfg.physics, sample).to(device)
    x_ref = sample.x_ref[None].to(device)
    y = simulate_measurements(physics, x_ref, noise=noise_from_config(cfg.physics, modality_of(deg)), seed=seed)
    x_in = physics.input_image(y)
    return SliceJob(deg, f"{deg}_{sample.name}", seed, physics, x_ref, y, x_in)


def _save(rd, name, job: SliceJob, x_hat, callback, seconds, solver_history, extra=None) -> None:
    kw = {"extra": extra} if extra else {}
    rd.save_slice(name, job.name, deg=job.deg, recon=x_hat, ref=job.x_ref, inp=job.x_in,
                  history=callback, seconds=seconds, solver_history=solver_history,
                  input_label="zero-filled" if modality_of(job.deg) == "MRI" else "FBP", **kw)


def solve_one(cfg, job: SliceJob, name, denoiser, device, rd) -> None:
    """Reconstruct one slice with solver ``name`` (seed ``job.seed``) and save it."""
    solver = build_solver(cfg, name, modality_of(job.deg), denoiser, [job.seed], device, batched=False)
    callback = MetricsCallback(job.x_ref, every=1)
    with rd.timer(f"{name}/{job.name}") as timer:
        result = solver(job.y, job.physics, x_gt=job.x_ref, callback=callback)
    _save(rd, name, job, result.x_hat, callback, timer.seconds, result.history)


def _stackable(jobs: list[SliceJob]) -> bool:
    one = lambda f: len({(tuple(f(j).shape), f(j).dtype) for j in jobs}) == 1  # noqa: E731
    return one(lambda j: j.x_ref) and one(lambda j: j.y)


def solve_batch(cfg, jobs: list[SliceJob], name, denoiser, device, rd) -> None:
    """Reconstruct ``jobs`` with ONE batched solve of ``name`` and save each slice as
    :func:`solve_one` would; slices that cannot be stacked run one at a time."""
    physics = None
    if _stackable(jobs):
        try:
            physics = stack_physics([j.physics for j in jobs])
        except (ValueError, RuntimeError) as e:
            logging.warning("%s: cannot stack the operators of %s (%s)", name, [j.name for j in jobs], e)
    if physics is None:
        logging.warning("%s: slices %s differ in shape/geometry; running them one at a time",
                        name, [j.name for j in jobs])
        for j in jobs:
            solve_one(cfg, j, name, denoiser, device, rd)
        return
    B = len(jobs)
    solver = build_solver(cfg, name, modality_of(jobs[0].deg), denoiser, [j.seed for j in jobs], device,
                          batched=True)
    callbacks = [MetricsCallback(j.x_ref, every=1) for j in jobs]
    y = torch.cat([j.y for j in jobs])
    x_ref = torch.cat([j.x_ref for j in jobs])
    t0 = time.perf_counter()
    result = solver(y, physics, x_gt=x_ref, callback=callbacks)
    seconds = time.perf_counter() - t0
    logging.info("%s: %d slice%s in one batched solve (%s) in %.2f s (%.2f s per slice)",
                 name, B, "s" if B > 1 else "", ", ".join(j.name for j in jobs), seconds, seconds / B)
    batch = {"batch_size": B, "batch_slices": [j.name for j in jobs], "batch_seconds": seconds}
    perf = result.info.get("perf")
    if perf is not None:
        batch["perf"] = perf
    if "cuda_graph" in result.info:      # was the DIP step replayed from a CUDA graph (perf.cuda_graph)
        batch["cuda_graph"] = {"used": bool(result.info["cuda_graph"]), "error": result.info.get("cuda_graph_error")}
    for j, r, cb in zip(jobs, split_result(result), callbacks):
        rd.add_timing(f"{name}/{j.name}", seconds / B)
        _save(rd, name, j, r.x_hat, cb, seconds / B, r.history, extra=batch)


def solve_chunk(cfg, jobs: list[SliceJob], name, denoiser, device, rd) -> None:
    """Reconstruct and save a chunk's unfinished slices with solver ``name``: one batched solve
    where :func:`uses_batched_solve`, else one slice at a time."""
    if uses_batched_solve(cfg, name, len(jobs), device):
        solve_batch(cfg, jobs, name, denoiser, device, rd)
    else:
        for job in jobs:
            solve_one(cfg, job, name, denoiser, device, rd)


def run_chunk(cfg, deg, chunk, names, denoiser, device, rd) -> None:
    """Reconstruct a chunk of slices ``[(global index, sample), ...]`` with every solver, skipping
    the (solver, slice) pairs finished in an earlier run.  Slice ``i`` uses seed ``cfg.seed + i``."""
    keys = {i: f"{deg}_{sample.name}" for i, sample in chunk}
    todo = {}
    for name in names:
        todo[name] = [i for i, _ in chunk if not rd.is_done(name, keys[i])]
        for i in (i for i, _ in chunk if i not in todo[name]):
            logging.info("skip %s / %s (finished in an earlier run)", name, keys[i])
    needed = {i for idx in todo.values() for i in idx}
    jobs = {i: prepare_slice(cfg, deg, sample, device, cfg.seed + i) for i, sample in chunk if i in needed}
    for name in names:
        if todo[name]:
            solve_chunk(cfg, [jobs[i] for i in todo[name]], name, denoiser, device, rd)


# ------------------------------------------------------------------------------------------ a run
def reconstruct(cfg, resume=None):
    """Run ``cfg`` (a ``configs/*.py`` config with the command-line overrides applied), into a new
    run folder or into ``resume``; returns the summary (``None`` on torchrun ranks other than 0)."""
    torch.manual_seed(cfg.seed)     # a safety net: library code draws from seeded generators only
    plan = plan_run(cfg, resume)
    info, device, bs = plan.info, plan.device, plan.batch_size
    rd, token = shared_run_dir(info, lambda: make_run_dir(
        cfg.workdir, name=cfg.run_name or None, resume=resume, config=cfg, config_source=None, device=device))
    logging.info("run folder: %s (rank %d of %d)", rd.path, info.rank, info.world_size)
    if info.is_main:
        print(f"run folder: {rd.path}", flush=True)
    for deg, samples, denoiser in plan.degradations:
        # each rank takes a round-robin share; the GLOBAL index keeps the seeds of a 1-process run
        mine = shard(list(enumerate(samples)), info.rank, info.world_size)
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


__all__ = ["InputError", "reconstruct", "plan_run", "build_solver", "solve_chunk", "run_chunk",
           "prepare_slice", "BATCHED_SOLVERS", "PERF_SOLVERS"]
