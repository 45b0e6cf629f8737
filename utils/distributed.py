"""Multi-process sharding of a run over slices (``torchrun --nproc_per_node=G main.py ...``).

Each rank reconstructs a deterministic, round-robin share of the slices (:func:`shard`), on its
own device (:func:`device_for`), into ONE shared run folder; rank 0 merges at the end.

Why ranks must not use ``RunDir`` as is: ``RunDir.save_slice`` ends with
``append_metrics_row``, a read-modify-write of ``metrics.csv`` (atomic replace, so never torn, but
two processes interleaving read→write LOSE rows), and ``add_timing`` rewrites ``timings.json``
from each process's own in-memory dict (last writer wins).  Per-slice files
(``slices/<solver>/<slice>/result.json`` + ``DONE``) are disjoint across ranks and atomic, and
``RunDir.sync_metrics`` rebuilds ``metrics.csv`` from them.  So, with ``world_size > 1``:

* every rank uses :class:`RankRunDir`: per-slice files as usual, no ``metrics.csv`` writes,
  timings to ``ranks/timings.rank<r>.json``;
* each rank calls :func:`mark_done` when its share is finished (``ranks/rank<r>.done``, holding
  the run's token so a stale marker of an earlier, interrupted invocation is never counted);
* rank 0 calls :func:`merge_metrics`: waits for all markers, rebuilds ``metrics.csv`` with
  ``sync_metrics``, sums the per-rank timings into ``timings.json`` and writes ONE
  ``summary.json``/``summary.md``.

Rendezvous: under ``torchrun`` (``MASTER_ADDR``/``MASTER_PORT`` set) :func:`init_distributed`
starts a ``gloo`` (CPU, or ranks sharing a GPU) / ``nccl`` (one GPU per rank) process group, used
only to broadcast the run folder and token from rank 0 (:func:`shared_run_dir`).  Without a
process group, ranks meet through a rendezvous file (needs ``rendezvous=<path>`` and the same
``UDIG_RUN_TOKEN`` env var in all ranks).

How ``run_lib.py`` uses it (``world_size == 1`` is a plain single-process run)::

    info = dist_info(); init_distributed(info, device_hint=cfg.device)
    device = device_for(info, cfg.device)             # cuda:<local_rank> / cpu
    rd, token = shared_run_dir(info, lambda: make_run_dir(...same args...))
    for deg in degs:
        samples = ...                                   # every slice, checked before the run folder
        for sample in shard(samples, info.rank, info.world_size):
            ...reconstruct with run_checks.slice_seed(cfg.seed, sample.name)...   # the slice's own seed
    summary = finish(rd, info, token)                 # rank 0: merged summary dict; others: None
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch

from utils.fileio import atomic_write_json, atomic_write_text
from utils.run_dir import RunDir

T = TypeVar("T")
RANKS_DIR = "ranks"

__all__ = ["DistInfo", "dist_info", "process_group_backend", "init_distributed", "shard", "device_for",
           "set_cpu_threads", "RankRunDir", "shared_run_dir", "mark_done", "merge_metrics", "finish"]


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(env, key: str, default: int) -> int:
    v = env.get(key)
    if v is None or str(v).strip() == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {key}={v!r} is not an integer") from None


def dist_info(env: Optional[dict] = None) -> DistInfo:
    """Rank / world size from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``
    (as set by ``torchrun``); defaults to a single process.  No process group is needed."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    if not 0 <= local_rank < max(local_world, 1):
        raise ValueError(f"need 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE, got {local_rank}, {local_world}")
    return DistInfo(rank, world, local_rank, local_world)


def process_group_backend(use_cuda: bool, local_world_size: int, gpus: int, nccl_available: bool = True) -> str:
    """``nccl`` when every rank of a node has a GPU of its own, else ``gloo``: NCCL refuses two
    ranks on one GPU ("Duplicate GPU detected"), e.g. 2 ranks sharing the only GPU; the group only
    broadcasts the run folder, so gloo costs nothing measurable."""
    return "nccl" if use_cuda and nccl_available and 0 < int(local_world_size) <= int(gpus) else "gloo"


def init_distributed(info: DistInfo, device_hint: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Start a process group when ``world_size > 1`` and ``MASTER_ADDR`` is set (torchrun):
    ``nccl`` if the ranks use CUDA, one GPU each (:func:`process_group_backend`), else ``gloo``.
    Returns whether a group is active."""
    import datetime

    import torch.distributed as dist

    if not info.distributed or not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if "MASTER_ADDR" not in os.environ:
        return False
    hint = str(device_hint)
    use_cuda = torch.cuda.is_available() and (hint == "auto" or hint.startswith("cuda"))
    backend = process_group_backend(use_cuda, info.local_world_size,
                                    torch.cuda.device_count() if use_cuda else 0, dist.is_nccl_available())
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """Round-robin share of ``items`` for ``rank``: ``items[rank::world]`` (deterministic; the
    union over ranks is every item exactly once)."""
    world, rank = int(world), int(rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    return list(items)[rank::world]


def device_for(info: DistInfo, requested: str = "auto") -> torch.device:
    """Device of this rank: ``cuda:<local_rank mod #GPUs>`` for ``auto``/``cuda`` when CUDA is
    available (and ``torch.cuda.set_device`` on it), an explicit ``cuda:N`` as given, else CPU."""
    req = str(requested or "auto")
    if req == "cpu" or not torch.cuda.is_available():
        if req.startswith("cuda"):
            raise ValueError(f"device {req!r} requested but CUDA is not available; use cpu")
        return torch.device("cpu")
    if req in ("auto", "cuda"):
        dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    else:
        dev = torch.device(req)
    torch.cuda.set_device(dev)
    return dev


def set_cpu_threads(info: DistInfo, cpus: Optional[int] = None) -> int:
    """Split the CPU cores between the ranks of one node (``torch.set_num_threads``)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, int(cpus) // max(1, info.local_world_size))
    torch.set_num_threads(n)
    return n


# ------------------------------------------------------------------------------- run folders
class RankRunDir(RunDir):
    """A :class:`RunDir` that is safe to share between ranks (see the module docstring):
    no ``metrics.csv`` writes, per-rank timings.  With ``world_size == 1`` it is a plain RunDir."""

    def __init__(self, path, rank: int = 0, world_size: int = 1):
        super().__init__(path)
        self.rank, self.world_size = int(rank), int(world_size)
        if self.world_size > 1:
            self.timings = {}
            tj = self._rank_timings_path()
            if tj.exists():
                try:
                    self.timings = {k: float(v) for k, v in json.loads(tj.read_text())["seconds"].items()}
                except Exception:
                    self.timings = {}

    def _rank_timings_path(self) -> Path:
        return self.path / RANKS_DIR / f"timings.rank{self.rank}.json"

    def append_metrics_row(self, row, replace: bool = False) -> bool:
        if self.world_size > 1:
            return False     # rank 0 rebuilds metrics.csv from the per-slice result.json files
        return super().append_metrics_row(row, replace=replace)

    def add_timing(self, name: str, seconds: float) -> None:
        if self.world_size == 1:
            return super().add_timing(name, seconds)
        self.timings[name] = self.timings.get(name, 0.0) + float(seconds)
        atomic_write_json(self._rank_timings_path(), {"seconds": self.timings, "rank": self.rank,
                                                       "updated": time.time()})


def _marker(rd: RunDir, rank: int) -> Path:
    return Path(rd.path) / RANKS_DIR / f"rank{rank}.done"


def shared_run_dir(info: DistInfo, create: Callable[[], RunDir], rendezvous: Optional[os.PathLike] = None,
                   timeout_s: float = 600.0, poll_s: float = 0.2) -> tuple[RankRunDir, str]:
    """The run folder shared by all ranks and this invocation's token.

    Rank 0 calls ``create()`` (``make_run_dir``; new or ``resume``), clears stale rank markers,
    and hands ``(path, token)`` to the other ranks — by ``broadcast_object_list`` when a process
    group is active, else through the JSON file ``rendezvous`` (all ranks must also share the
    ``UDIG_RUN_TOKEN`` env var so an old file is never trusted).
    """
    if not info.distributed:
        rd = create()
        return RankRunDir(rd.path, 0, 1), uuid.uuid4().hex
    import torch.distributed as dist

    pg = dist.is_available() and dist.is_initialized()
    env_token = os.environ.get("UDIG_RUN_TOKEN")
    if not pg and (rendezvous is None or not env_token):
        raise RuntimeError("world_size > 1 without a process group: pass rendezvous=<file> and set the "
                           "same UDIG_RUN_TOKEN in every rank, or run under torchrun (MASTER_ADDR)")
    if info.is_main:
        rd = create()
        shutil.rmtree(Path(rd.path) / RANKS_DIR, ignore_errors=True)
        (Path(rd.path) / RANKS_DIR).mkdir(parents=True, exist_ok=True)
        payload = [str(rd.path), env_token or uuid.uuid4().hex]
        if pg:
            dist.broadcast_object_list(payload, src=0)
        else:
            atomic_write_json(rendezvous, {"path": payload[0], "token": payload[1]})
    elif pg:
        payload = [None, None]
        dist.broadcast_object_list(payload, src=0)
    else:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                data = json.loads(Path(rendezvous).read_text())
                if data.get("token") == env_token:
                    payload = [data["path"], data["token"]]
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {info.rank}: no rendezvous from rank 0 in {rendezvous} "
                                   f"after {timeout_s:.0f} s")
            time.sleep(poll_s)
    return RankRunDir(payload[0], info.rank, info.world_size), str(payload[1])


def mark_done(rd: RunDir, rank: int, token: str) -> Path:
    """This rank's share is finished (written after all its slices' ``DONE`` markers)."""
    p = _marker(rd, rank)
    atomic_write_text(p, str(token) + "\n")
    return p


def merge_metrics(rd: RunDir, world_size: int, token: Optional[str] = None, timeout_s: float = 24 * 3600.0,
                  poll_s: float = 0.5) -> dict:
    """Rank 0: wait until every rank's ``ranks/rank<r>.done`` holds ``token`` (any content when
    ``token`` is None), rebuild ``metrics.csv`` from the finished slices, merge the per-rank
    timings into ``timings.json`` and write one ``summary.json``; returns the summary."""
    deadline = time.monotonic() + timeout_s
    missing = list(range(int(world_size)))
    while missing:
        still = []
        for r in missing:
            p = _marker(rd, r)
            try:
                ok = p.is_file() and (token is None or p.read_text().strip() == str(token))
            except OSError:
                ok = False
            if not ok:
                still.append(r)
        missing = still
        if missing:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks {missing} did not finish within {timeout_s:.0f} s "
                                   f"(no {RANKS_DIR}/rank<r>.done in {rd.path})")
            time.sleep(poll_s)
    rows = rd.sync_metrics()
    merged: dict[str, float] = {}
    tj = Path(rd.path) / "timings.json"
    if tj.exists():  # rank-independent timings of earlier (resumed) single-process runs
        try:
            merged = {k: float(v) for k, v in json.loads(tj.read_text()).get("seconds", {}).items()}
        except Exception:
            merged = {}
    for f in sorted((Path(rd.path) / RANKS_DIR).glob("timings.rank*.json")):
        try:
            for k, v in json.loads(f.read_text()).get("seconds", {}).items():
                merged[k] = merged.get(k, 0.0) + float(v)
        except Exception:
            continue
    rd.timings = merged
    atomic_write_json(tj, {"seconds": merged, "updated": time.time(), "world_size": int(world_size)})
    summary = RunDir.write_summary(rd, rows)
    return summary


def finish(rd: RunDir, info: DistInfo, token: str, timeout_s: float = 24 * 3600.0) -> Optional[dict]:
    """End of a run: single process → ``rd.write_summary()``; several → every rank marks
    itself done and rank 0 merges (returns the summary; other ranks return ``None``)."""
    if not info.distributed:
        return rd.write_summary()
    mark_done(rd, info.rank, token)
    if info.is_main:
        return merge_metrics(rd, info.world_size, token, timeout_s=timeout_s)
    return None
