"""Run folders, atomic files and the tables rebuilt from them, under concurrency."""
from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from runner import records, rundir

CHOICES = {"dataset": "mnist5k", "model": "simple_cnn", "pooling": "max", "global_pool": "avg", "norm": "batch",
           "loss": "ce", "optim": "sgd"}


def hexid(name: str) -> str:
    """A run id (10 hex digits) for a test's short name."""
    import hashlib

    return hashlib.sha1(name.encode()).hexdigest()[:10]


def fake_run(root: Path, rid: str, seed: int, status: str = "ok", epochs: int = 3) -> None:
    folder = root / "runs" / rid
    config = {"seed": seed, "epochs": epochs, "lr": 0.05, "dataset": {"name": "mnist5k", "val_fraction": 0.1},
              "pooling": {"_target_": "models.pooling.MaxPool", "kernel_size": 2}, "results_dir": str(root)}
    rows = pd.DataFrame({"epoch": range(1, epochs + 1), "test_acc": [0.5] * epochs})
    records.write_csv(folder / "epochs.csv", rows)
    rundir.write_json(folder / "result.json", {"run_id": rid, "status": status, "choices": CHOICES, "config": config,
                                                "metrics": {"test_acc": 0.9}, "error": None})


def test_row_puts_axes_first_then_hyperparameters_metrics_and_bookkeeping(tmp_path):
    fake_run(tmp_path, "aaaaaaaaaa", 3)
    runs = records.rebuild_tables(tmp_path)
    cols = list(runs.columns)
    assert cols[:7] == list(CHOICES)
    assert cols.index("seed") < cols.index("pooling.kernel_size") < cols.index("test_acc") < cols.index("run_id")
    assert "results_dir" not in cols and "pooling._target_" not in cols
    table = pd.read_csv(tmp_path / "runs.csv")  # no post-processing needed
    assert table.loc[0, "seed"] == 3 and table.loc[0, "test_acc"] == 0.9 and table.loc[0, "pooling"] == "max"
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert list(epochs["epoch"]) == [1, 2, 3] and set(epochs["run_id"]) == {"aaaaaaaaaa"} and "pooling" in epochs


def test_completed_means_ok_or_diverged(tmp_path):
    for rid, status in (("a", "ok"), ("b", "diverged"), ("c", "failed"), ("d", "interrupted")):
        fake_run(tmp_path, rid * 10, 0, status)
    done = {rid for rid in "abcd" if rundir.completed(tmp_path / "runs" / (rid * 10))}
    assert done == {"a", "b"}
    assert rundir.completed(tmp_path / "runs" / "missing") is None


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "table.csv"
    rundir.write_text(target, "old\n")
    with pytest.raises(KeyboardInterrupt):
        with rundir.atomic_path(target) as tmp:
            Path(tmp).write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def _writer(root: str, rid: str, seed: int, barrier) -> None:
    fake_run(Path(root), rid, seed)
    barrier.wait()  # every process rebuilds at the same moment
    records.rebuild_tables(Path(root))
    pd.read_csv(Path(root) / "runs.csv")  # a reader never sees half a table


def test_concurrent_writers_never_lose_or_duplicate_a_row(tmp_path):
    ctx = mp.get_context("fork")
    n = 8
    for round_ in range(3):
        barrier = ctx.Barrier(n)
        procs = [
            ctx.Process(target=_writer, args=(str(tmp_path), hexid(f"r{round_}-{i}"), i, barrier)) for i in range(n)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        runs = pd.read_csv(tmp_path / "runs.csv")
        assert len(runs) == n * (round_ + 1) and runs["run_id"].is_unique
        assert len(pd.read_csv(tmp_path / "epochs.csv")) == 3 * n * (round_ + 1)
    assert not list(tmp_path.rglob("*.tmp"))


def test_result_json_is_plain_json(tmp_path):
    fake_run(tmp_path, "0123456789", 1)
    assert json.loads((tmp_path / "runs" / "0123456789" / "result.json").read_text())["status"] == "ok"


def _finisher(root: str, rid: str, seed: int, barrier) -> None:
    fake_run(Path(root), rid, seed)
    barrier.wait()  # every process finishes at the same moment
    records.update_tables(Path(root), rundir.read_result(Path(root) / "runs" / rid))


def test_a_finish_appends_its_rows_and_eight_at_once_lose_none(tmp_path):
    fake_run(tmp_path, hexid("first"), 0)
    records.rebuild_tables(tmp_path)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_finisher, args=(str(tmp_path), hexid(f"w{i}"), i, barrier)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    appended = pd.read_csv(tmp_path / "runs.csv", dtype={"run_id": str})
    epochs = pd.read_csv(tmp_path / "epochs.csv", dtype={"run_id": str})
    assert len(appended) == 9 and appended["run_id"].is_unique and len(epochs) == 27
    # the same tables as a rebuild from every folder, row for row
    rebuilt = records.rebuild_tables(tmp_path)
    key = ["run_id"]
    pd.testing.assert_frame_equal(
        appended.sort_values(key).reset_index(drop=True),
        pd.read_csv(tmp_path / "runs.csv", dtype={"run_id": str}).sort_values(key).reset_index(drop=True),
    )
    assert len(rebuilt) == 9


def test_a_rerun_or_a_new_column_rebuilds_instead_of_appending(tmp_path):
    rid = hexid("again")
    fake_run(tmp_path, rid, 0)
    records.rebuild_tables(tmp_path)
    fake_run(tmp_path, rid, 0, epochs=4)  # the same run finished again (force=true): replaced, not doubled
    records.update_tables(tmp_path, rundir.read_result(tmp_path / "runs" / rid), replace=True)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 1 and len(pd.read_csv(tmp_path / "epochs.csv")) == 4
    other = hexid("other")
    fake_run(tmp_path, other, 1)
    record = rundir.read_result(tmp_path / "runs" / other)
    record["metrics"]["test_new_metric"] = 0.5  # a column the table does not have yet
    rundir.write_json(tmp_path / "runs" / other / "result.json", record)
    records.update_tables(tmp_path, record)
    table = pd.read_csv(tmp_path / "runs.csv")
    assert len(table) == 2 and "test_new_metric" in table and table["test_new_metric"].notna().sum() == 1


def test_an_incomplete_last_line_is_repaired_by_the_next_finish(tmp_path):
    first, second = hexid("one"), hexid("two")
    fake_run(tmp_path, first, 0)
    records.rebuild_tables(tmp_path)
    with open(tmp_path / "runs.csv", "ab") as f:
        f.write(b"mnist5k,simple_cn")  # a crash in the middle of an append
    fake_run(tmp_path, second, 1)
    records.update_tables(tmp_path, rundir.read_result(tmp_path / "runs" / second))
    table = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(table["run_id"]) == sorted([first, second])


def test_records_rebuild_command(tmp_path, capsys):
    fake_run(tmp_path, hexid("x"), 0)
    assert records.main(["rebuild", str(tmp_path)]) == 0 and (tmp_path / "runs.csv").exists()
    assert records.main(["rebuild", str(tmp_path / "nowhere")]) == 2


def _hold(root: str, rid: str, held, release) -> None:
    lock = rundir.run_lock(Path(root), rid)
    lock.acquire()
    held.set()
    release.wait(30)
    lock.release()


def test_a_rebuild_leaves_out_a_run_in_progress_which_adds_its_row_when_it_finishes(tmp_path):
    """Under a parallel launcher one run's finish may rebuild the tables while another still trains."""
    done, busy = hexid("done"), hexid("busy")
    fake_run(tmp_path, busy, 1, status="running")
    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), busy, held, release))
    holder.start()
    assert held.wait(30)
    fake_run(tmp_path, done, 0)
    records.update_tables(tmp_path, rundir.read_result(tmp_path / "runs" / done))  # no table yet: a rebuild
    assert pd.read_csv(tmp_path / "runs.csv")["run_id"].tolist() == [done]
    release.set()
    holder.join(30)
    fake_run(tmp_path, busy, 1)  # it finishes
    records.update_tables(tmp_path, rundir.read_result(tmp_path / "runs" / busy))
    assert sorted(pd.read_csv(tmp_path / "runs.csv")["run_id"]) == sorted([done, busy])


def test_a_finish_writes_its_record_and_rows_together_so_a_concurrent_rebuild_never_doubles_it(tmp_path):
    """Two runs end at the same moment and the first to take the lock rebuilds (no table yet). The second's final
    record must not be on disk before its own turn, or the rebuild lists it and its append lists it again."""
    first, second = hexid("first"), hexid("second")
    fake_run(tmp_path, second, 1, status="running")
    ctx = mp.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), second, held, release))  # it is still training
    holder.start()
    assert held.wait(30)
    fake_run(tmp_path, first, 0)
    records.update_tables(tmp_path, rundir.read_result(tmp_path / "runs" / first), write=True)  # a rebuild
    release.set()
    holder.join(30)
    final = rundir.read_result(tmp_path / "runs" / second) | {"status": "ok"}
    assert rundir.read_result(tmp_path / "runs" / second)["status"] != "ok"  # not on disk before its turn
    records.update_tables(tmp_path, final, write=True)
    assert rundir.read_result(tmp_path / "runs" / second)["status"] == "ok"
    assert sorted(pd.read_csv(tmp_path / "runs.csv")["run_id"]) == sorted([first, second])


def test_every_setting_that_changes_the_run_id_is_a_runs_csv_column():
    # for each scalar run-level key of the schema: change it; if the run id changes, runs.csv must tell the two runs
    # apart by a column of that name (else the summary pools runs that differ only in run_id)
    import dataclasses

    from omegaconf import OmegaConf

    from runner.compose import Composer
    from runner.identity import identity
    from runner.schema import RunConfig, run_columns

    with Composer() as composer:
        cfg, choices = composer.compose([])
    base = identity(cfg, choices, "cpu", None, None)
    changed = {bool: lambda v: not v, int: lambda v: (v or 0) + 1, float: lambda v: (v or 0.0) + 0.5}
    for f in dataclasses.fields(RunConfig):
        value = cfg[f.name]
        if isinstance(value, (dict, list)) or OmegaConf.is_config(value) or f.name == "teacher":
            continue
        other = cfg.copy()
        unset_flag = value is None and str(f.type).startswith("bool")  # an off-by-default flag (skip_test)
        other[f.name] = True if unset_flag else changed.get(type(value), lambda v: "other")(value)
        if identity(other, choices, "cpu", None, None) != base:
            record = {"run_id": "0" * 10, "choices": choices, "config": OmegaConf.to_container(other)}
            assert f.name in records.row(record), f"{f.name} changes the run id but has no runs.csv column"

    @dataclasses.dataclass
    class Extended(RunConfig):  # a contributor adds a run-level setting: it is a column without a list to edit
        mixup_alpha: float = 0.0

    assert run_columns(Extended)[-1] == "mixup_alpha" and "results_dir" not in run_columns(Extended)


class Killed(BaseException):
    """A kill at one step of a finish (raised by a hook in place of the process dying there)."""


@pytest.mark.parametrize("step", ["after the record", "after the runs.csv row"])
def test_a_finish_killed_at_any_step_is_completed_by_the_next_command(tmp_path, monkeypatch, step):
    # one finished run in the tables; the second run's finish dies after its record, or after its runs.csv row and
    # before its epochs.csv rows; the next command's check adds what is missing, once, and says which runs
    fake_run(tmp_path, hexid("first"), 0)
    records.rebuild_tables(tmp_path)
    fake_run(tmp_path, hexid("second"), 1)
    record = rundir.read_result(tmp_path / "runs" / hexid("second"))
    with monkeypatch.context() as m:
        if step == "after the record":
            m.setattr(records, "_columns_to_append", lambda *a: (_ for _ in ()).throw(Killed()))
        else:
            fsync = records.os.fsync

            def die_after_the_runs_row(fd):  # the runs.csv append has reached the file; epochs.csv's has not begun
                fsync(fd)
                if records.os.readlink(f"/proc/self/fd/{fd}").endswith("runs.csv"):
                    raise Killed()
            m.setattr(records.os, "fsync", die_after_the_runs_row)
        with pytest.raises(Killed):
            records.update_tables(tmp_path, record, write=True)
    runs = pd.read_csv(tmp_path / "runs.csv", dtype={"run_id": str})
    assert (hexid("second") in set(runs.run_id)) == (step == "after the runs.csv row")
    assert records.repair_tables(tmp_path, [hexid("first"), hexid("second")]) == [hexid("second")]
    runs = pd.read_csv(tmp_path / "runs.csv", dtype={"run_id": str})
    epochs = pd.read_csv(tmp_path / "epochs.csv", dtype={"run_id": str})
    assert sorted(runs.run_id) == sorted([hexid("first"), hexid("second")]) and len(epochs) == 6
    assert records.repair_tables(tmp_path, [hexid("first"), hexid("second")]) == []  # nothing twice
    for name in ("runs.csv", "epochs.csv"):  # saved again by a spreadsheet: a byte-order mark before the header
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (tmp_path / name).read_bytes())
    assert records.repair_tables(tmp_path, [hexid("first"), hexid("second")]) == []
    assert (tmp_path / "runs.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # read as it is, not rebuilt


def test_the_command_after_a_cut_finish_adds_the_missing_rows_and_says_so(main_cli, tmp_path, data_dir):
    from conftest import TINY

    args = [*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path / 'res'}"]
    assert main_cli(*args).returncode == 0
    runs = pd.read_csv(tmp_path / "res" / "runs.csv", dtype={"run_id": str})
    rid = runs.run_id.iloc[0]
    runs.iloc[:0].to_csv(tmp_path / "res" / "runs.csv", index=False)  # as a kill between record and rows leaves it
    done = main_cli(*args)
    assert done.returncode == 0 and f"skip {rid}" in done.stdout
    assert f"added the missing rows of 1 finished run(s) to {tmp_path / 'res'}/runs.csv" in done.stdout
    assert pd.read_csv(tmp_path / "res" / "runs.csv", dtype={"run_id": str}).run_id.tolist() == [rid]


def test_a_forced_rerun_replaces_a_result_only_once_it_is_complete(main_cli, tmp_path, data_dir, monkeypatch):
    import runner.run as run_module
    from conftest import TINY

    args = [*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    assert main_cli(*args).returncode == 0
    rid = pd.read_csv(tmp_path / "runs.csv", dtype={"run_id": str}).run_id.iloc[0]
    folder = tmp_path / "runs" / rid
    before = {name: (folder / name).read_bytes() for name in ("result.json", "checkpoint.pt", "logits.pt")}
    table = (tmp_path / "runs.csv").read_bytes()

    def interrupted(*a, **k):
        raise KeyboardInterrupt()  # Ctrl-C during the forced rerun's training
    monkeypatch.setattr(run_module, "fit", interrupted)
    done = main_cli(*args, "force=true")
    assert done.returncode == 130 and "its earlier result is kept" in done.stdout
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert (tmp_path / "runs.csv").read_bytes() == table and not (folder / rundir.PREVIOUS).exists()
    # killed (no chance to restore) after the old result was set aside: the next command puts it back
    rundir.set_aside(folder)
    rundir.write_json(folder / "result.json", {"run_id": rid, "status": "running"})
    monkeypatch.undo()
    done = main_cli(*args)
    assert done.returncode == 0 and "its earlier complete result is restored" in done.stdout
    assert f"skip {rid}" in done.stdout and (folder / "result.json").read_bytes() == before["result.json"]


def test_a_closed_stdout_is_not_an_interruption(tmp_path, data_dir):
    import subprocess
    import sys

    from conftest import ROOT, TINY

    proc = subprocess.Popen([sys.executable, "-m", "runner", *TINY, "epochs=3", f"data_dir={data_dir}",
                             f"results_dir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    proc.stdout.readline()  # `| head -1`: one line read, then the pipe is closed
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    row = pd.read_csv(tmp_path / "runs.csv").iloc[0]
    assert row.status == "ok" and row.epochs_done == 3
