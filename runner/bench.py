"""``make bench``: what the runner's training loop costs over the model's own compute.

One epoch of ``simple_cnn`` on full Fashion-MNIST (Debian's dataset-fashion-mnist), three ways, in
one process: (a) the runner's loop (``train_one_epoch`` over ``datasets.Batches``), (b) a minimal
hand-written loop over the same preloaded tensors, same model and batch size, (c) the usual
``torch.utils.data.DataLoader`` over torchvision's dataset with ``transforms.ToTensor()``.
(a) and (b) alternate for ``--rounds`` rounds and each keeps its fastest epoch, since a shared
machine's noise only ever adds time. Writes the figures to results/bench.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import datasets
from runner.checkpoint import build_model
from runner.config import compose
from runner.optim import warmup_cosine
from runner.train import train_one_epoch

FMNIST = "/usr/share/datasets/fashion-mnist"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of (a) and (b) (default 2)")
    parser.add_argument("--out", default="results/bench.json", help="where to write the figures (default %(default)s)")
    args = parser.parse_args()

    cfg, _ = compose(["dataset=fashion_mnist", f"dataset.source_dir={FMNIST}"])
    spec = datasets.SPECS["fashion_mnist"]
    splits = datasets.load(cfg.dataset, cfg.data_dir)
    x, y = splits.train
    bs = cfg.batch_size

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg)
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
    for r in range(args.rounds):
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
    print(f"a/b = {figures['runner_over_minimal']:.3f} (target <= 1.05)   c/a = {figures['dataloader_over_runner']:.2f} (target > 1)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
