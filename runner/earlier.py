"""Runs recorded under an earlier version's run ids: a command that cannot find them says so (CHANGELOG.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf.errors import OmegaConfBaseException

from runner import rundir
from runner.identity import id_of, identity
from runner.schema import ConfigError
from runner.targets import typed_config


def id_today(record: Mapping[str, Any]) -> str | None:
    """The id this version gives the run a record describes; None where its config no longer types (a key an
    earlier version had)."""
    try:
        cfg = typed_config(dict(record["config"]), {})
        return id_of(identity(cfg, dict(record.get("choices") or {}), str(record["device_type"]),
                              record.get("autocast"), record.get("teacher_run_id")))
    except (ConfigError, KeyError, TypeError, ValueError, OmegaConfBaseException):
        return None


def older_runs(root: Path, planned: set[str], look: int = 3) -> list[str]:
    """Of the newest ``look`` finished runs under ``root`` that this command did not plan, those recorded under an
    id that this version would not give them (an earlier version's id scheme, CHANGELOG.md): this command cannot
    find them, so it trains its cells again beside them."""
    try:
        folders = sorted((f for f in (root / "runs").iterdir() if f.name not in planned),
                         key=lambda f: f.stat().st_mtime, reverse=True)
    except OSError:
        return []
    old = []
    for folder in folders[:look]:
        record = rundir.read_result(folder)
        if record and record.get("status") in rundir.DONE and id_today(record) != record.get("run_id"):
            old.append(folder.name)
    return old
