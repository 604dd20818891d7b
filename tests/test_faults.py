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
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
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
