"""Build what a planned run trains: the model, the loss and the optimizer, from the plan's typed config.

The plan has already checked every ``_target_`` (runner/plan.py), so building only instantiates.
"""
from __future__ import annotations

import copy
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, open_dict
import torch
from torch import nn

import models
from models.features import penultimate_stage
from datasets import SPECS
from runner.losses.clip import LogitClip


def target(node: DictConfig) -> Any:
    """The class or function an option's node names (its ``_target_``)."""
    return get_object(str(node._target_))


def model(cfg: DictConfig, norm: Any = None) -> nn.Module:
    """The model of ``cfg`` (keys model, pooling, global_pool, norm, dataset.name), on the CPU."""
    spec = SPECS[cfg.dataset.name]
    return models.build_model(instantiate(cfg.model), in_channels=spec.in_channels, num_classes=spec.num_classes,
                              pool=instantiate(cfg.pooling), global_pool=instantiate(cfg.global_pool),
                              norm=norm if norm is not None else instantiate(cfg.norm))


def loss(cfg: DictConfig, net: nn.Module | None = None) -> nn.Module:
    """The loss; with ``loss.logit_clip=τ`` (any loss) wrapped in LogitClip. A loss that reads the penultimate
    stage (``needs_mid_features``) is sized by the model's (``net``, else ``cfg``'s) and the dataset's classes."""
    node = cfg.loss.copy()
    with open_dict(node):
        tau = node.pop("logit_clip", None)
    sizes = {}
    if getattr(target(node), "needs_mid_features", False):
        _, channels = penultimate_stage(net if net is not None else model(cfg))
        sizes = {"channels": channels, "num_classes": SPECS[cfg.dataset.name].num_classes}
        for key in sorted(set(sizes) & set(node)):  # +loss.channels=...: would change the run id and nothing else
            raise ValueError(f"loss.{key} is set by the runner (from the model and the dataset), not by a config")
    made = instantiate(node, **sizes)
    return made if tau is None else LogitClip(made, tau)


def optimizer(
    cfg: DictConfig, net: nn.Module, norm: Any = None, extra: nn.Module | None = None
) -> torch.optim.Optimizer:
    """The optimizer over ``net``'s parameters; a norm may train some of them at another lr (``param_groups``).
    ``extra``'s parameters (a loss's own, such as USKD's weak classifier) train beside them at the run's lr."""
    groups = models.declared(norm if norm is not None else instantiate(cfg.norm), "param_groups")
    params = list(groups(net, cfg.lr)) if groups else [{"params": list(net.parameters())}]
    own = [] if extra is None else list(extra.parameters())
    if own:
        params.append({"params": own})
    return instantiate(cfg.optim)(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_optimizer(cfg: DictConfig) -> None:
    """Raise the ValueError the optimizer raises for its settings (nesterov without momentum, a beta of 1...).

    torch's optimizers check their settings before their parameters, and given none stop at that ("optimizer got
    an empty parameter list"): the check without adding a parameter group, whose first call imports dynamo
    (1 s of a grid preview's start) and which the settings do not need."""
    try:
        instantiate(cfg.optim)([], lr=cfg.lr, weight_decay=cfg.weight_decay)
    except ValueError as e:
        if "empty parameter list" not in str(e):
            raise


# Compiling a fused pooling layer or norm block costs seconds per layer shape (about 10 s on an empty Inductor cache
# on 2 cores, 1-2 s once the disk cache holds the shape, as from a grid's second run on) and then saves a little
# every step. make bench (section epoch: the default run, 56 steps an epoch) found it paying after 1-10 epochs with
# the cache holding the shapes and 3-25 on an empty one, so a run of fewer steps than this (short tests, tuning
# trials, quick looks) runs the layer eagerly: the same values, as ``pooling.compile=false`` (``norm.compile``)
# gives, which is not part of a run's id. A longer run compiles.
COMPILE_MIN_STEPS = 500


def steps(cfg: DictConfig, n_train: int) -> int:
    """The optimizer steps a run takes: ``epochs`` × its full training batches."""
    return cfg.epochs * max(n_train // cfg.batch_size, 1)


def compiling(cfg: DictConfig) -> list[str]:
    """The axes whose layer would compile (``pooling.compile`` or ``norm.compile`` true)."""
    return [axis for axis in ("pooling", "norm") if cfg[axis].get("compile")]


def eager(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose layers run eagerly: the same values; the plan's own config stays as planned."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for axis in compiling(cfg):
            out[axis].compile = False
    return out


def for_run(cfg: DictConfig, n_train: int) -> tuple[DictConfig, str | None]:
    """``cfg`` as a run of ``n_train`` training images builds it, and why it differs: a pooling layer or norm block
    that would compile runs eagerly when the run is too short to pay its compilation back (``COMPILE_MIN_STEPS``)."""
    axes = compiling(cfg)
    if not axes or steps(cfg, n_train) >= COMPILE_MIN_STEPS:
        return cfg, None
    what = " and ".join({"pooling": "the pooling layer", "norm": "the norm blocks"}[axis] for axis in axes)
    return eager(cfg), (f"{steps(cfg, n_train)} steps < {COMPILE_MIN_STEPS}: too few to pay back compiling {what}, "
                        "which run eagerly (same values)")


def parts(cfg: DictConfig) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """(model, loss, optimizer) of a run, with one norm factory for the model and its parameter groups."""
    norm = instantiate(cfg.norm)
    net = model(cfg, norm)
    made = loss(cfg, net)
    return net, made, optimizer(cfg, net, norm, extra=made)
