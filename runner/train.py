"""Training and evaluation as plain functions over tensors: batches in, losses, logits and timings out.

No files, no plan, no records: runner/run.py owns a run's folder, its lock, resume state and teacher, and hands
this module the model, the data and the callbacks that record each epoch.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

import datasets
import datasets.registry
from models.features import captured, classifier, penultimate_stage, tapped
from runner.ood_features import feature_scores
from runner.metrics import classification_metrics
from runner.optim import warmup_cosine
from runner.progress import epoch_bar


class Diverged(Exception):
    """The training loss became non-finite: ``Diverged(message, train_seconds, step)``."""


class NonFinite(Exception):
    """A batch's loss was non-finite: ``NonFinite(batch, loss)`` (the batch counted from 1 in its epoch)."""


SYNC_EVERY = {"cpu": 1}  # batches between two reads of the loss on the host; other devices: 25 (below)


# ---------------------------------------------------------------- training and evaluation

def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, autocast: Callable[[], Any],
                    advance: Callable[[int, float | None], None] = lambda images, loss: None,
                    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    sync_every: int = 1) -> tuple[float, float]:
    """One pass over ``batches``; returns (mean training loss, training accuracy).

    The loss is read on the host every ``sync_every`` batches (1 on the CPU, where reading costs nothing), for the
    bar's running loss and to stop at a non-finite loss: ``NonFinite(batch, loss)`` names the first such batch,
    counted on the device between reads, and on the CPU no optimizer step is taken with it.

    With a ``teacher`` (an eval-mode model taking this batch), the loss gets ``teacher_logits=``; a loss that
    declares ``needs_mid_features`` gets the penultimate stage's output of this forward as ``mid_features=``.
    """
    model.train()
    loss_fn.train()
    loss_sum = correct = None
    count = 0
    finite_so_far = finite_batches = None  # on the device: all finite yet; the batches before the first that was not
    mid_stage = getattr(loss_fn, "needs_mid_features", False)
    with tapped(penultimate_stage(model)[0]) if mid_stage else contextlib.nullcontext() as mid:
        for i, (x, y) in enumerate(batches, 1):
            with autocast():
                logits = model(x)
                extra = {"mid_features": mid.pop()} if mid_stage else {}
                if teacher is not None:
                    with torch.no_grad():
                        extra["teacher_logits"] = teacher(x)  # the same augmented batch as the student
                loss = loss_fn(logits, y, **extra)
            with torch.no_grad():
                finite = torch.isfinite(loss.detach())
                finite_so_far = finite if finite_so_far is None else finite_so_far & finite
                finite_batches = (finite_so_far.long() if finite_batches is None
                                  else finite_batches + finite_so_far.long())
            read = i % sync_every == 0
            if read and not finite_so_far.item():
                raise NonFinite(int(finite_batches.item()) + 1, loss.item() if sync_every == 1 else None)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                batch_loss = loss.detach().float() * len(y)
                batch_correct = (logits.argmax(dim=1) == y).sum()
                loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
                correct = batch_correct if correct is None else correct + batch_correct
            count += len(y)
            advance(len(y), (loss_sum / count).item() if read else None)
    if finite_so_far is not None and not finite_so_far.item():
        raise NonFinite(int(finite_batches.item()) + 1, None)
    return (loss_sum / count).item(), (correct / count).item()


@torch.no_grad()  # not inference_mode: compiled layers (SoftPool) would compile again for inference tensors
def predict(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 (N, K), targets (N,)), both on the CPU."""
    model.eval()
    logits, targets = [], []
    for x, y in batches:
        with autocast():
            logits.append(model(x).float())
        targets.append(y)
    return torch.cat(logits).cpu(), torch.cat(targets).cpu()


class Teacher(nn.Module):
    """A finished run's model in eval mode, fed the student's batch re-normalized with its own constants."""

    def __init__(self, model: nn.Module, student: datasets.Spec, own: datasets.Spec) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        s_mean, s_std = torch.tensor(student.mean).view(1, -1, 1, 1), torch.tensor(student.std).view(1, -1, 1, 1)
        t_mean, t_std = torch.tensor(own.mean).view(1, -1, 1, 1), torch.tensor(own.std).view(1, -1, 1, 1)
        # x_student = (u − μ_s)/σ_s  ->  x_teacher = (u − μ_t)/σ_t = x_student·σ_s/σ_t + (μ_s − μ_t)/σ_t
        self.register_buffer("scale", s_std / t_std)
        self.register_buffer("shift", (s_mean - t_mean) / t_std)

    def train(self, mode: bool = True) -> "Teacher":
        return super().train(False)  # always in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def fit(
    cfg: DictConfig,
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: datasets.Splits,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None],
    teacher: Teacher | None = None,
    resume: Mapping[str, Any] | None = None,
    on_state: Callable[[dict[str, Any]], None] = lambda state: None,
    autocast_dtype: str | None = None,
    ood: datasets.registry.Tensors | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs``; after each epoch evaluate, call ``on_epoch(row)`` and, every
    ``checkpoint_every`` epochs, ``on_state(state)`` with everything the next epoch needs (weights, optimizer,
    schedule and every random generator), from which ``resume`` continues bit for bit on the CPU.

    ``cfg`` is the run's typed config, ``autocast_dtype`` the planned autocast ("bfloat16" or None) and ``ood`` the
    out-of-distribution test images and labels, scored after the last epoch. Returns the final logits and the
    training time. Raises ``Diverged(message, train_seconds, step)`` at the first non-finite training loss.
    """
    spec = datasets.SPECS[cfg.dataset.name]
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(cfg.seed)  # batch order and augmentation
    channels_last = cuda and cfg.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = loss_fn.to(device)
    autocast = (functools.partial(torch.autocast, device.type, dtype=getattr(torch, autocast_dtype)) if autocast_dtype
                else contextlib.nullcontext)

    def batches(split: tuple[torch.Tensor, torch.Tensor], train: bool) -> datasets.Batches:
        x, y = split
        return datasets.Batches(
            x, y, cfg.batch_size if train else 4 * cfg.batch_size, spec.mean, spec.std, device,
            shuffle=train, drop_last=train and len(y) > cfg.batch_size,  # no size-1 tail batch for batch norm
            augment=cfg.dataset.augment if train else "none", generator=generator, channels_last=channels_last)

    train, val, test = batches(splits.train, True), batches(splits.val, False), batches(splits.test, False)
    steps = cfg.epochs * len(train)
    scheduler = warmup_cosine(optimizer, steps, round(cfg.warmup_epochs * len(train)))
    train_seconds, first = 0.0, 1
    if resume is not None:
        model.load_state_dict(resume["model"])
        loss_fn.load_state_dict(resume.get("loss", {}))  # a loss's own weights (USKD's weak classifier)
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if cuda and resume.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(resume["cuda_rng"])
        train_seconds, first = float(resume["train_seconds"]), int(resume["epoch"]) + 1
    sync_every = SYNC_EVERY.get(device.type, 25)
    eval_s = 0.0  # the last evaluation's time: the ETA's estimate of each one still to come
    for epoch in range(first, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            with epoch_bar(f"epoch {epoch}/{cfg.epochs}", len(train), (cfg.epochs - epoch) * len(train),
                           (cfg.epochs - epoch + 1) * eval_s) as advance:
                train_loss, train_acc = train_one_epoch(
                    model, train, loss_fn, optimizer, scheduler, autocast, advance, teacher, sync_every
                )
        except NonFinite as e:
            batch, value = e.args
            step = (epoch - 1) * len(train) + batch
            train_seconds += time.perf_counter() - t0
            raise Diverged(f"training loss is {value if value is not None else 'non-finite'} at step {step} "
                           f"(epoch {epoch}, batch {batch} of {len(train)}; lr={cfg.lr})", train_seconds,
                           step) from None
        if cuda:
            torch.cuda.synchronize()
        t1, c1 = time.perf_counter(), time.process_time()
        train_seconds += t1 - t0
        if not math.isfinite(train_loss):  # every batch's loss was finite but their sum is not
            raise Diverged(f"training loss is {train_loss} in epoch {epoch} (lr={cfg.lr})", train_seconds,
                           epoch * len(train))
        val_logits, val_y = predict(model, val, autocast)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        if not cfg.skip_test:  # a tuning trial's run: the tuner reads validation only
            test_logits, test_y = predict(model, test, autocast)
            row |= {f"test_{k}": v for k, v in classification_metrics(test_logits, test_y).items()}
        row |= {f"val_{k}": v for k, v in classification_metrics(val_logits, val_y).items()}
        eval_s = time.perf_counter() - t1
        row |= {"train_s": t1 - t0, "train_cpu_s": c1 - c0, "eval_s": eval_s}
        on_epoch(row)
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
            on_state(
                {
                    "epoch": epoch,
                    "train_seconds": train_seconds,
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
                }
            )
    logits = {"val_logits": val_logits, "val_target": val_y}
    if not cfg.skip_test:
        logits |= {"test_logits": test_logits, "test_target": test_y}
    if ood is not None:  # scored with this dataset's input normalization, as the model sees every input
        logits |= ood_scores(model, autocast, {"train": batches(splits.train, False), "test": test,
                                               "ood": batches(ood, False)})
    return {"train_seconds": train_seconds, "logits": logits}


def ood_scores(
    model: nn.Module, autocast: Callable[[], Any], splits: Mapping[str, Iterable[Any]]
) -> dict[str, torch.Tensor]:
    """The OOD logits, and each feature-based score (runner/ood_features.py) of the test and OOD images, fitted on
    the training images' penultimate features (no augmentation)."""
    seen = {}
    for name, split in splits.items():
        with captured(model) as feats:
            out, target = predict(model, split, autocast)
        seen[name] = (torch.cat(feats).double().cpu().numpy(), out.double().numpy(), target.numpy())
    fc = classifier(model)
    train_f, train_logits, train_y = seen["train"]
    both_f = np.concatenate([seen["test"][0], seen["ood"][0]])
    both_logits = np.concatenate([seen["test"][1], seen["ood"][1]])
    scores = feature_scores(train_f, train_y, train_logits, fc.weight.detach().double().cpu().numpy(),
                            fc.bias.detach().double().cpu().numpy(), both_f, both_logits)
    n_test = len(seen["test"][0])
    out = {"ood_logits": torch.from_numpy(seen["ood"][1]).float()}
    for name, values in scores.items():
        out |= {
            f"test_score_{name}": torch.from_numpy(values[:n_test]),
            f"ood_score_{name}": torch.from_numpy(values[n_test:]),
        }
    return out
