"""The tidy tables built from the run folders (runner/rundir.py), and ``python -m runner.records``.

``<root>/runs/<run_id>/`` holds config.yaml, epochs.csv, result.json, checkpoint.pt and logits.pt.
``<root>/runs.csv`` (a row per run) and ``<root>/epochs.csv`` (a row per run × epoch) are rebuilt
from the run folders under a file lock and replaced atomically: every writer rebuilds from what is
on disk, so concurrent jobs never lose or duplicate a row, and a reader never sees half a table.

pandas is imported by the functions that build or read a table, not by the module: every grid command checks its
tables for missing rows (``repair_tables``, the csv module) and should not pay 0.3 s for pandas when none is.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from filelock import FileLock

if TYPE_CHECKING:
    import pandas as pd

from runner.rundir import (DONE, STAGE_COLUMNS, completed, read_result, read_stages, report_corrupt, stage_columns,
                           stage_of, write_json, write_text)
from runner.schema import AXES, NOT_IDENTITY, RUN_COLUMNS

TOP_LEVEL = RUN_COLUMNS  # the run-level settings: every scalar key of the schema that is part of the identity
TEACHER = ("teacher_run_id", "teacher_test_acc")  # a distillation run's teacher, from its record
BOOKKEEPING = (
    "run_id",
    "status",
    "error",
    "train_seconds",
    "wall_seconds",
    "cpu_seconds",
    "params",
    "epochs_done",
    "n_train",
    "n_val",
    "n_test",
    "val_hash",
    "started_at",
    "finished_at",
    "git_commit",
    "torch_version",
    "versions",
    "command",
    "device_type",
    "autocast",
    "device",
    "threads",
    "interop_threads",
    "thread_env",
    "host",
    "slurm_job_id",
    "log",
    "resumed_from_epoch",
    "diverged_step",
)


def write_csv(path: Path, df: pd.DataFrame) -> None:
    write_text(path, df.to_csv(index=False))


def read_epochs(folder: Path) -> pd.DataFrame | None:
    """A run's epochs.csv, or None when it is missing, empty or not a table this runner wrote (reported once)."""
    path = folder / "epochs.csv"
    try:
        if not path.exists() or not path.stat().st_size:
            return None
    except OSError as e:
        report_corrupt(path, e.strerror or str(e))
        return None
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        report_corrupt(path, f"not a CSV table ({' '.join(str(e).split())})")
        return None
    if "epoch" not in df.columns:
        report_corrupt(path, "it has no 'epoch' column")
        return None
    return df


def _flatten(node: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k in ("_target_", "_partial_", "name") or f"{prefix}{k}" in NOT_IDENTITY:
            continue
        if isinstance(v, Mapping):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One runs.csv row: the axes, the run-level settings, every group's hyperparameters, metrics, bookkeeping."""
    cfg = record["config"]
    hyper: dict[str, Any] = {}
    for axis in AXES:
        hyper |= _flatten(cfg.get(axis) or {}, f"{axis}.")
    out = (
        dict(record["choices"])
        | stage_columns(record.get("tune") or [])
        | {k: cfg[k] for k in TOP_LEVEL if k in cfg}
        | {k: record[k] for k in TEACHER if k in record}
    )
    out |= dict(sorted(hyper.items())) | record.get("metrics", {})
    best = record.get("best") if isinstance(record.get("best"), dict) else {}
    out |= {"best_epoch": best.get("epoch")} | {f"best_{k}": v for k, v in best.items() if k != "epoch"} if best else {}
    return out | {"at_chance": record.get("at_chance")} | {k: record.get(k) for k in BOOKKEEPING}


def _columns(df: pd.DataFrame) -> list[str]:
    """Axes; seed, epochs, batch size, lr and weight decay with the norm's settings beside them (normalization
    changes what weight decay does to the effective learning rate); the other settings; metrics; bookkeeping."""
    hyper = sorted(c for c in df if "." in c and c.split(".")[0] in AXES)
    split = TOP_LEVEL.index("weight_decay") + 1
    first = (
        AXES
        + STAGE_COLUMNS
        + TOP_LEVEL[:split]
        + tuple(c for c in hyper if c.startswith("norm."))
        + TOP_LEVEL[split:]
        + TEACHER
        + tuple(c for c in hyper if not c.startswith("norm."))
    )
    return [c for c in first if c in df] + [c for c in df if c not in first and c not in BOOKKEEPING] + \
        [c for c in BOOKKEEPING if c in df]


def _epoch_frame(record: Mapping[str, Any], df: pd.DataFrame) -> pd.DataFrame:
    keys = {"run_id": record["run_id"], **record["choices"], "seed": record["config"].get("seed")}
    return df.assign(**keys)[list(keys) + [c for c in df.columns if c not in keys]]


def rebuild_tables(root: Path) -> pd.DataFrame:
    """Rebuild runs.csv and epochs.csv from every run folder under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".tables.lock")):
        return _rebuild(root)


def _rebuild(root: Path) -> pd.DataFrame:
    import pandas as pd

    # a run still in progress adds its rows when it finishes (update_tables); listing it now would double it
    records = [
        r for f in sorted((root / "runs").glob("*/")) if (r := read_result(f)) is not None and r["status"] != "running"
    ]
    runs = pd.DataFrame([row(r) for r in records])
    if len(runs):
        runs = runs[_columns(runs)]
    frames = [_epoch_frame(r, df) for r in records if (df := read_epochs(root / "runs" / r["run_id"])) is not None]
    write_csv(root / "runs.csv", runs)
    write_csv(root / "epochs.csv", pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
    return runs


def update_tables(root: Path, record: Mapping[str, Any], replace: bool = False, write: bool = False) -> None:
    """Put one finished run's rows into runs.csv and epochs.csv without reading any other run folder.

    Under the tables lock the rows are appended to each table in its own column order, one write and an
    fsync each: the cost does not grow with the number of runs. With ``write`` the record is also written as the
    run's result.json under that lock, so a rebuild by another process sees the finished record together with its
    rows or sees neither (else a rebuild between the two could list the run, and its append list it again).
    Everything is rebuilt from the folders
    (``rebuild_tables``) instead when a table is missing, when the run may already be in it (``replace``: an
    earlier record of this run existed), when the header lacks one of the run's columns, or when the last
    line is incomplete (a crash in the middle of an append, repaired here)."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    folder = root / "runs" / record["run_id"]
    epochs = read_epochs(folder)
    stages = read_stages(folder)
    with FileLock(str(root / ".tables.lock")):
        if write:
            write_json(folder / "result.json", record)
        tables = [(root / "runs.csv", pd.DataFrame([row(dict(record) | ({"tune": stages} if stages else {}))]))]
        if epochs is not None:
            tables.append((root / "epochs.csv", _epoch_frame(record, epochs)))
        plans = [(path, _columns_to_append(path, rows)) for path, rows in tables]
        if replace or any(columns is None for _, columns in plans):
            _rebuild(root)
            return
        for (path, columns), (_, rows) in zip(plans, tables):
            with open(path, "ab") as f:
                f.write(rows.reindex(columns=columns).to_csv(index=False, header=False).encode())
                f.flush()
                os.fsync(f.fileno())


def repair_tables(root: Path, run_ids: Iterable[str]) -> list[str]:
    """The finished runs among ``run_ids`` whose rows are missing from runs.csv or epochs.csv (a finish cut off
    between its record and its rows), after rebuilding the tables so that they have them; [] when none is missing.
    Each table's run_id column is read once, so the check costs one read of each table whatever the grid's size."""
    done = {rid for rid in run_ids if completed(root / "runs" / rid)}
    if not done:
        return []

    def listed(path: Path) -> set[str]:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # csv: pandas only when a row is missing
                rows = csv.reader(f)
                at = next(rows).index("run_id")
                return {r[at] for r in rows if len(r) > at}
        except (OSError, ValueError, UnicodeDecodeError, StopIteration, csv.Error):
            return set()

    missing = done - listed(root / "runs.csv")
    missing |= {rid for rid in done - listed(root / "epochs.csv") if read_epochs(root / "runs" / rid) is not None}
    if missing:
        rebuild_tables(root)
    return sorted(missing)


def _columns_to_append(path: Path, rows: pd.DataFrame) -> list[str] | None:
    """The table's columns, if ``rows`` can be appended to it as they are; else None."""
    try:
        with open(path, "rb") as f:
            header = f.readline().decode()
            f.seek(-1, os.SEEK_END)
            whole = f.read(1) == b"\n"
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return None
    columns = next(csv.reader([header]), [])
    return columns if columns and whole and not set(rows.columns) - set(columns) else None


def main(argv: list[str] | None = None) -> int:
    """``python -m runner.records rebuild RESULTS``: rebuild the tables from the run folders.
    ``python -m runner.records log RESULTS --to mlflow|tensorboard``: send the finished runs to a tracker from their
    records, without training (a run the tracker holds already is left alone)."""
    parser = argparse.ArgumentParser(prog="python -m runner.records", description=main.__doc__)
    parser.add_argument("command", choices=["rebuild", "log"])
    parser.add_argument(
        "results", type=Path, nargs="?", default=Path("results"), help="results root (default %(default)s)"
    )
    parser.add_argument("--to", choices=["mlflow", "tensorboard"], help="log: the tracker")
    parser.add_argument("--uri", help="log --to mlflow: a tracking URI (default: sqlite in the results root)")
    parser.add_argument("--experiment", default="runner", help="log --to mlflow: the experiment (%(default)s)")
    args = parser.parse_args(argv)
    if not (args.results / "runs").is_dir():
        print(f"error: {args.results}: no runs/ folder: not a results root", file=sys.stderr)
        return 2
    if args.command == "log":
        if args.to is None:
            print("error: log: say which tracker with --to mlflow or --to tensorboard", file=sys.stderr)
            return 2
        from runner.loggers import send_finished  # here: the trackers' libraries load only for this command

        finished = []
        for folder in sorted(p for p in (args.results / "runs").iterdir() if p.is_dir()):
            record = read_result(folder)
            if record and record.get("status") in DONE:
                finished.append((record, stage_of(folder), read_epochs(folder)))
        try:
            sent, known = send_finished(finished, args.results, args.to, args.uri, args.experiment)
        except ConnectionError as e:
            print(f"error: {e}; the same command sends the rest once the tracker works", file=sys.stderr)
            return 1
        print(f"sent {sent} finished run(s) to {args.to}; {known} were there already")
        return 0
    runs = rebuild_tables(args.results)
    print(f"rebuilt {args.results / 'runs.csv'} ({len(runs)} runs) and {args.results / 'epochs.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
