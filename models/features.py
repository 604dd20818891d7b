"""The penultimate features of every model: the input of its linear classifier ``model.fc``.

Feature-based OOD scores (Mahalanobis, ViM) need them; a forward pre-hook on ``fc`` reads them during the
ordinary forward pass, so no model changes its ``forward``. Each model keeps its classifier as ``fc``
(an ``nn.Linear``), which ``tests/test_models.py`` checks for every model option.
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


@contextlib.contextmanager
def captured(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """``with captured(model) as feats: model(x)``: ``feats`` gets the classifier's input of each forward."""
    feats: list[torch.Tensor] = []
    handle = classifier(model).register_forward_pre_hook(lambda module, args: feats.append(args[0].detach().float()))
    try:
        yield feats
    finally:
        handle.remove()
