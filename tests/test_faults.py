"""Fault injection: what a full disk, a kill at a given step, a foreign file or a missing scheduler leaves behind.

Each test puts the fault exactly where it hurts (an in-process hook at one step, a real tmpfs filled to the
last byte, a state file from other code) and then asserts what the issue's guarantees say: nothing recorded is
lost or left ``running``, the same command completes the work, and a setting that cannot work is one line and
exit 2 with nothing written. Earlier fault tests live beside the code they cover: the finish cut between record
and rows (test_records.py), the tuning journal and a trial's life (test_tune.py), parallel tracker starts
(test_tracking.py), shared grids and closed pipes (test_scale.py, test_cli.py).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from conftest import ROOT, TINY

from runner import records
from runner.plan import make_plan


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m"):
    """A tmpfs of ``size`` mounted at ``path`` (root only; elsewhere the test skips and says why)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write to ``disk`` until it has no byte left; the file that fills it is returned (delete it to free it)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 4096, 1):  # down to the last byte
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def test_a_disk_that_fills_at_the_finish_records_the_run_failed_and_the_same_command_completes_it(
        data_dir, tmp_path, main_cli, monkeypatch):
    results = tmp_path / "disk"
    args = [*TINY, f"data_dir={data_dir}", f"results_dir={results}"]
    with small_disk(results):
        real = records.update_tables
        fillers = []

        def full_at_finish(*a, **k):
            fillers.append(fill(results))
            return real(*a, **k)

        monkeypatch.setattr(records, "update_tables", full_at_finish)
        first = main_cli(*args)
        monkeypatch.undo()
        assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
        (folder,) = (results / "runs").iterdir()
        record = json.loads((folder / "result.json").read_text())
        assert record["status"] == "failed" and "No space left on device" in record["error"], record
        fillers[0].unlink()
        again = main_cli(*args)
        assert again.returncode == 0, again.stderr
        assert json.loads((folder / "result.json").read_text())["status"] == "ok"
        runs = pd.read_csv(results / "runs.csv")
        assert list(runs["run_id"]) == [folder.name] and list(runs["status"]) == ["ok"]
        assert len(pd.read_csv(results / "epochs.csv")) == 1


def test_an_unwritable_table_records_the_run_failed_with_the_file_named(data_dir, tmp_path, main_cli):
    (tmp_path / "runs.csv").mkdir(parents=True)  # a folder where the table should be: no write can go through
    first = main_cli(*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}")
    assert first.returncode == 1 and "Traceback" not in first.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    record = json.loads((folder / "result.json").read_text())
    assert record["status"] == "failed" and "runs.csv" in record["error"], record


def test_a_resume_state_with_the_right_id_but_other_weights_is_ignored_with_a_warning(data_dir, tmp_path, capsys):
    from runner.run import run

    plan = make_plan([*TINY, "epochs=2", f"data_dir={data_dir}", f"results_dir={tmp_path}"])
    plan.folder.mkdir(parents=True)
    torch.save({"run_id": plan.run_id, "epoch": 1, "rows": [{"epoch": 1}], "model": {"w": torch.zeros(3)},
                "optimizer": {}}, plan.folder / "resume.pt")
    record = run(plan)
    assert record["status"] == "ok" and record["epochs_done"] == 2 and "resumed_from_epoch" not in record
    assert "resume.pt" in capsys.readouterr().err


def test_launcher_slurm_without_sbatch_is_one_line_and_exit_2(data_dir, tmp_path, main_cli):
    empty = tmp_path / "bin"
    empty.mkdir()
    res = main_cli("-m", "seed=1,2", "launcher=slurm", *TINY, f"data_dir={data_dir}",
                   f"results_dir={tmp_path / 'out'}", env={"PATH": str(empty)})
    assert res.returncode == 2 and "launcher=slurm: this machine has no sbatch" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_scheduler_that_refuses_the_jobs_is_one_line_and_exit_2(data_dir, tmp_path, main_cli):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    sbatch = bin_ / "sbatch"
    sbatch.write_text("#!/bin/sh\necho 'sbatch: error: Unable to contact slurm controller' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    res = main_cli("-m", "seed=1,2", "launcher=slurm", *TINY, f"data_dir={data_dir}",
                   f"results_dir={tmp_path / 'out'}", env={"PATH": f"{bin_}:{os.environ['PATH']}"})
    assert res.returncode == 2, res.stderr
    assert "could not submit the runs, so nothing ran" in res.stderr and "Unable to contact" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_a_hydra_folder_that_cannot_be_created_is_one_line_and_exit_2(key, data_dir, tmp_path, main_cli):
    multirun = ["-m", "seed=1,2"] if "sweep" in key else []
    res = main_cli(*multirun, *TINY, f"{key}=/proc/runner-x", f"data_dir={data_dir}", f"results_dir={tmp_path}/o")
    assert res.returncode == 2 and f"{key}=/proc/runner-x: cannot create folders in /proc" in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


@contextlib.contextmanager
def read_only(folder: Path, at: Path):
    """``folder`` seen through a read-only bind mount at ``at`` (root only; elsewhere the test skips)."""
    at.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("a read-only file system is simulated with a bind mount, which needs root")
    bound = subprocess.run(["mount", "--bind", str(folder), str(at)], capture_output=True)
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(at)], check=True, capture_output=True)
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def test_the_summary_of_a_read_only_results_root_is_one_line_and_exit_2(tmp_path, capsys):
    from runner.summary.cli import main as summary_main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "docs/examples/norm_mnist5k/runs.csv", src / "runs.csv")
    with read_only(src, tmp_path / "ro") as ro:
        code = summary_main([str(ro / "runs.csv"), "--baseline", "norm=batch", "--no-plots"])
    said = capsys.readouterr().out
    assert code == 2 and "Read-only file system" in said and "--out" in said and "Traceback" not in said, said
    assert [p.name for p in src.iterdir()] == ["runs.csv"]


# ---------------------------------------------------------------- the tuner's journal lock

HOLDER = """
import sys
from pathlib import Path
from runner.journal import JournalLock
lock = JournalLock(Path(sys.argv[1]))
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def hold_journal_lock(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def append_in_background(path: Path) -> threading.Thread:
    """A tuner's first append (creating a study) in a thread: alive while it waits for the lock."""
    import optuna

    from runner.journal import storage

    thread = threading.Thread(target=lambda: optuna.create_study(study_name="s", storage=storage(path)), daemon=True)
    thread.start()
    return thread


def test_the_lock_of_a_tuner_killed_while_holding_it_is_free_at_once(tmp_path):
    path = tmp_path / "journal.log"
    holder = hold_journal_lock(path)
    holder.kill()
    holder.wait(60)
    waiter = append_in_background(path)
    waiter.join(20)  # Optuna's own lock: 30 s of waiting at best (forever with a relative path)
    assert not waiter.is_alive()


def test_a_live_tuner_silent_past_optunas_grace_period_keeps_its_lock(tmp_path):
    """A holder stopped (SIGSTOP: an NFS stall, a suspended job) for longer than the 30 s after which Optuna's own
    locks are broken, with a journal untouched for an hour: the waiter waits, and appends once it is released."""
    import inspect

    from optuna.storages.journal import JournalFileSymlinkLock

    grace = inspect.signature(JournalFileSymlinkLock).parameters["grace_period"].default
    path = tmp_path / "journal.log"
    path.write_bytes(b"")
    holder = hold_journal_lock(path)
    try:
        holder.send_signal(signal.SIGSTOP)
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        waiter = append_in_background(path)
        waiter.join(grace + 5)
        assert waiter.is_alive()  # still waiting: the lock was not taken from a live holder
        holder.send_signal(signal.SIGCONT)
        holder.stdin.write("\n")
        holder.stdin.flush()
        waiter.join(60)
        assert not waiter.is_alive() and holder.wait(60) == 0
    finally:
        holder.kill()
    assert all(json.loads(line)["op_code"] == 0 for line in path.read_text().splitlines())  # one whole entry


# ---------------------------------------------------------------- SIGKILL at each step of a trial's life

KILL_AT = """
import importlib, os, signal, sys
where, when, entry = sys.argv[1:4]
module, _, attr = where.partition(":")
*path, name = attr.split(".")
owner = importlib.import_module(module)
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)

def killed(*args, **kwargs):
    out = real(*args, **kwargs) if when == "after" else None  # e.g. a storage call is written, then the kill
    os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(owner, name, killed)
sys.argv = [entry, *sys.argv[4:]]
sys.exit(importlib.import_module(entry).main())
"""


def killed_at(step: str, entry: str, args: list[str]) -> None:
    """``python -m <entry> <args>`` with a SIGKILL at ``step`` ("module:attr:before|after"): it must die there."""
    where, when = step.rsplit(":", 1)
    done = subprocess.run([sys.executable, "-c", KILL_AT, where, when, entry, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


TRIAL_STEPS = {
    "created, no setting yet": "optuna.storages:JournalStorage.create_new_trial:after",
    "one of its settings recorded": "optuna.storages:JournalStorage.set_trial_param:after",
    "planned, before its runs": "runner.tune:launch_plans:before",
    "trained, before it is told": "runner.tune:outcome:before",
    "told, before trials.csv": "runner.tune:write_trials:before",
    "chosen, before the final runs": "runner.tune:run_finals:before",
}


@pytest.mark.parametrize("step", TRIAL_STEPS, ids=list(TRIAL_STEPS))
def test_a_kill_at_any_step_of_a_trials_life_loses_nothing_and_runs_no_untuned_setting(
        step, data_dir, tmp_path, monkeypatch):
    from runner import tune
    from runner.journal import storage
    from runner.study import UNSAMPLED

    res = tmp_path / "res"
    args = ["pooling=max", *TINY, "tune.trials=2", "tune.exploratory=true", f"data_dir={data_dir}",
            f"results_dir={res}"]
    killed_at(TRIAL_STEPS[step], "runner.tune", args)
    monkeypatch.chdir(tmp_path)
    assert tune.main(args) == 0
    (name,) = optuna.get_all_study_names(storage(res / "tune" / "journal.log"))
    study = optuna.load_study(study_name=name, storage=storage(res / "tune" / "journal.log"))
    kept = [t for t in study.trials if not t.user_attrs.get(UNSAMPLED)]
    assert len(kept) == 2 and all(t.state == TrialState.COMPLETE for t in kept)
    assert all(set(t.params) == {"lr", "weight_decay"} for t in kept)  # conf/tune/default.yaml's space
    runs = pd.read_csv(res / "runs.csv")
    assert runs.run_id.is_unique and (runs.status == "ok").all()
    tuned = runs[runs.stage.str.contains("tune")]
    assert sorted(tuned.trial.astype(int)) == sorted(t.number for t in kept)
    final = runs[runs.stage.str.contains("final")]
    best = study.best_trial
    assert len(final) == 1 and final.lr.iloc[0] == pytest.approx(best.params["lr"])  # the chosen setting, tuned
    trials = pd.read_csv(res / "tune" / "trials.csv")  # a trial set aside is listed, outside the budget
    assert sorted(trials[trials.in_budget].trial.astype(int)) == sorted(t.number for t in kept)
    assert trials[trials.chosen].trial.tolist() == [best.number]


FINISH_STEPS = {
    "checkpoint saved, logits not": "runner.run:save_checkpoint:after",
    "logits saved, record not": "runner.run:final_metrics:before",
    "record written, rows not": "runner.records:_columns_to_append:before",
    "rows written, the finish not returned": "runner.rundir:drop_previous:before",
}


@pytest.mark.parametrize("step", FINISH_STEPS, ids=list(FINISH_STEPS))
def test_a_kill_at_any_step_of_a_runs_finish_is_completed_by_the_same_command(step, data_dir, tmp_path, main_cli):
    args = [*TINY, "epochs=2", f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    killed_at(FINISH_STEPS[step], "runner.__main__", args)
    again = main_cli(*args)
    assert again.returncode == 0, again.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    record = json.loads((folder / "result.json").read_text())
    assert record["status"] == "ok" and record["epochs_done"] == 2
    assert all((folder / f).is_file() for f in ("checkpoint.pt", "logits.pt")) and not (folder / "resume.pt").exists()
    runs, epochs = pd.read_csv(tmp_path / "runs.csv"), pd.read_csv(tmp_path / "epochs.csv")
    assert list(runs.run_id) == [folder.name] and list(runs.status) == ["ok"]  # once, as finished
    assert sorted(epochs.epoch) == [1, 2] and set(epochs.run_id) == {folder.name}


# ---------------------------------------------------------------- trackers in a crowd

CROWD = """
import contextlib, os, sys, time, traceback
from pathlib import Path
from omegaconf import OmegaConf
from runner.loggers import open_tracker
import mlflow  # imported once, before the fork, with its SQL store: every process opens the store at the same moment
with contextlib.suppress(ImportError):
    import mlflow.store.tracking.sqlalchemy_store

root, n, go, logger = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), OmegaConf.load(sys.argv[4])
children = []
for i in range(n):
    pid = os.fork()
    if pid == 0:  # one run's tracker, in a process of its own
        try:
            while not go.exists():
                time.sleep(0.01)
            cfg = OmegaConf.create({"results_dir": root, "seed": i, "logger": logger})
            tracker = open_tracker(cfg, f"{i:010x}", f"seed={i}")
            tracker.epoch({"epoch": 1, "train_loss": 1.0 / (i + 1)})
            tracker.finish({"status": "ok", "epochs_done": 1, "metrics": {"test_acc": i / 100}})
            sys.stderr.flush()
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    children.append(pid)
print("forked", flush=True)
sys.exit(sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children))
"""


def test_32_runs_whose_trackers_start_at_the_same_moment_are_32_tracked_runs(tmp_path):
    """The tracker's part of 32 runs, 32 processes released together on a fresh results folder (the training around
    it changes nothing here, and 32 trainings at once would take minutes on 2 cores; the processes are forked from
    one that imported MLflow and its SQL store, which each would otherwise spend 2.5 s of CPU on): MLflow's store
    is created and migrated once, inside results_dir although its name holds '?' and '#' (the URI is built by
    SQLAlchemy, not by string formatting), no folder is left beside it, and every run is in it with its parameters
    and metrics. Before: 0 of 6 tracked, a half-migrated store. test_tracking.py runs real trainings with
    logger=mlflow."""
    mlflow = pytest.importorskip("mlflow")
    from sqlalchemy.engine import URL

    from runner.compose import CONF_DIR

    n, root, go = 32, tmp_path / "res" / "a?b" / "c#d", tmp_path / "go"  # '?' and '#' once put the store outside
    crowd = subprocess.Popen([sys.executable, "-c", CROWD, str(root), str(n), str(go),
                              str(CONF_DIR / "logger" / "mlflow.yaml")], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert crowd.stdout.readline() == "forked\n"  # every process is waiting at the start line
    go.touch()
    _, errors = crowd.communicate(timeout=900)
    assert crowd.returncode == 0 and "logger=mlflow" not in errors, errors  # failed processes, or a tracker off
    assert (root / "mlflow.db").is_file()  # and no folder named with the escapes beside it or above it
    assert [p.name for p in root.parent.iterdir()] == ["c#d"] and [p.name for p in root.parent.parent.iterdir()] == [
        "a?b"]
    client = mlflow.MlflowClient(URL.create("sqlite", database=str(root / "mlflow.db"))
                                 .render_as_string(hide_password=False))
    runs = client.search_runs([client.get_experiment_by_name("runner").experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == [f"{i:010x}" for i in range(n)]
    assert all(r.info.status == "FINISHED" and r.data.metrics["test_acc"] == int(r.info.run_name, 16) / 100
               and r.data.params["seed"] == str(int(r.info.run_name, 16)) for r in runs)
