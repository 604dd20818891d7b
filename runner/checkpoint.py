"""Build a model from a run config, and save / load a finished run's checkpoint.

A checkpoint holds the weights and the resolved config that rebuilds the model, so a later run can
use it (as a distillation teacher) without knowing how it was made. It is read with
``torch.load(weights_only=True)``: plain containers and tensors, no pickled code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import models
from datasets import SPECS


def build_model(cfg: DictConfig) -> nn.Module:
    """The model of ``cfg`` (keys model, pooling, global_pool, norm, dataset.name), on the CPU."""
    spec = SPECS[cfg.dataset.name]
    return models.build_model(
        instantiate(cfg.model),
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        pool=instantiate(cfg.pooling),
        global_pool=instantiate(cfg.global_pool),
        norm=instantiate(cfg.norm),
    )


def save_checkpoint(path: Path, model: nn.Module, cfg: DictConfig, choices: Mapping[str, str], run_id: str) -> None:
    from runner.records import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"model": state, "config": OmegaConf.to_container(cfg, resolve=True), "choices": dict(choices), "run_id": run_id}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode with the saved weights, the checkpoint dict)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(OmegaConf.create(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
