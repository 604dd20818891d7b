"""Sections ``loop``, ``epoch``, ``sweep`` and ``threads``: the training loop and what a user of a run waits for."""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F

import datasets
from runner import build
from runner.compose import Composer
from runner.plan import make_plan
from runner.optim import warmup_cosine
from runner.train import train_one_epoch

from runner.bench.common import FMNIST, timed


def loop_section(rounds: int) -> dict[str, float]:
    cfg = make_plan(["dataset=fashion_mnist", f"dataset.source_dir={FMNIST}"]).cfg
    spec = datasets.SPECS["fashion_mnist"]
    splits = datasets.load(cfg.dataset, cfg.data_dir)
    x, y = splits.train
    bs = cfg.batch_size

    def fresh():
        torch.manual_seed(0)
        model = build.model(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
        return model, opt

    def runner_epoch() -> None:
        model, opt = fresh()
        batches = datasets.Batches(x, y, bs, spec.mean, spec.std, shuffle=True, drop_last=True,
                                   generator=torch.Generator().manual_seed(0))
        sched = warmup_cosine(opt, len(batches), 0)
        train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt, sched, contextlib.nullcontext)

    def minimal_epoch() -> None:
        model, opt = fresh()
        model.train()
        scale = 1.0 / (255.0 * torch.tensor(spec.std).view(1, -1, 1, 1))
        shift = -torch.tensor(spec.mean).view(1, -1, 1, 1) / torch.tensor(spec.std).view(1, -1, 1, 1)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        for i in range(len(y) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(x[idx].float() * scale + shift), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def dataloader_epoch() -> None:
        from torchvision import transforms
        from torchvision.datasets import FashionMNIST

        model, opt = fresh()
        model.train()
        tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        data = FashionMNIST(cfg.data_dir, train=True, transform=tf)  # the raw files staged by datasets.load
        loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=True, drop_last=True)
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    threads = torch.get_num_threads()
    print(f"one epoch of simple_cnn on Fashion-MNIST ({len(y)} training images, batch {bs}), "
          f"torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}")
    runner_s, minimal_s = [], []
    for r in range(rounds):
        runner_s.append(timed(runner_epoch))
        minimal_s.append(timed(minimal_epoch))
        print(f"  round {r + 1}: runner {runner_s[-1]:.2f}s  minimal {minimal_s[-1]:.2f}s")
    dataloader_s = timed(dataloader_epoch)
    figures = {
        "runner_s": min(runner_s),
        "minimal_s": min(minimal_s),
        "dataloader_s": dataloader_s,
        "runner_over_minimal": min(runner_s) / min(minimal_s),
        "dataloader_over_runner": dataloader_s / min(runner_s),
        "threads": threads,
        "batch_size": bs,
        "train_images": len(y),
    }
    print(f"(a) runner loop      {figures['runner_s']:.2f} s/epoch")
    print(f"(b) minimal loop     {figures['minimal_s']:.2f} s/epoch")
    print(f"(c) DataLoader       {figures['dataloader_s']:.2f} s/epoch")
    print(
        f"a/b = {figures['runner_over_minimal']:.3f} (target <= 1.05)   c/a = {figures['dataloader_over_runner']:.2f} "
        f"(target > 1)"
    )
    return figures


def epoch_section(rounds: int) -> dict[str, float]:
    """One training epoch of the default run (simple_cnn on mnist5k) with each pooling and each norm option in
    turn, relative to the default (max, batch): what a user of the option feels, beside the layer ratios."""
    splits = None
    epochs: dict[str, Callable[[], None]] = {}
    with Composer() as composer:
        options = [(axis, o) for axis in ("pooling", "norm") for o in composer.options(axis)]
    for axis, name in [("default", ""), *options]:
        extra = [f"{axis}={name}"] if name else []
        if name == "fixup":  # residual models only: compared with resnet20 under batch norm
            extra.append("model=resnet20")
        cfg = make_plan(extra).cfg
        splits = splits or datasets.load(cfg.dataset, cfg.data_dir)
        spec = datasets.SPECS[cfg.dataset.name]

        def epoch(cfg=cfg, spec=spec) -> None:
            torch.manual_seed(0)
            model, loss_fn, opt = build.parts(cfg)
            batches = datasets.Batches(*splits.train, cfg.batch_size, spec.mean, spec.std, shuffle=True,
                                       drop_last=True, generator=torch.Generator().manual_seed(0))
            train_one_epoch(model, batches, loss_fn, opt, warmup_cosine(opt, len(batches), 0), contextlib.nullcontext)

        key = f"{axis}_{name}" if name else "default"
        epochs[key] = epoch
        if axis in ("pooling", "norm") and "compile" in cfg[axis]:  # its eager run too, to see when compiling pays
            epochs[f"{key}_eager"] = functools.partial(epoch, make_plan([*extra, f"{axis}.compile=false"]).cfg, spec)
        if name == "fixup":
            epochs["resnet20_batch"] = lambda cfg=make_plan(["model=resnet20"]).cfg: epoch(cfg)
    first = {key: timed(step) for key, step in epochs.items()}  # warm-up: imports, a compiled layer's compilation
    times: dict[str, list[float]] = {k: [] for k in epochs}
    for _ in range(rounds):
        for key, step in epochs.items():
            times[key].append(timed(step))
    base = min(times["default"])
    print(f"\none training epoch of the default run (simple_cnn, mnist5k, {len(splits.train[1])} images) per option, "
          f"relative to the default (max pooling, batch norm: {base:.2f} s)")
    figures = {"epoch_default_s": base}
    for key in epochs:
        if key in ("default", "resnet20_batch"):
            continue
        ref = min(times["resnet20_batch"]) if key == "norm_fixup" else base
        figures[f"epoch_{key}_over_default"] = min(times[key]) / ref
        print(f"  {key:<20}{figures[f'epoch_{key}_over_default']:>7.2f}×" + ("  (against resnet20, batch)"
                                                                          if key == "norm_fixup" else ""))
    for key in [k.removesuffix("_eager") for k in epochs if k.endswith("_eager")]:
        # compiling costs its first epoch's extra time once and saves (eager − compiled) every epoch after
        # (a cache already warm, in this process or on disk, can make the first epoch no slower: it pays at once)
        extra = max(first[key] - min(times[key]), 0.0)
        saved = min(times[f"{key}_eager"]) - min(times[key])
        figures[f"epoch_{key}_compile_s"] = extra
        figures[f"epoch_{key}_compile_pays_after_epochs"] = extra / saved if saved > 0 else float("inf")
        print(f"  {key}: compiling adds {extra:.1f} s to the first epoch (this process's Inductor cache as it is) and "
              f"saves {saved:.2f} s an epoch: it pays after {figures[f'epoch_{key}_compile_pays_after_epochs']:.1f} "
              "epochs")
    return figures


SWEEP = ["-m", "pooling=max,avg", "seed=0,1,2,3", "epochs=2"]  # 8 runs on mnist5k


def sweep_section(rounds: int) -> dict[str, float]:
    """The same 8-run grid from the command line, one run after another and with ``launcher=local``."""
    import subprocess
    import sys
    import tempfile

    def grid(*extra: str) -> float:
        with tempfile.TemporaryDirectory() as root:  # a fresh results root: nothing is skipped
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "runner", *SWEEP, *extra, f"results_dir={root}"], check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - start

    times: dict[str, list[float]] = {"sequential": [], "parallel": []}
    for _ in range(max(1, rounds // 3)):  # whole grids take minutes: one round unless asked for more
        times["sequential"].append(grid())
        times["parallel"].append(grid("launcher=local"))
    seq, par = min(times["sequential"]), min(times["parallel"])
    print(f"\nthe 8-run grid `python -m runner {' '.join(SWEEP)}` on {os.cpu_count()} cores: one after another "
          f"{seq:.1f} s, launcher=local {par:.1f} s ({par / seq:.2f}×)")
    return {"sweep_sequential_s": seq, "sweep_parallel_s": par, "sweep_parallel_over_sequential": par / seq}


def threads_section(rounds: int) -> dict[str, float]:
    """One epoch of the default run (simple_cnn on mnist5k, the runner's loop) with torch using every usable core
    (``threads=0``, the default) and one thread, on an idle machine and with one other process spinning on a core."""
    import subprocess
    import sys

    from runner.machine import usable_cores

    cfg = make_plan([]).cfg
    spec = datasets.SPECS[cfg.dataset.name]
    x, y = datasets.load(cfg.dataset, cfg.data_dir).train
    cores = usable_cores()

    def epoch(threads: int) -> float:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build.model(cfg)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
        batches = datasets.Batches(x, y, cfg.batch_size, spec.mean, spec.std, shuffle=True, drop_last=True,
                                   generator=torch.Generator().manual_seed(0))
        return timed(lambda: train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), opt,
                                             warmup_cosine(opt, len(batches), 0), contextlib.nullcontext))

    def measure() -> dict[int, float]:
        times: dict[int, list[float]] = {cores: [], 1: []}
        for _ in range(rounds):
            for t in times:
                times[t].append(epoch(t))
        return {t: min(v) for t, v in times.items()}

    idle = measure()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another user's job on one core
    try:
        busy = measure()
    finally:
        hog.kill()
        torch.set_num_threads(cores)
    print(f"one epoch of the default run ({len(y)} images), {cores} usable cores: idle: {cores} threads "
          f"{idle[cores]:.2f} s, 1 thread {idle[1]:.2f} s; one core busy: {cores} threads {busy[cores]:.2f} s, "
          f"1 thread {busy[1]:.2f} s")
    return {
        "threads_cores": cores,
        "threads_idle_default_s": idle[cores],
        "threads_idle_one_s": idle[1],
        "threads_busy_default_s": busy[cores],
        "threads_busy_one_s": busy[1],
        "threads_busy_default_over_one": busy[cores] / busy[1],
        "threads_idle_default_over_one": idle[cores] / idle[1],
    }
