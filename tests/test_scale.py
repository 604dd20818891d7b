"""Scale: parallel launches, concurrent writers, killed runs. Nothing may be lost or half-written."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, cli
from omegaconf import OmegaConf

from runner.plan import make_plan

from runner import machine, records, rundir

CHOICES = {"dataset": "mnist", "model": "simple_cnn", "pooling": "max", "global_pool": "avg", "norm": "batch",
           "loss": "ce", "optim": "sgd", "teacher": None}


def _finish_a_run(root: str, run_id: str, barrier) -> None:
    """What a run does at its end: write its record, then rebuild the tables; all at the same moment."""
    folder = records.Path(root) / "runs" / run_id
    barrier.wait()
    rundir.write_json(folder / "result.json", {"run_id": run_id, "status": "ok", "choices": CHOICES,
                                                "config": {"seed": 0}, "metrics": {"test_acc": 0.5}})
    records.rebuild_tables(records.Path(root))


def test_eight_processes_finishing_at_once_lose_no_row_and_duplicate_none(tmp_path):
    ctx = mp.get_context("fork")
    expected: list[str] = []
    for wave in range(4):
        barrier = ctx.Barrier(8)
        ids = [f"a{wave:04d}b{i:04d}" for i in range(8)]
        procs = [ctx.Process(target=_finish_a_run, args=(str(tmp_path), rid, barrier)) for rid in ids]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        expected += ids
        runs = pd.read_csv(tmp_path / "runs.csv")  # the last writer rebuilt from everything on disk
        assert sorted(runs["run_id"]) == sorted(expected) and runs["run_id"].is_unique


@pytest.mark.parametrize("attempt", range(2))
def test_a_run_killed_at_a_random_moment_leaves_whole_tables_and_reruns(data_dir, tmp_path, attempt):
    args = [*TINY, f"data_dir={data_dir}", "dataset.verify_checksums=false", f"results_dir={tmp_path}"]
    proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until it trains, then kill it somewhere in its first seconds
        if line.startswith("run ") or time.time() > deadline:
            break
    time.sleep(random.Random(attempt).uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    folders = list((tmp_path / "runs").glob("*/"))
    assert len(folders) == 1
    record = rundir.read_result(folders[0])
    if (tmp_path / "runs.csv").exists():  # whole or absent, never half a table
        table = pd.read_csv(tmp_path / "runs.csv")
        assert len(table) <= 1 and set(table.columns) >= {"run_id", "status"}
    if record is not None and record["status"] != "ok":  # killed before it finished
        assert record["status"] == "interrupted" and "killed" in record["error"]
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "status"] == "ok"


def test_parallel_jobs_share_the_cores_and_get_a_gpu_each(monkeypatch):
    monkeypatch.setattr(machine, "usable_cores", lambda: 8)
    monkeypatch.setattr(machine, "gpu_count", lambda: 1)
    joblib = OmegaConf.create({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                               "n_jobs": 3})
    plan = make_plan(["threads=0"])
    placed = machine.place(plan, joblib)
    assert placed.cfg.threads == 2 and placed.cfg.device == "auto"  # 3 jobs × 2 threads <= 8 cores
    assert placed.run_id == plan.run_id and plan.cfg.threads == 0  # the plan it was given is unchanged
    placed = machine.place(make_plan(["threads=4", "device=cpu"]), joblib)
    assert placed.cfg.threads == 4 and placed.cfg.device == "cpu"  # what the user set stands
    basic = OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})
    assert machine.place(plan, basic) is plan  # one run at a time: the run uses the cores it may use
    assert machine.machine_jobs() == 8  # one GPU: a job per core
    monkeypatch.setattr(machine, "gpu_count", lambda: 2)
    assert machine.machine_jobs() == 2  # several GPUs: a job per GPU


def _claim(queue) -> None:
    queue.put(machine._claim_gpu(2))
    time.sleep(1.0)  # hold it while the other worker claims


def test_two_workers_claim_different_gpus(monkeypatch, tmp_path):
    monkeypatch.setattr(machine.tempfile, "gettempdir", lambda: str(tmp_path))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(queue,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert sorted(queue.get(timeout=5) for _ in procs) == [0, 1]


@pytest.mark.slow
def test_launcher_local_runs_the_grid_in_parallel_as_the_same_runs(data_dir, tmp_path, main_cli):
    args = [*TINY, f"data_dir={data_dir}", "dataset.verify_checksums=false", f"results_dir={tmp_path}", "threads=0"]
    res = cli("-m", "seed=0,1,2,3", "launcher=local", "hydra.launcher.n_jobs=2", *args)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2, 3] and set(runs["status"]) == {"ok"} and runs["run_id"].is_unique
    threads = {rundir.read_result(tmp_path / "runs" / r)["config"]["threads"] for r in runs["run_id"]}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}
    res = main_cli("-m", "seed=0,1,2,3", *args)  # the launcher is not part of what a run is: all four are done
    assert res.returncode == 0 and res.stdout.count("skip ") == 4, res.stdout


@pytest.mark.slow
def test_two_students_of_one_untrained_teacher_in_parallel_train_it_once(data_dir, tmp_path):
    res = cli("-m", "loss=kd,pld", "teacher=simple_cnn_wide", "teacher.overrides=['model=simple_cnn','epochs=3']",
              "launcher=local", "hydra.launcher.n_jobs=2", *TINY,
              f"data_dir={data_dir}", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 3 and set(runs["status"]) == {"ok"}
    students = runs[runs["loss"].isin(["kd", "pld"])]
    teacher = runs[runs["run_id"] == students["teacher_run_id"].iloc[0]]
    assert students["teacher_run_id"].nunique() == 1 and len(teacher) == 1
    assert res.stdout.count(f"run {teacher['run_id'].iloc[0]} (") == 1  # trained once; the other student waited


def test_a_run_killed_mid_way_resumes_from_its_last_epoch_bit_identical(data_dir, tmp_path, main_cli):
    """SIGKILL at a random moment after the second epoch, the same command again: the run continues from the
    last saved epoch and ends with the weights and metrics of an uninterrupted run, bit for bit (CPU)."""
    args = [*TINY, "epochs=6", f"data_dir={data_dir}"]
    whole = main_cli(*args, f"results_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    cmd = [sys.executable, "-m", "runner", *args, f"results_dir={tmp_path / 'cut'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            break
    time.sleep(random.Random(0).uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    again = main_cli(*args, f"results_dir={tmp_path / 'cut'}")  # the same command, through the same entry point
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout and "after epoch" in again.stdout
    (a,), (b,) = (list((tmp_path / r / "runs").iterdir()) for r in ("whole", "cut"))
    assert a.name == b.name and not (b / "resume.pt").exists()
    wa, wb = (torch.load(f / "checkpoint.pt", weights_only=True)["model"] for f in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((f / "result.json").read_text()) for f in (a, b))
    assert ra["metrics"] == rb["metrics"] and ra["epochs_done"] == rb["epochs_done"] == 6
    ea, eb = (pd.read_csv(f / "epochs.csv") for f in (a, b))
    timing = ["train_s", "train_cpu_s", "eval_s"]  # the clock, not the computation
    assert ea.drop(columns=timing).equals(eb.drop(columns=timing))


def test_usable_cores_follows_the_affinity_mask_and_the_cgroup_quota(tmp_path):
    import os

    from runner.machine import usable_cores

    mask = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "missing") == mask
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == mask
    cpu_max.write_text("50000 100000\n")  # half a core: one thread
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{150000 * mask} 100000\n")  # a quota above the mask: the mask
    assert usable_cores(cpu_max) == mask
    cpu_max.write_text("not numbers\n")
    assert usable_cores(cpu_max) == mask


@pytest.mark.slow
def test_submitit_local_requeues_a_signalled_job_which_resumes(data_dir, tmp_path):
    # submitit's preemption signal (USR2) to the job process: it checkpoints, exits to be requeued, and the
    # restarted job continues the run from its last saved epoch
    args = [sys.executable, "-m", "runner", "-m", "seed=8", *TINY, "epochs=20", f"data_dir={data_dir}",
            f"results_dir={tmp_path}", "launcher=submitit_local"]
    sweep = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job, deadline = None, time.time() + 300
    while job is None and time.time() < deadline:  # the job process, once it has saved two epochs
        folders = list((tmp_path / "runs").glob("*/")) if (tmp_path / "runs").exists() else []
        if folders and (records.read_epochs(folders[0]) is not None and len(records.read_epochs(folders[0])) >= 2):
            for proc in pathlib.Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                if "submitit.core._submit" in cmd and str(tmp_path) in cmd:
                    job = int(proc.name)
        time.sleep(0.3)
    assert job is not None, "the submitit job never got to its second epoch"
    os.kill(job, signal.SIGUSR2)
    out, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, out
    (folder,) = (tmp_path / "runs").glob("*/")
    record = rundir.read_result(folder)
    assert record["status"] == "ok" and record["epochs_done"] == 20 and record.get("resumed_from_epoch", 0) >= 2, out
