"""Shared by the end-to-end tests of ``main.py``: the tiny run settings, a background
``python main.py`` process, and readers of a run folder."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: Overrides that make one (solver, slice) take about a second of CPU.
TINY = [
    "--device=cpu",
    "--max_slices=1",
    "--config.solver_cfg.udigdip.num_outer=2",
    "--config.solver_cfg.udigdip.inner_steps=1",
    "--config.solver_cfg.udigdip.purify_stop=2",
    "--config.solver_cfg.udigdip.net.channels=(8,8,8,8)",
    "--config.solver_cfg.udigdip.log_every=1",
    "--config.solver_cfg.udigdip.disable_progress=True",
    "--config.solver_cfg.dds.nfe=2",
    "--config.solver_cfg.dds.log_every=1",
    "--config.solver_cfg.dds.progress=False",
    # (these --config.solver_cfg values also replace the demo config file's per-modality settings,
    # modality_overrides.{MRI,CT}.udigdip: the command line wins)
]
SOLVERS = ("udigdip", "dds")
SLICE_FILES = ("recon.npy", "recon.png", "comparison.png", "curves.csv", "curves.png",
               "result.json", "DONE")


def run_env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def run_all(cases: dict, workers: int = 2, timeout: float = 600) -> dict:
    """``{name: args}`` → ``{name: CompletedProcess}`` of ``python main.py *args``, ``workers`` at a
    time, each in a fresh child of one process that imported torch and the project once
    (``tests/cli_batch.py``; for short runs such as refused command lines)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"name": n, "args": list(a), "stdout": f"{tmp}/{i}.out", "stderr": f"{tmp}/{i}.err"}
                for i, (n, a) in enumerate(cases.items())]
        proc = subprocess.run([PY, "-m", "tests.cli_batch"], cwd=ROOT, env={**run_env(), "CLI_BATCH_WORKERS": str(workers)},
                              input=json.dumps(jobs), capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        codes = json.loads(proc.stdout.strip().splitlines()[-1])
        return {j["name"]: subprocess.CompletedProcess([PY, "main.py", *j["args"]], codes[j["name"]],
                                                       Path(j["stdout"]).read_text(), Path(j["stderr"]).read_text())
                for j in jobs}


class Finished:
    """A command line run by :func:`run_all`, with the ``rc`` / ``output`` / ``wait()`` of :class:`Run`."""

    def __init__(self, done: subprocess.CompletedProcess):
        self.args, self.rc, self.output = list(done.args[2:]), done.returncode, done.stdout + done.stderr

    def wait(self, timeout: float = 0) -> "Finished":
        return self


class Run:
    """``python main.py *args`` started in the background; :meth:`wait` returns self."""

    def __init__(self, args, log_path: Path):
        self.args = list(args)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PY, "main.py", *self.args], cwd=ROOT, env=run_env(),
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.rc = None
        self.output = ""

    def wait(self, timeout: float = 900) -> "Run":
        if self.rc is None:
            try:
                self.rc = self.proc.wait(timeout=timeout)
            finally:
                self._log.close()
            self.output = self.log_path.read_text()
        return self

    def ok(self) -> "Run":
        self.wait()
        assert self.rc == 0, f"main.py {' '.join(self.args)} failed (rc={self.rc}):\n{self.output[-4000:]}"
        return self

    @property
    def run_dir(self) -> Path:
        self.ok()
        found = re.findall(r"^run folder: (.+)$", self.output, flags=re.M)
        assert found, f"no 'run folder:' line in the output:\n{self.output[-2000:]}"
        return Path(found[-1].strip())


def main_args(workdir, *extra):
    return [f"--workdir={workdir}", *TINY, *extra]


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def slice_key(deg: str, index: int = 0) -> str:
    """The slice key main.py uses: ``<deg>_<sample name>`` of the shipped samples."""
    from physics import modality_of
    from utils.data import load_dataset

    return f"{deg}_{load_dataset(ROOT / 'indist_samples', modality_of(deg))[index].name}"


def slice_dir(run_dir: Path, solver: str, slice_name: str) -> Path:
    from utils.run_dir import RunDir

    return run_dir / RunDir.slice_folder(solver, slice_name)


def file_state(folder: Path) -> dict:
    """``{relative path: (mtime_ns, bytes)}`` of every file below ``folder``."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ref_image(deg: str, index: int = 0) -> torch.Tensor:
    from physics import modality_of
    from utils.data import load_dataset

    return load_dataset(ROOT / "indist_samples", modality_of(deg))[index].x_ref
