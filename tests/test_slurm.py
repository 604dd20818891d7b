"""launcher=slurm against a real single-node SLURM (scripts/slurm-local.sh), as CI runs it.

Needs root and apt-get (the script installs and starts slurmctld, slurmd and munge); elsewhere these
tests skip and say why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock
from conftest import MACHINE_CORES, ROOT, TINY, cli

from runner import records, rundir

SCRIPT = ROOT / "scripts" / "slurm-local.sh"
pytestmark = pytest.mark.slow
# The test processes of one suite (pytest-xdist) share one SLURM: each starts it if it is not up (under a lock; the
# script is idempotent) and counts itself in, and the last one out stops it.
USERS = Path(tempfile.gettempdir()) / f"runner-tests-slurm-{os.environ.get('PYTEST_XDIST_TESTRUNUID', os.getpid())}"


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("needs root and apt-get to install and start a local SLURM (scripts/slurm-local.sh); CI runs it")
    with FileLock(f"{USERS}.lock"):
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900,
                                 preexec_fn=lambda: os.sched_setaffinity(0, MACHINE_CORES))  # SLURM gets every core
        if started.returncode:
            pytest.fail(f"scripts/slurm-local.sh start failed:\n{started.stdout}\n{started.stderr}")
        USERS.write_text(str(int(USERS.read_text() or 0) + 1 if USERS.exists() else 1))
    yield
    with FileLock(f"{USERS}.lock"):
        left = int(USERS.read_text()) - 1
        USERS.write_text(str(left))
        if left == 0:
            subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
            USERS.unlink()


def slurm_args(data_dir, root) -> list[str]:
    return [*TINY, f"data_dir={data_dir}", "dataset.verify_checksums=false", f"results_dir={root}",
            "launcher=slurm", "hydra.launcher.timeout_min=5", "hydra.launcher.cpus_per_task=1"]


def running_job(root, epochs: int, timeout: float = 300):
    """The record of a run training as a SLURM job with at least ``epochs`` epochs saved (None after ``timeout`` s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for folder in (root / "runs").glob("*/") if (root / "runs").exists() else []:
            record = rundir.read_result(folder)
            done = records.read_epochs(folder)
            if record and record["status"] == "running" and record.get("slurm_job_id") and \
                    (epochs == 0 or done is not None and len(done) >= epochs):
                return record
        time.sleep(0.3)
    return None


def test_a_sweep_runs_as_slurm_array_tasks(slurm, data_dir, tmp_path):
    res = cli("-m", "seed=0,1,2,3", *slurm_args(data_dir, tmp_path), timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2, 3] and set(runs["status"]) == {"ok"}
    jobs = runs["slurm_job_id"].astype(str)
    assert jobs.str.fullmatch(r"\d+_[0-3]").all() and jobs.is_unique  # each run was one array task
    assert jobs.str.split("_").str[0].nunique() == 1


def test_a_cancelled_job_is_recorded_and_the_same_command_completes_it(slurm, data_dir, tmp_path):
    args = ["-m", "seed=4,5", *slurm_args(data_dir, tmp_path), "epochs=3"]
    sweep = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    victim = running_job(tmp_path, epochs=0)
    assert victim is not None, "no run started under SLURM"
    subprocess.run(["scancel", victim["slurm_job_id"]], check=True)
    out, _ = sweep.communicate(timeout=600)
    record = rundir.read_result(tmp_path / "runs" / victim["run_id"])
    print(f"cancelled {victim['slurm_job_id']}: recorded {record['status']}")
    assert record["status"] in ("interrupted", "ok"), out  # SIGTERM -> interrupted (ok if it had just finished)
    if record["status"] == "interrupted":
        assert sweep.returncode != 0  # the launcher reports the cancelled job
    done = {r["run_id"]: r["started_at"] for f in (tmp_path / "runs").glob("*/")
            if (r := rundir.read_result(f)) and r["status"] == "ok"}
    res = cli(*args, timeout=900)  # the same command: only what is missing runs
    assert res.returncode == 0, res.stdout + res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [4, 5] and set(runs["status"]) == {"ok"} and runs["run_id"].is_unique
    again = {rid: rundir.read_result(tmp_path / "runs" / rid)["started_at"] for rid in done}
    assert again == done  # the finished runs were not run again


def test_a_preempted_job_saves_its_epoch_is_requeued_and_resumes(slurm, data_dir, tmp_path):
    # the warning signal submitit asks SLURM for before a time limit or on preemption (sbatch --signal=USR2@...),
    # sent by hand mid-run: submitit requeues the job, and the run continues from its last saved epoch
    args = ["-m", "seed=8,9", *slurm_args(data_dir, tmp_path), "epochs=25"]
    sweep = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    victim = running_job(tmp_path, epochs=2)
    assert victim is not None, "no run got to its second epoch under SLURM"
    job = victim["slurm_job_id"]
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # SLURM holds a requeued job about 2 minutes; let it start at once
        state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        if "JobState=PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            break
        time.sleep(0.5)
    out, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, out
    record = rundir.read_result(tmp_path / "runs" / victim["run_id"])
    assert record["status"] == "ok" and record["epochs_done"] == 25, out
    assert record.get("resumed_from_epoch", 0) >= 2, out  # it went on from a saved epoch, not from the start
    epochs = records.read_epochs(tmp_path / "runs" / victim["run_id"])
    assert list(epochs.epoch) == list(range(1, 26))
    assert record["slurm_job_id"] == victim["slurm_job_id"]  # the same job, requeued
