"""The tuner's journal: Optuna's append-only log of every study in a results folder, its lock and its repair.

Optuna's own journal locks are files whose age decides who may break them (JournalFileSymlinkLock,
JournalFileOpenLock): a holder killed by SIGKILL blocks every later tuner for the 30 s grace period (forever when
the symlink's target is relative), and a live holder that is silent for 30 s (a stopped process, an NFS stall)
has its lock taken, so that two processes append at once and garble the journal. The lock here is an flock
(filelock, on ``journal.log.flock``): the kernel drops it the moment its holder dies, and never takes it from a
live one however slow. Linux's NFS client implements flock with NFS locks, so it holds across machines too.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from filelock import FileLock
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import BaseJournalFileLock  # the lock interface JournalFileBackend takes

from runner.progress import say
from runner.schema import ConfigError


class JournalLock(BaseJournalFileLock):
    def __init__(self, path: Path) -> None:
        self._lock = FileLock(f"{path}.flock")  # one per thread (filelock's default): threads exclude each other too

    def acquire(self) -> bool:
        self._lock.acquire()
        return True

    def release(self) -> None:
        self._lock.release()


def storage(path: Path) -> JournalStorage:
    """The studies of the journal at ``path``, appended to under its flock."""
    return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalLock(path)))


def journal(root: Path) -> Path:
    """The studies' journal, as an absolute path (a trial's run reads it from its own working folder)."""
    return (root / "tune" / "journal.log").absolute()


def _entry(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict) and "op_code" in json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return False


def repair_journal(path: Path) -> None:
    """Before a study is read: a journal whose last line was cut (a kill or a full disk in the middle of an append)
    is cut back to its last whole entry, the cut bytes kept beside it in ``journal.log.cut-<time>``, with a line
    that says so; Optuna would otherwise fail on it at every later start and glue the next entry onto it. A foreign
    line before the end (a hand edit) is a ConfigError naming it: which entries it hid cannot be known. Under the
    journal's own lock, so that no tuner appends meanwhile."""
    if not path.is_file():
        return
    lock = JournalLock(path)
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")
        whole, tail = lines[:-1], lines[-1]
        bad = [i for i, line in enumerate(whole) if not _entry(line)]
        if bad and bad[0] < len(whole) - 1:
            raise ConfigError(f"{path}: line {bad[0] + 1} is not an entry of Optuna's journal "
                              f"({whole[bad[0]][:60]!r}); the file was edited. Restore it from a copy, or give "
                              "another results_dir for new studies.")
        keep = len(whole) - len(bad)
        if keep == len(whole) and not tail:
            return
        good = sum(len(line) + 1 for line in whole[:keep])
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (path.parent / f"{path.name}.cut-{stamp}").write_bytes(data[good:])
        os.truncate(path, good)
        say(f"{path}: its last entry was cut off (a kill or a full disk during an append); the {len(data) - good} "
            f"cut bytes are kept in {path.name}.cut-{stamp} and the studies go on from the entry before")
    finally:
        lock.release()
