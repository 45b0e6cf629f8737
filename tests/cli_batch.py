"""Many short ``python main.py ...`` command lines at a fraction of the start-up cost: this process
imports torch and the project once, then runs each command line in a FRESH forked child
(``multiprocessing`` "fork", one task per child) as ``runpy.run_path("main.py",
run_name="__main__")`` with ``sys.argv`` set and stdout / stderr sent to files — what ``python
main.py`` does after the interpreter has started (absl's flags are defined in the child only).

    python -m tests.cli_batch < jobs.json     # [{"name", "args", "stdout", "stderr"}, ...]
                                              # prints {"name": exit status, ...}

Used by ``tests.main_runs.run_all`` for the refused command lines of tests/test_main_errors.py.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(job: dict) -> tuple[str, int]:
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.argv = ["main.py", *job["args"]]
    code = 0
    try:
        runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like the interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return job["name"], int(code)


def main() -> None:
    jobs = json.loads(sys.stdin.read())
    workers = int(os.environ.get("CLI_BATCH_WORKERS", "2"))
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    import configs.base  # noqa: F401  (the modules main.py imports, loaded once before forking)
    import run_lib  # noqa: F401

    sys.stdout.flush()
    with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        codes = dict(pool.map(_run, jobs, chunksize=1))
    print(json.dumps(codes))


if __name__ == "__main__":
    main()
