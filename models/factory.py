"""Assembling a model from its factories, and reading what a factory declares about itself."""
from __future__ import annotations

import functools
from typing import Any, Callable

from torch import nn


def declared(factory: Callable[..., nn.Module], name: str, default: Any = None) -> Any:
    """A class-level declaration of a layer factory (a class or a ``functools.partial`` of one).

    Layer families declare what a model must do for them (``conv_bias``, ``act_layer``,
    ``prepare_model``), so no model file has to name a method.
    """
    target = factory.func if isinstance(factory, functools.partial) else factory
    return getattr(target, name, default)


def build_model(
    make_model: Callable[..., nn.Module],
    *,
    in_channels: int,
    num_classes: int,
    pool: Callable[[int], nn.Module],
    global_pool: Callable[[int], nn.Module],
    norm: Callable[..., nn.Module],
) -> nn.Module:
    """Build a model, then let the norm factory change it where its method must (init, reparam)."""
    model = make_model(
        in_channels=in_channels, num_classes=num_classes, pool=pool, global_pool=global_pool, norm=norm
    )
    prepare = declared(norm, "prepare_model")
    if prepare is not None:
        prepare(model)
    return model
