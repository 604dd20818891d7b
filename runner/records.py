"""Run folders and the tidy tables built from them.

``<root>/runs/<run_id>/`` holds config.yaml, epochs.csv, result.json, checkpoint.pt and logits.pt.
``<root>/runs.csv`` (a row per run) and ``<root>/epochs.csv`` (a row per run × epoch) are rebuilt
from the run folders under a file lock and replaced atomically: every writer rebuilds from what is
on disk, so concurrent jobs never lose or duplicate a row, and a reader never sees half a table.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
from filelock import FileLock, Timeout

from runner.schema import AXES, NOT_IDENTITY, RUN_COLUMNS, RUN_ID

DONE = ("ok", "diverged")  # finished runs; failed, interrupted and killed ones run again
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


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022, so colleagues can read


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary name beside ``path``; on success rename it over ``path`` (atomic on POSIX).

    mkstemp creates the file 0600; it gets the mode a plain open() would have given before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


COMMAND = "RUNNER_COMMAND"  # environment: the command line (python -m runner or runner.tune) a run's record names
RESUME = "resume.pt"  # in a run folder: the state the next epoch needs, while the run is not finished


def cannot_write(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (created if missing), or None when they can."""
    path = folder.expanduser()
    if path.exists() and not path.is_dir():
        return "is a file, not a folder. Give a folder (it is created if missing)."
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    try:  # a probe, removed at once: permission bits say nothing for root, nor for read-only or virtual file systems
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".runner-probe-"))
    except OSError as e:
        return f"cannot create folders in {existing} ({e.strerror}); choose a folder you can write to."
    return None


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    write_text(path, df.to_csv(index=False))


def run_lock(root: Path, run_id: str) -> FileLock:
    """The lock a process holds while it trains a run (an flock: the OS drops it when the process dies)."""
    if not RUN_ID.fullmatch(run_id):  # an id is data, never a path
        raise ValueError(f"not a run id: {run_id!r}")
    (root / ".locks").mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".locks" / f"{run_id}.lock"))


class CorruptRecord(Exception):
    """A file in a run folder that is not what this runner writes: reported once and skipped."""


_reported: set[str] = set()


def report_corrupt(path: Path, what: str) -> None:
    """Say once per process that ``path`` is skipped, and why (it never stops another run or the summary)."""
    if str(path) not in _reported:
        _reported.add(str(path))
        print(f"warning: skipping {path}: {what}", file=sys.stderr)


def _check_record(record: Any, folder: Path) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise CorruptRecord(f"a run record is a JSON object, this is a {type(record).__name__}")
    rid = record.get("run_id")
    if not isinstance(rid, str) or not RUN_ID.fullmatch(rid) or rid != folder.name:
        raise CorruptRecord(f"its run_id {rid!r} is not the folder's name ({folder.name!r}, 10 hexadecimal digits)")
    if not isinstance(record.get("status"), str):
        raise CorruptRecord("it has no status")
    for key in ("config", "choices"):
        if not isinstance(record.get(key), dict):
            raise CorruptRecord(f"its '{key}' is not a mapping")
    metrics = record.get("metrics", {})
    if not isinstance(metrics, dict) or not all(isinstance(v, (int, float, type(None))) for v in metrics.values()):
        raise CorruptRecord("its 'metrics' is not a mapping of numbers")
    if not all(isinstance(v, (str, type(None))) for v in record["choices"].values()):
        raise CorruptRecord("its 'choices' are not option names")
    return record


def read_result(folder: Path) -> dict[str, Any] | None:
    """A run's record, or None when there is none or it is not a valid record (reported once, never raised).

    A run records ``running`` when it starts; if no process holds its lock any more it was killed
    (SIGKILL, a node failure) before it could say so, and reads as ``interrupted``."""
    path = folder / "result.json"
    try:
        record = _check_record(json.loads(path.read_text()), folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, CorruptRecord) as e:
        report_corrupt(path, str(e))
        return None
    stages = read_stages(folder)
    if stages:
        record["tune"] = stages
    if record.get("status") == "running":
        lock = run_lock(folder.parent.parent, record["run_id"])
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return record  # still training
        lock.release()
        record |= {"status": "interrupted", "error": "the process ended without recording a result (killed)"}
    return record


def read_epochs(folder: Path) -> pd.DataFrame | None:
    """A run's epochs.csv, or None when it is missing, empty or not a table this runner wrote (reported once)."""
    path = folder / "epochs.csv"
    try:
        if not path.exists() or not path.stat().st_size:
            return None
        df = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        report_corrupt(path, f"not a CSV table ({' '.join(str(e).split())})")
        return None
    if "epoch" not in df.columns:
        report_corrupt(path, "it has no 'epoch' column")
        return None
    return df


def read_logits(folder: Path) -> dict[str, Any] | None:
    """A run's logits.pt (tensors only, no pickled code), or None when missing or unreadable (reported once)."""
    path = folder / "logits.pt"
    if not path.exists():
        return None
    import torch  # here: reading tables needs no torch, and the summary imports it only to draw reliability

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, or a pickle that is not plain tensors
        report_corrupt(path, f"not a logits file this runner wrote ({' '.join(str(e).split()[:16])})")
        return None
    if isinstance(saved, dict) and "test_logits" not in saved and isinstance(saved.get("val_logits"), torch.Tensor):
        return None  # a run without a test pass (skip_test: a tuning trial's): no test logits to read
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), torch.Tensor) for k in ("test_logits", "test_target")
    ):
        report_corrupt(path, "it has no test_logits and test_target tensors")
        return None
    return saved


STAGES = "tune.json"  # in a run folder: the studies of python -m runner.tune that this run serves, and how
STAGE_COLUMNS = ("stage", "study", "trial", "tuned")


def read_stages(folder: Path) -> list[dict[str, Any]]:
    """The run's roles in tuning studies: [{study, trial, stage (tune | final), params}], [] when none or unreadable."""
    path = folder / STAGES
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        report_corrupt(path, str(e))
        return []
    ok = isinstance(entries, list) and all(isinstance(e, dict) and e.get("stage") in ("tune", "final")
                                           and isinstance(e.get("study"), str) and isinstance(e.get("trial"), int)
                                           and isinstance(e.get("params", {}), dict) for e in entries)
    if not ok:
        report_corrupt(path, "expected a list of {study, trial, stage: tune|final, params}")
        return []
    return entries


def add_stage(folder: Path, entry: Mapping[str, Any]) -> bool:
    """Record that the run serves a study (as a trial or a final run); True if that is new. Only runner.tune writes
    these, one process per study (it holds the study's lock)."""
    entries = read_stages(folder)
    key = (entry["study"], entry["trial"], entry["stage"])
    if any((e["study"], e["trial"], e["stage"]) == key for e in entries):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / STAGES, entries + [dict(entry)])
    return True


def stage_of(folder: Path) -> str:
    """The run's stage in tuning (tune, final, tune+final), or ``run`` for a run of no study."""
    return stage_columns(read_stages(folder)).get("stage") or "run"


def stage_columns(entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """runs.csv's stage (tune, final or tune+final), study, trial (the trial run, or whose setting a final run uses)
    and tuned (the keys the study tunes)."""
    if not entries:
        return {}
    stages = {e["stage"] for e in entries}
    return {"stage": "+".join(s for s in ("tune", "final") if s in stages),
            "study": ";".join(dict.fromkeys(e["study"] for e in entries)),
            "trial": ";".join(dict.fromkeys(str(e["trial"]) for e in entries)),
            "tuned": ",".join(sorted({k for e in entries for k in e.get("params", {})}))}


PREVIOUS = ".previous"  # in a run folder: a complete result that force=true is replacing, until the new one is


def set_aside(folder: Path) -> None:
    """Move a complete run's files into ``<folder>/.previous`` before a forced rerun (nothing is deleted yet)."""
    keep = folder / PREVIOUS
    if keep.exists():  # an earlier set-aside that was never restored or dropped: the older complete result wins
        return
    keep.mkdir()
    for name in ("result.json", "checkpoint.pt", "logits.pt", "epochs.csv", "config.yaml"):
        if (folder / name).exists():
            os.replace(folder / name, keep / name)


def restore_previous(folder: Path) -> bool:
    """Put back a result set aside by ``set_aside`` (the forced rerun did not complete); False when there is none."""
    keep = folder / PREVIOUS
    if not keep.is_dir():
        return False
    for name in ("checkpoint.pt", "logits.pt", "epochs.csv", "config.yaml", "result.json"):  # the record last
        if (keep / name).exists():
            os.replace(keep / name, folder / name)
    shutil.rmtree(keep, ignore_errors=True)
    return True


def drop_previous(folder: Path) -> None:
    """The forced rerun is complete: the result it replaced goes."""
    shutil.rmtree(folder / PREVIOUS, ignore_errors=True)


def completed(folder: Path) -> dict[str, Any] | None:
    """The run's record if it finished (ok or diverged), else None."""
    record = read_result(folder)
    return record if record and record.get("status") in DONE else None


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
            return set(pd.read_csv(path, usecols=["run_id"], dtype=str)["run_id"])
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
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
