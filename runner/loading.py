"""``load_run(run_dir)``: a finished run's model, ready to use, with its config and metrics.

The checkpoint is read without unpickling code, and the config inside it goes through the same plan as a user's
config (runner/plan.py: ``checkpoint_plan``) before anything is built from it, so loading a colleague's run runs
only this project's classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from runner.schema import ConfigError

__all__ = ["LoadedRun", "load_run"]


@dataclass(frozen=True)
class LoadedRun:
    model: nn.Module  # in eval mode, on the CPU
    config: DictConfig  # the run's typed config (model, pooling, norm, ... as it trained)
    metrics: dict[str, Any]  # the recorded final metrics ({} when the folder has no record)
    record: dict[str, Any]  # the whole result.json
    run_id: str


def load_run(run_dir: str | Path) -> LoadedRun:
    """The run in ``run_dir`` (``<results_dir>/runs/<id>``) or its ``checkpoint.pt``; a ConfigError naming the
    file when it is not a finished run of this runner.

    >>> run = load_run("results/runs/2c96d5f665")   # doctest: +SKIP
    >>> run.model(images).argmax(1)                  # doctest: +SKIP
    """
    from runner import build, rundir
    from runner.checkpoint import read_checkpoint
    from runner.plan import checkpoint_plan

    path = Path(run_dir)
    folder = path.parent if path.suffix == ".pt" else path
    checkpoint = path if path.suffix == ".pt" else path / "checkpoint.pt"
    ckpt = read_checkpoint(checkpoint, "run_dir")
    plan = checkpoint_plan(ckpt, f"run_dir={folder}")
    model = build.model(plan.cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ConfigError(f"run_dir={folder}: its weights do not fit the model its config builds "
                          f"({' '.join(str(e).split()[:20])})") from None
    record = rundir.read_result(folder) or {}
    return LoadedRun(model.eval(), plan.cfg, dict(record.get("metrics") or {}), record,
                     str(ckpt.get("run_id") or folder.name))
