"""Features a method reads from inside a model, by hooks, so no model changes its ``forward``.

- The penultimate features, the input of the linear classifier ``model.fc``: feature-based OOD scores
  (Mahalanobis, ViM) read them with a forward pre-hook on ``fc``.
- The penultimate stage's feature map: self-distillation (USKD) trains a weak classifier on it. Every
  model lists its stages (``model.stages()``: the module ending each stage and its output channels).

``tests/test_models.py`` checks both for every model option.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def classifier(model: nn.Module) -> nn.Linear:
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"{type(model).__name__} has no linear classifier `fc`: feature-based OOD scores need one")
    return fc


def penultimate_stage(model: nn.Module) -> tuple[nn.Module, int]:
    """(the module whose output is the last stage but one's feature map, its channels)."""
    stages = model.stages() if hasattr(model, "stages") else []
    if len(stages) < 2:
        raise ValueError(
            f"{type(model).__name__} has {len(stages)} stage(s): a feature of the stage before the last needs at "
            f"least 2"
        )
    return stages[-2]


@contextlib.contextmanager
def tapped(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """``with tapped(module) as out: model(x)``: ``out`` gets ``module``'s output of each forward, in the graph."""
    out: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, args, result: out.append(result))
    try:
        yield out
    finally:
        handle.remove()


@contextlib.contextmanager
def captured(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """``with captured(model) as feats: model(x)``: ``feats`` gets the classifier's input of each forward."""
    feats: list[torch.Tensor] = []
    handle = classifier(model).register_forward_pre_hook(lambda module, args: feats.append(args[0].detach().float()))
    try:
        yield feats
    finally:
        handle.remove()
