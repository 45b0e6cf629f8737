"""Everything a run checks BEFORE its run folder exists (``run_lib.reconstruct`` → :func:`plan_run`).

Every bad value ends in ONE :class:`InputError` line that names the flag to change (``main.py``
prints it and exits with status 2; nothing is written).  In order:

1. the config's numbers and choices (``configs.base.RANGES`` / ``CHOICES``), the degradation and
   solver lists, the device, ``config.perf``, the workdir (a writable folder) or the resumed run
   and its stored config (:func:`check_resume_config`);
2. per modality: the data (``utils.data`` readers, with the ``config.data`` options of
   :func:`reader_options`), the prior, and the size of EVERY slice against the prior's;
3. per degradation: the operator (mask, geometry) of EVERY slice and one simulated measurement;
   every solver built once with its config for the modality (constructors validate their fields);
4. the output folders of all (solver, slice) pairs are distinct (:func:`check_slice_folders`).

Seeds: slice ``s`` is solved with :func:`slice_seed` ``(config.seed, s.name)`` — a stable hash of
the run seed and the slice's own name — so its result is the same alone, in a larger folder, in a
batch, on a torchrun rank or after a resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from absl import logging

import solvers
from configs.base import CHOICES, RANGES, get_base_config, solver_config_for
from physics import make_physics, modality_of, noise_from_config, simulate_measurements
from physics.noise import is_noiseless, noise_label
from utils.data import data_kind, load_dataset
from utils.distributed import device_for, dist_info, init_distributed
from utils.fileio import to_jsonable
from utils.run_dir import RunDir


class InputError(ValueError):
    """Bad input found before the run folder is made (``main.py`` prints it as one line)."""


#: command-line flag → config field it sets (the config is what gets saved with the run)
FLAG_FIELDS = {"solver": "solvers", "deg": "deg", "seed": "seed", "device": "device", "workdir": "workdir",
               "batch_size": "batch_size", "ckpt": "prior.ckpt", "data": "data.path",
               "max_slices": "data.max_slices", "name": "run_name"}


def flag_of(field: str) -> str:
    """How to set config ``field`` on the command line: ``--seed`` or ``--config.a.b``."""
    flag = next((f for f, k in FLAG_FIELDS.items() if k == field), None)
    return f"--{flag}" if flag else f"--config.{field}"


def get_field(cfg, path: str):
    node = cfg
    for key in path.split("."):
        node = node[key]
    return node


def slice_seed(run_seed: int, name: str) -> int:
    """The seed of slice ``name`` in a run seeded ``run_seed``: the first 31 bits of
    ``sha256("<run_seed>/<name>")`` (stable across processes, machines and Python versions)."""
    digest = hashlib.sha256(f"{int(run_seed)}/{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# ------------------------------------------------------------------------------- config values
def check_fields(cfg) -> None:
    """Every numeric run field in its range and every choice field one of its choices."""
    for field, rng in RANGES.items():
        try:
            rng.check(get_field(cfg, field), flag_of(field))
        except ValueError as e:
            raise InputError(str(e)) from None
    size = int(cfg.data.image_size)
    if 0 < size < 8:
        raise InputError(f"--config.data.image_size must be 0 (as stored) or in [8, 4096], got {size}")
    for field, choices in CHOICES.items():
        if get_field(cfg, field) not in choices:
            raise InputError(f"{flag_of(field)} must be one of {', '.join(choices)}, got {get_field(cfg, field)!r}")


def parse_lists(cfg) -> tuple[list[str], list[str]]:
    """Validated degradation and solver lists; errors name the valid choices."""
    degs = [d.strip() for d in str(cfg.deg).split(",") if d.strip()]
    names = [s.strip() for s in str(cfg.solvers).split(",") if s.strip()]
    if not degs or not names:
        raise InputError("need at least one degradation (--deg) and one solver (--solver)")
    try:
        for d in degs:
            modality_of(d)
        names = [solvers.canonical(n) for n in names]
    except ValueError as e:
        raise InputError(f"{e} (--deg / --solver)") from None
    if len(set(degs)) < len(degs) or len(set(names)) < len(names):
        raise InputError(f"a degradation or solver is listed twice: --deg={cfg.deg} --solver={cfg.solvers}")
    return degs, names


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; a malformed or unavailable device is an InputError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device={name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device={name}: only cpu and cuda devices are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device={name} but CUDA is not available; use --device=cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def run_device(cfg, info) -> torch.device:
    """This process's device (under torchrun: ``cuda:<local rank>`` or the CPU)."""
    if not info.distributed:
        return resolve_device(str(cfg.device))
    resolve_device(str(cfg.device))                 # the same messages for a bad value
    try:
        device = device_for(info, cfg.device)
    except ValueError as e:
        raise InputError(str(e)) from None
    init_distributed(info, device_hint=cfg.device)
    return device


def check_perf(cfg) -> None:
    """``config.perf`` (cuda_graph / net_impl / bf16 values; ``solvers/perf.py``)."""
    from solvers.perf import validate

    try:
        validate(cfg.get("perf"))
    except ValueError as e:
        raise InputError(f"--config.perf: {e}") from None


def check_writable(folder, flag: str) -> None:
    """``folder`` (``--workdir``, or a resumed run folder) must be a folder this process can create
    folders in; checked by creating and removing a temporary folder in it (or in its nearest
    existing parent, which is where the first run folder will be made), so nothing is left behind."""
    path = Path(folder).expanduser()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"{flag}={folder}: {probe} is a file, not a folder; pass a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".udig-probe-", dir=probe))
    except OSError as e:
        raise InputError(f"{flag}={folder}: cannot create folders in {probe} ({e.strerror or e}); "
                         "pass a writable folder") from None


# ------------------------------------------------------------------------------------- data
def parse_slices(text: str):
    """``"3,5,10:20"`` → ``[3, 5, 10, …, 19]``; ``""`` → ``None`` (all)."""
    text = str(text).strip()
    if not text:
        return None
    out = []
    try:
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if ":" in part:
                a, b = (int(v) for v in part.split(":"))
                if b <= a:
                    raise ValueError
                out.extend(range(a, b))
            else:
                out.append(int(part))
    except ValueError:
        raise InputError(f"--config.data.slices={text!r}: use slice indices and half-open ranges, "
                         "e.g. '3,5,10:20'") from None
    if any(s < 0 for s in out):
        raise InputError(f"--config.data.slices={text!r}: slice indices must be >= 0")
    return out


#: ``config.data`` fields each reader uses (the others do not apply to it)
READER_FIELDS = {"dds": ("volumes", "image_size", "units", "require_maps", "max_slices"),
                 "fastmri": ("image_size", "slices", "crop", "maps", "calib_width", "normalize", "max_slices"),
                 "npy": ("image_size", "units", "slices", "max_slices"),
                 "dicom": ("image_size", "max_slices")}


def reader_options(data, modality: str, kind: str) -> dict:
    """The ``utils.data`` reader arguments from ``config.data`` for a reader ``kind``
    (:func:`utils.data.data_kind`); a field set away from its default that this reader does not
    use is reported (it has no effect)."""
    defaults = get_base_config().data
    unused = [k for k in defaults if k not in READER_FIELDS[kind] + ("path",) and data.get(k) != defaults[k]]
    if unused:
        logging.warning("--config.data.%s: not used for %s data (%s)", ", ".join(unused), kind, data.path)
    size = int(data.image_size) or None
    if kind == "dds":
        vols = [v.strip() for v in str(data.volumes).split(",") if v.strip()] or None
        return dict(size=size, units=str(data.units), require_maps=bool(data.require_maps), volumes=vols,
                    max_samples=int(data.max_slices) or None)
    if kind == "fastmri":
        normalize = None if data.normalize == "none" else str(data.normalize)
        return dict(size=size, slices=parse_slices(data.slices), crop=int(data.crop) or None, maps=str(data.maps),
                    calib_width=int(data.calib_width), normalize=normalize)
    if kind == "npy":
        return dict(size=size, units=str(data.units), slices=parse_slices(data.slices))
    return dict(size=size)


def read_samples(cfg, modality: str):
    """The slices to reconstruct (``config.data``), at most ``config.data.max_slices``."""
    path = Path(cfg.data.path)
    try:
        kind = data_kind(path, modality)
        samples = load_dataset(path, modality, **reader_options(cfg.data, modality, kind))
    except (FileNotFoundError, ValueError) as e:  # missing files, wrong dtype/shape/units, NaN/Inf
        raise InputError(f"cannot read the {modality} data at --data={path}: {e}") from None
    if cfg.data.max_slices:
        samples = samples[: int(cfg.data.max_slices)]
    if not samples:
        raise InputError(f"no {modality} slices found at --data={path}")
    return samples


def check_slice_sizes(samples, size: int, modality: str, cfg) -> None:
    """EVERY slice must have the prior's size ``size × size``; the message names the flag."""
    bad = [s for s in samples if tuple(s.x_ref.shape[-2:]) != (size, size)]
    if not bad:
        return
    H, W = bad[0].x_ref.shape[-2:]
    more = f" ({len(bad)} of {len(samples)} slices differ)" if len(bad) > 1 else ""
    now = int(cfg.data.image_size)
    hint = (f"--config.data.image_size={now} resamples to {now}×{now}; " if now else "") + \
        f"pass --config.data.image_size={size} to resample every slice to {size}×{size}, or a prior of the " \
        f"data's size (--config.prior.{modality.lower()} / --ckpt)"
    raise InputError(f"the {modality} prior expects {size}×{size} images but slice {bad[0].name} is "
                     f"{H}×{W}{more}; {hint}")


# ------------------------------------------------------------------------------- prior, solvers
def load_denoiser(cfg, modality: str, device: torch.device, single_modality: bool):
    """The frozen diffusion prior of this modality (``models.priors.load_prior``)."""
    from models.checkpoint import CheckpointMismatchError, CorruptCheckpointError
    from models.priors import load_prior

    name = cfg.prior.mri if modality == "MRI" else cfg.prior.ct
    ckpt = cfg.prior.ckpt or None
    if ckpt and not single_modality:
        raise InputError("--ckpt applies to one modality; run MRI and CT separately")
    if ckpt and Path(ckpt).is_dir():
        raise InputError(f"--ckpt={ckpt} is a folder; pass the checkpoint file (e.g. {ckpt.rstrip('/')}/<name>.pt)")
    try:
        den = load_prior(name, device=device, ckpt=ckpt, autocast_bf16=cfg.prior.bf16)
    except (OSError, ValueError, KeyError, CheckpointMismatchError, CorruptCheckpointError) as e:
        raise InputError(f"cannot load the {modality} prior {name!r}{f' from --ckpt={ckpt}' if ckpt else ''}: "
                         f"{e}") from None
    want_complex, is_complex = modality == "MRI", bool(den.is_complex)
    if is_complex != want_complex:
        kind = {True: "complex (MRI)", False: "real (CT)"}
        src = getattr(den, "checkpoint_path", None) or getattr(den, "prior_name", "?")
        raise InputError(f"checkpoint mismatch: the prior {src} is a {kind[is_complex]} prior but {modality} data "
                         f"needs a {kind[want_complex]} prior; pass the {modality} checkpoint with --ckpt or set "
                         f"--config.prior.{modality.lower()}")
    return den


def build_solver(cfg, name: str, modality: str, denoiser, seeds: list[int], device):
    """Solver ``name`` for slices seeded ``seeds`` (one per slice), with its config for
    ``modality`` and the run's ``config.perf`` (DIP solvers).  The only place that builds solvers."""
    den = denoiser if solvers.needs_prior(name) else None
    return solvers.make_solver(name, solver_config_for(cfg, name, modality), den, seed=seeds[0], device=device,
                               seeds=list(seeds), perf=cfg.get("perf"))


def _noiseless(cfg) -> bool:
    """Whether the run's measurements are exact (a bad noise setting counts as exact here: it is
    reported by :func:`check_physics`)."""
    try:
        return is_noiseless(cfg.physics)
    except ValueError:
        return True


def check_solvers(cfg, names, denoiser, device, modality: str) -> None:
    """Every solver reconstructs ``modality``; build it once (constructors validate their config
    and its ranges)."""
    for name in names:
        kinds = solvers.solver_class(name).modalities
        if modality not in kinds:
            raise InputError(f"solver {name!r} reconstructs {' and '.join(kinds)} only; drop it from --solver "
                             f"for the {modality} degradations (run them separately)")
        try:
            solver = build_solver(cfg, name, modality, denoiser, [0], device)
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"invalid config of solver {name!r} for {modality} (--config.solver_cfg.{name}.* or "
                             f"--config.modality_overrides.{modality}.{name}.*): {e}") from None
        reason = solver.noiseless_assumption()
        if reason and not _noiseless(cfg):
            logging.warning("%s assumes noiseless measurements but the run adds noise (%s): %s",
                            name, noise_label(cfg.physics), reason)


def check_physics(cfg, deg: str, samples) -> None:
    """The noise model, the operator (mask, geometry) of EVERY slice, and one simulated measurement."""
    try:
        noise = noise_from_config(cfg.physics, modality_of(deg))
    except ValueError as e:
        raise InputError(f"{deg}: {e}") from None
    for i, sample in enumerate(samples):
        try:
            physics = make_physics(deg, cfg.physics, sample)
            if i == 0:
                simulate_measurements(physics, sample.x_ref[None], noise=noise, seed=0)
        except (ValueError, RuntimeError) as e:
            raise InputError(f"invalid {deg} settings for slice {sample.name} (--config.physics.*): {e}") from None


def check_slice_folders(degs, samples_of: dict, names) -> None:
    """Distinct (solver, slice) pairs must get distinct output folders (compared case-folded, as
    on case-insensitive file systems); otherwise one slice would overwrite or skip another."""
    seen = {}
    for deg in degs:
        for s in samples_of[deg]:
            key = f"{deg}_{s.name}"
            for name in names:
                folder = RunDir.slice_folder(name, key).casefold()
                if folder in seen and seen[folder] != key:
                    raise InputError(f"slices {seen[folder]!r} and {key!r} would share the output folder {folder}; "
                                     "rename one of the files")
                seen[folder] = key


# ------------------------------------------------------------------------------------ resume
#: Config fields that may change when a run is resumed (they do not affect the results beyond
#: float rounding: ``device`` and ``batch_size`` change the kernels, not the computation).
RESUME_FREE_FIELDS = ("workdir", "run_name", "device", "data.max_slices", "batch_size", "perf.cuda_graph",
                      "perf.net_impl")
#: Fields added after run folders were first written: a saved config.json without them ran with
#: these values (so such runs can still be resumed).
ADDED_FIELD_DEFAULTS = {"batch_size": 1, "perf.bf16": False, "perf.bf16_cpu": False, "perf.compile": False,
                        "perf.cuda_graph": "off", "perf.net_impl": "vmap", "data.image_size": 0,
                        "data.units": "unit", "data.require_maps": True, "data.slices": "", "data.crop": 320,
                        "data.maps": "espirit", "data.calib_width": 24, "data.normalize": "max",
                        "physics.noise": "gaussian", "physics.noise_level": 0.0, "physics.I0": 4096.0,
                        "physics.mu_max": 0.06, "physics.pixel_mm": 3.83}
#: Fields of older configs that no longer exist (they had no effect)
REMOVED_FIELDS = ("log_every",)


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})   # {} → nothing
    return out


def stored_config(run_path) -> dict:
    """The ``config.json`` of run folder ``run_path`` (nested dict; InputError if there is none)."""
    if not Path(run_path).is_dir():
        raise InputError(f"--resume={run_path}: no such run folder")
    saved_file = Path(run_path) / "config.json"
    try:
        saved = json.loads(saved_file.read_text())
    except FileNotFoundError:
        raise InputError(f"--resume={run_path}: no config.json there (not a run folder?)") from None
    except (OSError, ValueError) as e:
        raise InputError(f"--resume={run_path}: cannot read its config.json ({e})") from None
    for k in REMOVED_FIELDS:
        saved.pop(k, None)
    return saved


def _solver_of(key: str):
    """The solver a ``solver_cfg.<s>.*`` / ``modality_overrides.<M>.<s>.*`` key belongs to (else None)."""
    parts = key.split(".")
    if parts[0] == "solver_cfg" and len(parts) > 1:
        return parts[1]
    return parts[2] if parts[0] == "modality_overrides" and len(parts) > 2 else None


def config_differences(cfg, saved: dict) -> list[str]:
    """Fields (dotted) where ``cfg`` differs from the saved config, besides :data:`RESUME_FREE_FIELDS`,
    progress-bar switches and the settings of solvers the run does not use (so solvers added to the
    registry later do not block resuming an older run)."""
    def names(text) -> set:
        out = set()
        for n in (n.strip() for n in str(text).split(",") if n.strip()):
            try:
                out.add(solvers.canonical(n))
            except ValueError:
                out.add(n)
        return out

    used = names(saved.get("solvers", "")) | names(cfg.get("solvers", ""))
    saved = flatten(saved)
    now = flatten(json.loads(json.dumps(to_jsonable(cfg))))
    for k, v in ADDED_FIELD_DEFAULTS.items():
        saved.setdefault(k, v)
        now.setdefault(k, v)

    def counts(k: str) -> bool:
        solver = _solver_of(k)
        return k not in RESUME_FREE_FIELDS and not k.endswith("progress") and (solver is None or solver in used)

    return [k for k in sorted(set(saved) | set(now)) if counts(k) and saved.get(k, "<unset>") != now.get(k, "<unset>")]


def check_resume_config(cfg, run_path) -> None:
    """A resumed run must use the config it started with (only :data:`RESUME_FREE_FIELDS` and
    progress-bar switches may differ), else its slices would mix settings silently."""
    saved = stored_config(run_path)
    diff = config_differences(cfg, saved)
    if diff:
        flat_saved, flat_now = flatten(saved), flatten(json.loads(json.dumps(to_jsonable(cfg))))
        shown = "; ".join(f"{k}: {flat_saved.get(k, '<unset>')!r} → {flat_now.get(k, '<unset>')!r}" for k in diff[:8])
        raise InputError(
            f"--resume={run_path}: the config differs from the run's config.json in {len(diff)} field(s) ({shown}); "
            f"give only --resume (the stored config is used) or flags that agree with it "
            f"(only {', '.join(RESUME_FREE_FIELDS)} may change)")


# -------------------------------------------------------------------------------------- plan
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
    """Check every input (module docstring) BEFORE the run folder exists, so bad input fails with
    one clear message and leaves nothing behind."""
    check_fields(cfg)
    degs, names = parse_lists(cfg)
    check_perf(cfg)
    if resume is not None:
        check_resume_config(cfg, resume)
        check_writable(resume, "--resume")
    else:
        check_writable(cfg.workdir, "--workdir")
    info = dist_info()              # torchrun: RANK / WORLD_SIZE / LOCAL_RANK (1 process otherwise)
    device = run_device(cfg, info)
    plan, priors, samples_of = [], {}, {}
    modalities = {modality_of(d) for d in degs}
    needs_prior = any(solvers.needs_prior(n) for n in names)
    for modality in sorted(modalities):
        samples = read_samples(cfg, modality)
        if needs_prior:
            priors[modality] = load_denoiser(cfg, modality, device, len(modalities) == 1)
            size = getattr(priors[modality].unet, "image_size", None)
            if size is not None:
                check_slice_sizes(samples, int(size), modality, cfg)
        check_solvers(cfg, names, priors.get(modality), device, modality)
        samples_of[modality] = samples
    for deg in degs:
        samples = samples_of[modality_of(deg)]
        check_physics(cfg, deg, samples)
        plan.append((deg, samples, priors.get(modality_of(deg))))
    check_slice_folders(degs, {deg: s for deg, s, _ in plan}, names)
    return RunPlan(cfg, names, int(cfg.batch_size), device, info, plan)


__all__ = ["InputError", "FLAG_FIELDS", "flag_of", "slice_seed", "plan_run", "RunPlan", "build_solver",
           "check_resume_config", "stored_config", "config_differences", "RESUME_FREE_FIELDS", "flatten"]
