"""A run's folder: ``<root>/runs/<run_id>/`` with its record (result.json), its roles in tuning studies
(tune.json), the state a resume needs and a forced rerun's previous result, each file written atomically;
and the lock a process holds while it trains the run.

Reading and writing a folder needs no pandas: planning reads every cell's record to skip completed runs,
and a grid's command should not pay for the tables (runner/records.py) before anything runs.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from filelock import FileLock, Timeout

from runner.schema import RUN_ID

DONE = ("ok", "diverged")  # finished runs; failed, interrupted and killed ones run again


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
