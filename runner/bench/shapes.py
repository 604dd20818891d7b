"""Section ``shapes``: each local pooling and each norm block at the shapes it has in a real model, against its
baseline: every such layer of simple_cnn on mnist5k and of resnet20 on CIFAR-10 (with ``model.downsample=pool``,
where its pooling layer downsamples), forward + backward at a training batch, summed over the model's layers."""
from __future__ import annotations

from typing import Callable

import torch
from hydra.utils import instantiate

from runner import build
from runner.compose import Composer
from runner.plan import make_plan
from runner.targets import typed_config

from runner.bench.common import timed
from runner.bench.layers import norm_cell, norm_step

MODELS = {"simple_cnn": ["model=simple_cnn", "dataset=mnist5k"],
          "resnet20": ["model=resnet20", "model.downsample=pool", "dataset=cifar10"]}


def model_shapes(cell: list[str]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The input shapes of the model's local pooling layers and of its norm blocks, one per layer, on a training
    batch of the dataset's images: the model as the cell builds it (max pooling and batch norm by default),
    its layers found by their classes."""
    from datasets import SPECS

    with Composer() as composer:
        cfg = typed_config(composer.compose(cell)[0], {})
    kinds = {"pool": type(instantiate(cfg.pooling)(8)), "norm": type(instantiate(cfg.norm)(8))}
    seen: dict[str, list[tuple[int, ...]]] = {"pool": [], "norm": []}
    net = build.model(build.eager(cfg)).train()
    for module in net.modules():
        for what, kind in kinds.items():
            if type(module) is kind:
                module.register_forward_pre_hook(lambda _, args, out=seen[what]: out.append(tuple(args[0].shape)))
    spec = SPECS[cfg.dataset.name]
    with torch.no_grad():
        net(torch.zeros(cfg.batch_size, spec.in_channels, spec.image_size, spec.image_size))
    return seen["pool"], seen["norm"]


def pooling_steps(shapes: list[tuple[int, ...]]) -> dict[str, Callable[[], None]]:
    """For each pooling option, one forward + backward of a layer at each shape (a layer per distinct shape)."""
    with Composer() as composer:
        options = composer.options("pooling")
    steps = {}
    for name in options:
        node = make_plan([f"pooling={name}"]).cfg.pooling
        layers = {s: instantiate(node)(s[1]).train() for s in set(shapes)}
        inputs = {s: torch.randn(s).requires_grad_() for s in set(shapes)}

        def step(layers=layers, inputs=inputs) -> None:
            for s in shapes:
                out = layers[s](inputs[s])
                out.backward(torch.ones_like(out))
                inputs[s].grad = None
                layers[s].zero_grad(set_to_none=True)

        steps[name] = step
    return steps


def norm_steps(shapes: list[tuple[int, ...]]) -> dict[str, Callable[[], None]]:
    """For each norm option, one forward + backward of a block at each shape (``layers.norm_step``)."""
    with Composer() as composer:
        options = composer.options("norm")
    return {name: norm_step(make_plan(norm_cell(name)).cfg.norm, shapes) for name in options}


def shapes_section(rounds: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for model, cell in MODELS.items():
        pools, norms = model_shapes(cell)
        for kind, shapes, steps, base in (("pool", pools, pooling_steps, "max"), ("norm", norms, norm_steps, "batch")):
            timers = steps(shapes)
            for step in timers.values():  # a compiled layer compiles for each new shape here
                step()
            times = {name: [] for name in timers}
            for _ in range(rounds):
                for name, step in timers.items():
                    times[name].append(min(timed(step) for _ in range(3)))
            best = min(times[base])
            print(f"\n{model}: its {len(shapes)} {'local pooling layers' if kind == 'pool' else 'norm blocks'} "
                  f"({', '.join(f'{n}× {s}' for s, n in _counts(shapes).items())}), forward + backward, "
                  f"relative to {base} ({best * 1e3:.1f} ms)")
            figures[f"shapes_{model}_{kind}_{base}_ms"] = best * 1e3
            for name in timers:
                ratio = figures[f"shapes_{model}_{kind}_{name}_over_{base}"] = min(times[name]) / best
                print(f"  {name:<16}{ratio:>7.2f}×")
    return figures


def _counts(shapes: list[tuple[int, ...]]) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    return counts
