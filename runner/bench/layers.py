"""Sections ``pool`` and ``norm``: each local pooling and each norm block, forward and backward, against its
baseline."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Callable

import torch

from runner.compose import Composer
from runner.plan import make_plan

from runner.bench.common import peak_bytes, timed


def pool_section(rounds: int) -> dict[str, float]:
    from hydra.utils import instantiate

    ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: large blocks go back at free
    shape = (128, 64, 32, 32)
    layers: dict[str, torch.nn.Module] = {}
    with Composer() as composer:
        poolings = composer.options("pooling")
    for name in poolings:
        cfg = make_plan([f"pooling={name}"]).cfg
        layers[name] = instantiate(cfg.pooling)(shape[1]).train()
        if "compile" in cfg.pooling:  # a fused kernel: also its eager run, the same code uncompiled
            eager = make_plan([f"pooling={name}", "pooling.compile=false"]).cfg.pooling
            layers[f"{name}_eager"] = instantiate(eager)(shape[1]).train()
    layers = {"max": layers.pop("max"), **layers}

    x = torch.randn(shape).requires_grad_()
    grad = torch.ones(shape[0], shape[1], shape[2] // 2, shape[3] // 2)

    def step(layer: torch.nn.Module) -> None:
        layer(x).backward(grad)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    figures: dict[str, float] = {}
    for name, layer in layers.items():  # the first call compiles where a layer compiles: time it apart
        figures[f"pool_{name}_first_call_s"] = timed(lambda: step(layer))
    times = {name: [] for name in layers}
    for _ in range(rounds):
        for name, layer in layers.items():
            times[name].append(min(timed(lambda: step(layer)) for _ in range(3)))
    memory = {name: min(peak_bytes(lambda: step(layer)) for _ in range(2)) for name, layer in layers.items()}
    base_t, base_m = min(times["max"]), memory["max"]
    print(f"\nlocal pooling, forward + backward on a {tuple(shape)} float32 tensor, relative to max_pool2d "
          f"({base_t * 1e3:.1f} ms, {base_m / 2**20:.0f} MiB)")
    print(f"  {'pooling':<16}{'time':>8}{'memory':>8}{'first call':>12}")
    for name in layers:
        t, m = min(times[name]) / base_t, memory[name] / base_m
        figures[f"pool_{name}_over_max"], figures[f"pool_{name}_mem_over_max"] = t, m
        print(f"  {name:<16}{t:>7.2f}×{m:>7.2f}×{figures[f'pool_{name}_first_call_s']:>11.2f}s")
    figures["pool_max_ms"], figures["pool_max_mib"] = base_t * 1e3, base_m / 2**20
    for name in [n.removesuffix("_eager") for n in layers if n.endswith("_eager")]:
        figures[f"pool_{name}_first_call_cold_s"] = cold_first_call(name, shape)
        print(f"  {name}: first call on an empty Inductor cache, in a fresh process: "
              f"{figures[f'pool_{name}_first_call_cold_s']:.1f} s")
    return figures


COLD = """
import sys, time, torch
from hydra.utils import instantiate
from runner.plan import make_plan
layer = instantiate(make_plan([f"pooling={sys.argv[1]}"]).cfg.pooling)(int(sys.argv[3]))
x = torch.randn(*map(int, sys.argv[2:6])).requires_grad_()
start = time.perf_counter()
layer(x).sum().backward()
print(time.perf_counter() - start)
"""


def cold_first_call(name: str, shape: tuple[int, ...]) -> float:
    """A compiled layer's first forward + backward in a new process whose Inductor cache is empty: what a user
    waits for on a machine that never compiled it (imports and building the layer not counted)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", COLD, name, *map(str, shape)], env=env, capture_output=True,
                             text=True, check=True)
    return float(out.stdout.split()[-1])


def norm_cell(name: str) -> list[str]:
    """The overrides that plan norm option ``name`` (fixup needs residual blocks)."""
    return [f"norm={name}"] + (["model=resnet20"] if name == "fixup" else [])


def norm_step(node: Any, shapes: list[tuple[int, ...]]) -> Callable[[], None]:
    """One forward + backward of a block of the typed norm ``node`` at each of ``shapes`` (a block per distinct
    shape); weight and spectral norm also reparametrize a c→c 3×3 conv's weight, as a run does each step."""
    from hydra.utils import instantiate

    factory = instantiate(node)
    blocks, convs, inputs = {}, {}, {}
    for s in set(shapes):
        blocks[s], inputs[s] = factory(s[1]).train(), torch.randn(s).requires_grad_()
        if hasattr(factory, "reparametrize"):
            convs[s] = torch.nn.Conv2d(s[1], s[1], 3)
            factory.reparametrize(convs[s].train())

    def step() -> None:
        for s in shapes:
            out = blocks[s](inputs[s].clone())  # a copy: in-place activations may not write to a leaf
            out.backward(torch.ones_like(out))
            if s in convs:
                convs[s].weight.sum().backward()
            inputs[s].grad = None

    return step


def norm_section(rounds: int) -> dict[str, float]:
    shape = (128, 64, 32, 32)
    blocks: dict[str, Callable[[], None]] = {}
    with Composer() as composer:
        norms = composer.options("norm")
    for name in norms:
        extra = norm_cell(name)
        variants = {name: make_plan(extra).cfg.norm}
        if "compile" in variants[name]:  # a compiled block: also its eager run, the same code uncompiled
            variants[f"{name}_eager"] = make_plan([*extra, "norm.compile=false"]).cfg.norm
        for key, node in variants.items():
            blocks[key] = norm_step(node, [shape])
    blocks = {"batch": blocks.pop("batch"), **blocks}
    times = {name: [] for name in blocks}
    first = {name: timed(step) for name, step in blocks.items()}  # warm-up call; a compiled block compiles in it
    for _ in range(rounds):
        for name, step in blocks.items():
            times[name].append(min(timed(step) for _ in range(3)))
    base = min(times["batch"])
    print(
        f"\nnormalization blocks, forward + backward on a {tuple(shape)} float32 tensor, relative to batch "
        f"({base * 1e3:.1f} ms); weight/spectral norm: the none block plus one 64→64 3×3 conv weight's "
        f"reparametrization"
    )
    figures = {"norm_batch_ms": base * 1e3}
    for name in blocks:
        figures[f"norm_{name}_over_batch"] = min(times[name]) / base
        figures[f"norm_{name}_first_call_s"] = first[name]
        print(f"  {name:<16}{figures[f'norm_{name}_over_batch']:>7.2f}×   first call {first[name]:.2f} s")
    return figures
