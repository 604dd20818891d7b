"""``make bench``: measured figures, each as a ratio of two things timed side by side in one process.

Section ``loop``: what the runner's training loop costs over the model's own compute. One epoch of
``simple_cnn`` on full Fashion-MNIST (Debian's dataset-fashion-mnist), three ways: (a) the runner's
loop (``train_one_epoch`` over ``datasets.Batches``), (b) a minimal hand-written loop over the same
preloaded tensors, same model and batch size, (c) the usual ``torch.utils.data.DataLoader`` over
torchvision's dataset with ``transforms.ToTensor()``.

Section ``pool``: forward + backward time and peak memory of every local pooling option (built from
its YAML, as a run builds it) on one (128, 64, 32, 32) float32 tensor, relative to ``max_pool2d``.
Peak memory is the process's peak resident size during the call over its size before it (Linux
``VmHWM``, reset through ``/proc/self/clear_refs``), with glibc told to return every large block to
the system at once, so it counts what the call allocates: output, saved tensors, input gradient.

Section ``norm``: forward + backward time of every normalization block (built from its YAML) on one
(128, 64, 32, 32) float32 tensor in training mode, relative to ``batch``. Weight and spectral norm change
the convolutions, not the block: their figure adds computing (and back-propagating through) one
reparametrized 64→64 3×3 conv weight to their inner block's time.

Section ``epoch``: one training epoch of the default run (simple_cnn on mnist5k) with each pooling and each norm
option, relative to the default run's: what a user of the option feels (norm=fixup against resnet20 with batch).

Section ``sweep``: wall time of the same 8-run grid on mnist5k (``-m pooling=max,avg seed=0,1,2,3
epochs=2``) run by ``python -m runner`` one run after another and with ``launcher=local``, and their ratio.

Section ``plan``: what a user waits for before anything trains: planning a 200-cell grid in-process, the
whole command re-running that grid when every run is complete, rejecting a 200-cell grid whose last cell
is bad, previewing it (``-m ... --cfg job``) before any of it ran, ``python -m runner --cfg job`` less the
interpreter's own start, and a tuning trial's plan after its method's first.

Section ``records``: one run's finish (its rows into the tables) with 10 and with 1,000 runs already
recorded, and a full rebuild from 1,000 run folders for reference.

Section ``threads``: one epoch of the default run with torch on every usable core (the default) and on one
thread, on an idle machine and with another process spinning on one core (a shared machine).

Section ``seeds``: not a timing. Sequential finals (``tune.finals=sequential``, looks at 6, 8, …, 20 seeds) against
the fixed design of equal power: over 2,000 simulated studies per effect (normal seed noise, effect d_z in seed
standard deviations), the share decided and the mean seeds used, and the fewest fixed seeds whose power (the same
rule, ``stats.rule_power``) is as high.

Timed things alternate for ``--rounds`` rounds and each keeps its fastest time, since a shared
machine's noise only ever adds time. The figures are merged into results/bench.json.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import datasets
from runner import build
from runner.compose import Composer
from runner.plan import Planner, make_plan
from runner.optim import warmup_cosine
from runner.train import train_one_epoch

FMNIST = "/usr/share/datasets/fashion-mnist"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak resident bytes that ``fn`` adds to the process (Linux only)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = _status_bytes("VmHWM")
    fn()
    return _status_bytes("VmHWM") - before


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


def norm_section(rounds: int) -> dict[str, float]:
    from hydra.utils import instantiate

    shape = (128, 64, 32, 32)
    x = torch.randn(shape).requires_grad_()
    grad = torch.randn(shape)
    blocks: dict[str, Callable[[], None]] = {}
    with Composer() as composer:
        norms = composer.options("norm")
    for name in norms:
        extra = [f"norm={name}"] + (["model=resnet20"] if name == "fixup" else [])
        variants = {name: make_plan(extra).cfg.norm}
        if "compile" in variants[name]:  # a compiled block: also its eager run, the same code uncompiled
            variants[f"{name}_eager"] = make_plan([*extra, "norm.compile=false"]).cfg.norm
        for key, node in variants.items():
            factory = instantiate(node)
            block = factory(shape[1]).train()
            conv = None
            if hasattr(factory, "reparametrize"):  # weight/spectral norm: a 64→64 3×3 conv's weight, each step
                conv = torch.nn.Conv2d(shape[1], shape[1], 3)
                factory.reparametrize(conv.train())

            def step(block=block, conv=conv) -> None:
                block(x.clone()).backward(grad)  # a copy: in-place activations may not write to a leaf
                if conv is not None:
                    conv.weight.sum().backward()
                x.grad = None

            blocks[key] = step
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


PLAN_GRID = ["pooling=max,avg,lp,softpool", "seed=range(50)"]  # 200 cells


def plan_section(rounds: int) -> dict[str, float]:
    """What a user waits for before anything trains: planning a 200-cell grid, re-running a completed one,
    rejecting one whose last cell is bad, and ``--cfg job``; the commands' times include the interpreter's start."""
    import subprocess
    import sys
    import tempfile

    from runner import rundir
    from runner.plan import make_plans

    make_plans(PLAN_GRID[:1], multirun=True)  # imports and first compositions, paid once by any command
    planning = []
    for _ in range(rounds):
        start = time.perf_counter()
        plans = make_plans(PLAN_GRID, multirun=True)
        planning.append(time.perf_counter() - start)
    trial = []  # a tuning trial after its method's first: its cell planned by the command's Planner
    with Composer() as composer:
        planner = Planner(None)
        planner.plan(composer, ["pooling=lp", "seed=100", "lr=0.05", "weight_decay=0.0005", "skip_test=true"])
        for i in range(rounds * 5):
            cell = ["pooling=lp", "seed=100", f"lr={0.01 + i / 1000}", f"weight_decay={1e-4 + i / 1e5}",
                    "skip_test=true"]
            start = time.perf_counter()
            planner.plan(composer, cell)
            trial.append(time.perf_counter() - start)

    def command(*args: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start

    bad_last = "seed=" + ",".join(map(str, range(199))) + ",-1"  # 200 cells, the last one out of range
    with tempfile.TemporaryDirectory() as root:
        for p in make_plans([*PLAN_GRID, f"results_dir={root}"], multirun=True):  # a finished grid, as records
            rundir.write_json(p.folder / "result.json", {"run_id": p.run_id, "status": "ok", "choices": p.choices,
                                                          "config": {}, "metrics": {}})
        times: dict[str, list[float]] = {"python": [], "imports": [], "rerun": [], "reject": [], "cfg": [],
                                         "preview": []}
        for _ in range(rounds):
            times["python"].append(command("-c", "pass"))
            times["imports"].append(command("-c", "import runner.plan"))  # torch, Hydra, pandas: any planning command
            times["rerun"].append(command("-m", "runner", "-m", *PLAN_GRID, f"results_dir={root}"))
            times["reject"].append(command("-m", "runner", "-m", bad_last, f"results_dir={root}"))
            times["cfg"].append(command("-m", "runner", "--cfg", "job"))
            with tempfile.TemporaryDirectory() as fresh:  # the grid's preview before any of it ran
                times["preview"].append(command("-m", "runner", "-m", *PLAN_GRID, f"results_dir={fresh}",
                                                "--cfg", "job"))
    best = {k: min(v) for k, v in times.items()}
    figures = {"plan_200_cells_s": min(planning), "plan_rerun_completed_200_s": best["rerun"],
               "plan_reject_200_last_bad_s": best["reject"], "plan_cfg_job_s": best["cfg"] - best["python"],
               "plan_python_start_s": best["python"], "plan_imports_s": best["imports"] - best["python"],
               "plan_cells": len(plans), "plan_trial_s": min(trial), "plan_preview_200_s": best["preview"]}
    print(f"\nplanning `-m {' '.join(PLAN_GRID)}` ({len(plans)} cells) in-process: {figures['plan_200_cells_s']:.2f} s "
          f"(target <= 2)\nthe whole command, each including the interpreter and its imports "
          f"({best['imports']:.2f} s, torch alone about 2 s):\n"
          f"  re-running it when every run is complete: {best['rerun']:.2f} s (target <= 4)\n"
          f"  rejecting a 200-cell grid whose last cell is bad: {best['reject']:.2f} s (target <= 2)\n"
          f"  previewing it (-m ... --cfg job) before any run: {best['preview']:.2f} s (target < 1)\n"
          f"--cfg job after the interpreter starts: {figures['plan_cfg_job_s']:.2f} s (target <= 2; "
          f"the interpreter alone {best['python']:.2f} s)\n"
          f"a tuning trial's plan after its method's first: {min(trial) * 1e3:.0f} ms (target <= 100)")
    return figures


def records_section(rounds: int) -> dict[str, float]:
    """The cost of one run's finish (its rows into runs.csv and epochs.csv) in a results root that already
    holds 10 and 1,000 runs of 12 epochs each, and a full rebuild from 1,000 folders (what every finish did)."""
    import tempfile

    import pandas as pd

    from runner import records, rundir

    plan = make_plan([])
    base = {"choices": plan.choices, "config": {**dict(plan.cfg.items()), "teacher": None}, "status": "ok",
            "metrics": {f"test_m{i}": 0.5 for i in range(30)}}
    base = json.loads(json.dumps(base, default=lambda o: None))
    epochs = pd.DataFrame({"epoch": range(1, 13), **{f"test_m{i}": [0.5] * 12 for i in range(30)}})

    def add(root: Path, i: int) -> dict:
        rid = f"{i:010x}"
        record = base | {"run_id": rid, "config": base["config"] | {"seed": i}}
        rundir.write_json(root / "runs" / rid / "result.json", record)
        records.write_csv(root / "runs" / rid / "epochs.csv", epochs)
        return record

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 1000):
            root = Path(tmp) / str(n)
            for i in range(n):
                add(root, i)
            records.rebuild_tables(root)
            times = []
            for r in range(max(rounds, 3) * 3):
                record = add(root, n + r)
                times.append(timed(lambda: records.update_tables(root, record)))
            figures[f"records_finish_at_{n}_ms"] = min(times) * 1e3
        figures["records_rebuild_at_1000_ms"] = min(timed(lambda: records.rebuild_tables(Path(tmp) / "1000"))
                                                    for _ in range(2)) * 1e3
    figures["records_finish_1000_over_10"] = figures["records_finish_at_1000_ms"] / figures["records_finish_at_10_ms"]
    print(
        f"\none finish (rows appended to runs.csv and epochs.csv): {figures['records_finish_at_10_ms']:.1f} ms with 10 "
        f"runs, {figures['records_finish_at_1000_ms']:.1f} ms with 1,000 (ratio "
        f"{figures['records_finish_1000_over_10']:.2f}, target <= 1.5); a rebuild from 1,000 folders "
        f"{figures['records_rebuild_at_1000_ms']:.0f} ms"
    )
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


def seeds_section(rounds: int) -> dict[str, float]:
    import numpy as np

    from runner import stats

    at, out = stats.looks(6, 20, 2), {}
    for effect in (0.75, 1.0, 1.5, 2.0):
        d = np.random.default_rng(0).normal(effect, 1.0, (2000, 20))
        runs = [stats.sequential(x, at) for x in d]
        power = float(np.mean([v == "better" for v, _ in runs]))
        used = float(np.mean([n for _, n in runs]))
        fixed = next((n for n in range(6, 41) if stats.rule_power(n, effect, 1.0) >= power), 41)
        print(f"seeds, effect {effect} sd: sequential power {power:.3f} with {used:.1f} seeds on average; "
              f"a fixed design needs {fixed} for that power ({used / fixed:.2f} of it)")
        out |= {f"seeds_dz{effect}_sequential_power": power, f"seeds_dz{effect}_sequential_mean": used,
                f"seeds_dz{effect}_fixed_equal_power": fixed}
    return out


SECTIONS = {"seeds": seeds_section, "loop": loop_section, "pool": pool_section, "norm": norm_section,
            "epoch": epoch_section,
            "sweep": sweep_section, "plan": plan_section, "records": records_section, "threads": threads_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sections", nargs="*", metavar="section",
                        help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of timed things (default 3)")
    parser.add_argument(
        "--out", default="results/bench.json", help="figures are merged into this file (default %(default)s)"
    )
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    out = Path(args.out)
    figures = json.loads(out.read_text()) if out.exists() else {}
    for name in args.sections or SECTIONS:
        figures |= SECTIONS[name](args.rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
