"""What this machine has (usable cores, GPUs) and a run's share of it when Hydra's joblib launcher
(``launcher=local``) runs a grid in parallel.

Hydra's launchers do the launching (runner/launch.py hands them the plans); this only divides what one
machine has among the jobs: torch
threads (``threads=0`` becomes cores // jobs, so jobs × threads never exceeds the cores) and, where there
are several GPUs, one GPU per worker process, held with a lock for the worker's life.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import OmegaConf, open_dict

from runner import facts

_gpu_lock: FileLock | None = None  # this worker's GPU, kept until the process ends
_gpu_index: int | None = None


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: its affinity mask, lowered to its cgroup's CPU quota (a container's or a
    SLURM job's limit), rounded up, never below 1."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one we cannot read: the affinity mask alone
        pass
    return cores


def devices() -> dict[str, Any]:
    """What torch says of this machine's CUDA and MPS devices (in a grid preview, what it said: runner/facts.py)."""
    def probe() -> dict[str, Any]:
        import torch  # here: the planned sweeper imports this module while Hydra scans plugins, without torch

        return {"cuda_available": torch.cuda.is_available(), "cuda_count": torch.cuda.device_count(),
                "mps_available": torch.backends.mps.is_available()}

    return facts.device(probe)


def gpu_count() -> int:
    return devices()["cuda_count"]


def machine_jobs() -> int:
    """``launcher=local``'s default number of parallel runs: one per GPU when there are several, else one per core."""
    gpus = gpu_count()
    return gpus if gpus > 1 else usable_cores()


OmegaConf.register_new_resolver("machine_jobs", machine_jobs, replace=True)


def _claim_gpu(gpus: int) -> int:
    """The first GPU no other worker holds (a worker keeps the one it claimed)."""
    global _gpu_lock, _gpu_index
    if _gpu_index is None:
        folder = Path(tempfile.gettempdir()) / f"runner-gpus-{os.getuid()}"
        folder.mkdir(exist_ok=True)
        for i in range(gpus):
            lock = FileLock(str(folder / f"cuda{i}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _gpu_lock, _gpu_index = lock, i
            break
        else:
            _gpu_index = os.getpid() % gpus  # more workers than GPUs: share
    return _gpu_index


def place(plan: Any, launcher: Any) -> Any:
    """Under the joblib launcher: the plan with its share of the cores and, with several GPUs, a GPU of its own.
    Only where/how keys change (threads, device index), never the run's identity."""
    if "joblib" not in str(launcher.get("_target_", "")):
        return plan
    cores = usable_cores()
    n_jobs = int(launcher.get("n_jobs") or 1)
    parallel = cores if n_jobs < 0 else max(1, n_jobs)  # joblib reads -1 as one job per core
    gpus = gpu_count()
    cfg = plan.cfg.copy()
    with open_dict(cfg):
        if cfg.threads == 0:
            cfg.threads = max(1, cores // parallel)
        if cfg.device == "auto" and gpus > 1:
            cfg.device = f"cuda:{_claim_gpu(gpus)}"
    return dataclasses.replace(plan, cfg=cfg)
