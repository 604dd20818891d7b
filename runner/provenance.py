"""Where and with what a run ran, recorded beside it and never part of its id: the device and threads, the host,
the SLURM job and its log, the runner's git commit and the versions of what computes the numbers."""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from runner.rundir import COMMAND


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the runner's own checkout, with ``-dirty`` for uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _slurm_job_id() -> str | None:
    """``<array job>_<task>`` (or the job id) when the run is a SLURM job, else None."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID")


def _submitit_log() -> str | None:
    """The job's log file when submitit runs this process (launcher=slurm, submitit_local), else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stdout)
    except Exception:  # not a submitit job after all, or an older submitit: the log is where the launcher said
        return None


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def where_it_ran(device: torch.device) -> dict[str, Any]:
    """Recorded beside the run, not part of its id: the device, threads, host and versions."""
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "thread_env": " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ) or None,
        "host": socket.gethostname(),
        "slurm_job_id": _slurm_job_id(),
        "log": _submitit_log(),
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "versions": versions(),
        "command": os.environ.get(COMMAND),
    }


@functools.lru_cache(maxsize=1)
def versions() -> str:
    """The versions a result depends on, as one field of the record."""
    import importlib.metadata
    import platform

    found = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for name in ("hydra-core", "optuna", "numpy", "scipy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name.removesuffix('-core')} {importlib.metadata.version(name)}")
    return ", ".join(found)
