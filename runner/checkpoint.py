"""A finished run's checkpoint: the weights and the resolved config that rebuilds the model.

A later run can use it (as a distillation teacher) without knowing how it was made. It is read with
``torch.load(weights_only=True)``: plain containers and tensors, no pickled code; the config inside is
planned like a user's config before anything is built from it (runner/plan.py: ``checkpoint_plan``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from runner.rundir import atomic_path
from runner.schema import ConfigError


def save_checkpoint(path: Path, model: nn.Module, cfg: DictConfig, choices: Mapping[str, Any], run_id: str) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "model": state,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "choices": dict(choices),
        "run_id": run_id,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path, key: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint written by this runner, read without unpickling code; a ConfigError naming ``key`` if not one."""
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no checkpoint at {path}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the weights stay on disk
    except Exception as e:  # truncated, not a torch file, or a pickle that is not plain data
        raise ConfigError(
            f"{key}={path}: not a checkpoint this runner can read ({' '.join(str(e).split()[:24])})."
        ) from None
    if (
        not isinstance(ckpt, dict)
        or not isinstance(ckpt.get("config"), dict)
        or not isinstance(ckpt.get("model"), dict)
    ):
        raise ConfigError(f"{key}={path}: not a checkpoint written by this runner (it needs the 'model' weights and "
                          "the 'config' that rebuilds them).")
    return ckpt
