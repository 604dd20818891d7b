"""One run, end to end: load data, build, train, evaluate, record. Plain functions over tensors."""
from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import subprocess
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from filelock import Timeout
from omegaconf import OmegaConf
from torch import nn

import datasets
from models.features import captured, classifier, penultimate_stage, tapped
from runner import build, records, stats
from runner.checkpoint import read_checkpoint, save_checkpoint
from runner.launch import usable_cores
from runner.metrics import classification_metrics, final_metrics
from runner.optim import warmup_cosine
from runner.plan import RunPlan, TeacherRef, checkpoint_plan, ood_dataset
from runner.progress import epoch_bar, error, say
from runner.loggers import open_tracker
from runner.ood_features import feature_scores
from runner.prune import Pruned, reporter

TEACHER_WAIT_S = 6 * 3600  # how long a student waits for another process to finish training its teacher


class Diverged(Exception):
    """The training loss became non-finite."""


# ---------------------------------------------------------------- setup

def resolve_device(plan: RunPlan) -> torch.device:
    """The device the plan was made for; a planned CUDA run on a machine without CUDA is an error of this run."""
    name = plan.cfg.device if plan.cfg.device != "auto" else plan.device_type
    if plan.device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"run {plan.run_id} was planned for CUDA (device={plan.cfg.device}), and this machine has none")
    return torch.device(name)


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the runner's own checkout, with ``-dirty`` for uncommitted changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- training and evaluation

def train_one_epoch(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, autocast: Callable[[], Any],
                    advance: Callable[[], None] = lambda: None,
                    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, float]:
    """One pass over ``batches``; returns (mean training loss, training accuracy). No per-batch host sync.

    With a ``teacher`` (an eval-mode model taking this batch), the loss gets ``teacher_logits=``; a loss that
    declares ``needs_mid_features`` gets the penultimate stage's output of this forward as ``mid_features=``.
    """
    model.train()
    loss_fn.train()
    loss_sum = correct = None
    count = 0
    mid_stage = getattr(loss_fn, "needs_mid_features", False)
    with tapped(penultimate_stage(model)[0]) if mid_stage else contextlib.nullcontext() as mid:
        for x, y in batches:
            with autocast():
                logits = model(x)
                extra = {"mid_features": mid.pop()} if mid_stage else {}
                if teacher is not None:
                    with torch.no_grad():
                        extra["teacher_logits"] = teacher(x)  # the same augmented batch as the student
                loss = loss_fn(logits, y, **extra)
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
            advance()
    return (loss_sum / count).item(), (correct / count).item()


@torch.no_grad()  # not inference_mode: compiled layers (SoftPool) would compile again for inference tensors
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], autocast: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
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


def load_teacher(ref: TeacherRef, student_dataset: str) -> Teacher:
    ckpt = read_checkpoint(ref.checkpoint, "teacher")
    plan = checkpoint_plan(ckpt, "teacher")
    model = build.model(plan.cfg)
    model.load_state_dict(ckpt["model"])
    return Teacher(model, datasets.SPECS[student_dataset], datasets.SPECS[plan.cfg.dataset.name])


def fit(plan: RunPlan, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, splits: datasets.Splits,
        device: torch.device, on_epoch: Callable[[dict[str, Any]], None], teacher: Teacher | None = None,
        resume: Mapping[str, Any] | None = None, on_state: Callable[[dict[str, Any]], None] = lambda state: None) -> dict[str, Any]:
    """Train ``model`` for ``cfg.epochs``; after each epoch evaluate, call ``on_epoch(row)`` and, every
    ``checkpoint_every`` epochs, ``on_state(state)`` with everything the next epoch needs (weights, optimizer,
    schedule and every random generator), from which ``resume`` continues bit for bit on the CPU.

    Returns the final logits and the training time. Raises ``Diverged(message, train_seconds)`` on a
    non-finite training loss.
    """
    cfg = plan.cfg
    spec = datasets.SPECS[cfg.dataset.name]
    cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(cfg.seed)  # batch order and augmentation
    channels_last = cuda and cfg.channels_last
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    loss_fn = loss_fn.to(device)
    autocast = (functools.partial(torch.autocast, device.type, dtype=getattr(torch, plan.autocast)) if plan.autocast
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
    for epoch in range(first, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        with epoch_bar(f"epoch {epoch}/{cfg.epochs}", len(train)) as advance:
            train_loss, train_acc = train_one_epoch(model, train, loss_fn, optimizer, scheduler, autocast, advance, teacher)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        train_seconds += t1 - t0
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} in epoch {epoch} (lr={cfg.lr})", train_seconds)
        test_logits, test_y = predict(model, test, autocast)
        val_logits, val_y = predict(model, val, autocast)
        test_m, val_m = classification_metrics(test_logits, test_y), classification_metrics(val_logits, val_y)
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        row |= {f"test_{k}": v for k, v in test_m.items()} | {f"val_{k}": v for k, v in val_m.items()}
        row |= {"train_s": t1 - t0, "eval_s": time.perf_counter() - t1}
        on_epoch(row)
        if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < cfg.epochs:
            on_state({"epoch": epoch, "train_seconds": train_seconds, "model": model.state_dict(), "loss": loss_fn.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                      "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None})
    logits = {"test_logits": test_logits, "test_target": test_y, "val_logits": val_logits, "val_target": val_y}
    if cfg.ood is not None:  # scored with this dataset's input normalization, as the model sees every input
        ood = datasets.load_cached(ood_dataset(cfg), cfg.data_dir, cfg.download)
        logits |= ood_scores(model, autocast, {"train": batches(splits.train, False), "test": test,
                                               "ood": batches((ood["test_x"], ood["test_y"]), False)})
    return {"train_seconds": train_seconds, "logits": logits}


def ood_scores(model: nn.Module, autocast: Callable[[], Any], splits: Mapping[str, Iterable[Any]]) -> dict[str, torch.Tensor]:
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
        out |= {f"test_score_{name}": torch.from_numpy(values[:n_test]), f"ood_score_{name}": torch.from_numpy(values[n_test:])}
    return out


# ---------------------------------------------------------------- one recorded run

def _fmt(row: Mapping[str, Any]) -> str:
    return (f"train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}  val_acc {row['val_acc']:.4f}  "
            f"test_acc {row['test_acc']:.4f}  test_nll {row['test_nll']:.4f}  test_ece {row['test_ece']:.4f}  {row['train_s']:.1f}s")


def run(plan: RunPlan) -> dict[str, Any]:
    """Train, evaluate and record one planned run; return its record (``status`` ok, diverged, failed,
    interrupted, or busy when another process holds the same run). A completed run is skipped
    unless ``force``. Nothing is validated here: the plan was."""
    done = records.completed(plan.folder)
    if done and not plan.cfg.force:
        say(f"skip {plan.run_id} ({plan.label}): already completed, status={done['status']} (force=true reruns it)")
        return done
    lock = records.run_lock(plan.root, plan.run_id)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"skip {plan.run_id} ({plan.label}): running in another process")
        return {"run_id": plan.run_id, "status": "busy"}
    try:
        return _execute(plan)
    finally:
        lock.release()


def _teacher_for(plan: RunPlan) -> tuple[TeacherRef, dict[str, Any]] | None:
    """The student's teacher, after training it first when it is missing (or waiting while another process does)."""
    ref = plan.teacher
    if ref is None:
        return None
    if ref.plan is not None and not records.completed(ref.plan.folder):
        say(f"teacher {ref.run_id} ({plan.choices['teacher']}) is not in {plan.cfg.results_dir}: training it first")
        record = run(ref.plan)
        if record.get("status") == "busy":
            say(f"teacher {ref.run_id} is being trained by another process: waiting for it (at most {TEACHER_WAIT_S // 3600} h)")
            lock = records.run_lock(ref.plan.root, ref.run_id)
            try:
                lock.acquire(timeout=TEACHER_WAIT_S)
                lock.release()
            except Timeout:
                raise RuntimeError(f"the teacher run {ref.run_id} was still training after {TEACHER_WAIT_S} s") from None
            record = records.read_result(ref.plan.folder) or {}
        if record.get("status") != "ok":
            raise RuntimeError(f"the teacher run {ref.run_id} ended with status={record.get('status')}: {record.get('error')}")
    return ref, records.read_result(ref.checkpoint.parent) or {}


def _slurm_job_id() -> str | None:
    """``<array job>_<task>`` (or the job id) when the run is a SLURM job, else None."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID")


def _submitit_log() -> str | None:
    """The job's log file when submitit runs this process (launcher=slurm, submitit_local), else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return None
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stdout)
    except Exception:  # not a submitit job after all, or an older submitit: the log is where the launcher said
        return None


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def where_it_ran(device: torch.device) -> dict[str, Any]:
    """Recorded beside the run, not part of its id: the device, threads, host and versions."""
    return {"device": str(device), "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "thread_env": " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ) or None,
            "host": socket.gethostname(), "slurm_job_id": _slurm_job_id(), "log": _submitit_log(), "git_commit": git_commit(),
            "torch_version": torch.__version__}


def _execute(plan: RunPlan) -> dict[str, Any]:
    cfg, rid, folder = plan.cfg, plan.run_id, plan.folder
    torch.set_num_threads(cfg.threads or usable_cores())  # never more threads than the cores this process may use
    resume = None if cfg.force else read_resume(folder, plan)
    recorded_before = (folder / "result.json").exists()  # then its rows may be in the tables: they are rebuilt
    for stale in ("result.json", "checkpoint.pt", "logits.pt") + (() if resume else ("epochs.csv", RESUME)):
        (folder / stale).unlink(missing_ok=True)
    records.write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record: dict[str, Any] = {
        "run_id": rid, "choices": dict(plan.choices), "config": OmegaConf.to_container(cfg, resolve=True),
        "device_type": plan.device_type, "autocast": plan.autocast, "started_at": _now(), "error": None,
    }
    rows: list[dict[str, Any]] = list(resume["rows"]) if resume else []

    report = None
    if cfg.trial is not None:  # a trial of python -m runner.tune that its pruner may stop
        report = reporter(cfg.trial)

    tracker = open_tracker(cfg, rid, plan.label)

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        records.write_csv(folder / "epochs.csv", pd.DataFrame(rows))
        say(f"epoch {row['epoch']}/{cfg.epochs}  {_fmt(row)}")
        tracker.epoch(row)
        if report is not None:
            report(row)

    def on_state(state: dict[str, Any]) -> None:  # one file per run, replaced atomically: only the latest state
        with records.atomic_path(folder / RESUME) as tmp:
            torch.save(state | {"run_id": rid, "rows": rows}, tmp)

    try:
        device = resolve_device(plan)
        record |= where_it_ran(device)
        records.write_json(folder / "result.json", record | {"status": "running"})  # read as interrupted if killed
        splits = datasets.load(cfg.dataset, cfg.data_dir, cfg.download)
        record |= splits.sizes() | {"val_hash": splits.val_hash}
        say(f"run {rid} ({plan.label}) on {device}: {record['n_train']} train / {record['n_val']} val / {record['n_test']} test images")
        if resume:
            say(f"resuming {rid} after epoch {resume['epoch']}/{cfg.epochs} (its saved state: {folder / RESUME})")
            record["resumed_from_epoch"] = int(resume["epoch"])
            records.write_csv(folder / "epochs.csv", pd.DataFrame(rows))
        teacher = None
        found = _teacher_for(plan)
        if found is not None:
            ref, teacher_record = found
            teacher = load_teacher(ref, cfg.dataset.name)
            record |= {"teacher_run_id": ref.run_id, "teacher_test_acc": teacher_record.get("metrics", {}).get("test_acc")}
        torch.manual_seed(cfg.seed)  # the initial weights
        model, loss_fn, optimizer = build.parts(cfg)
        record["params"] = sum(p.numel() for p in model.parameters())
        out = fit(plan, model, loss_fn, optimizer, splits, device, on_epoch, teacher, resume, on_state)
        save_checkpoint(folder / "checkpoint.pt", model, cfg, plan.choices, rid)
        with records.atomic_path(folder / "logits.pt") as tmp:
            torch.save(out["logits"], tmp)
        record |= {"status": "ok", "train_seconds": out["train_seconds"], "metrics": final_metrics(out["logits"], cfg.ts_method)}
    except Diverged as e:
        record |= {"status": "diverged", "error": str(e.args[0]), "train_seconds": e.args[1]}
    except Pruned as e:
        record |= {"status": "pruned", "error": str(e)}
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, SIGTERM, or submitit exiting to requeue a preempted job
        why = "KeyboardInterrupt" if isinstance(e, KeyboardInterrupt) else "stopped to be requeued (preempted or timed out)"
        record |= {"status": "interrupted", "error": why}
        _finish(record, rows, folder, recorded_before)
        tracker.finish(record)
        say(f"interrupted {rid}: recorded as interrupted; the same command runs it again")
        raise
    except Exception as e:  # a bug, bad data or a numerical failure in this cell: record it, let the grid go on
        error(traceback.format_exc())
        record |= {"status": "failed", "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
    _finish(record, rows, folder, recorded_before)
    tracker.finish(record)
    if record["status"] in records.DONE and not cfg.keep_resume:
        (folder / RESUME).unlink(missing_ok=True)
    final = record.get("metrics", {})
    metrics = ", ".join(f"{k} {final[k]:.4f}" for k in ("test_acc", "test_nll", "test_ece", "test_ece_ts") if k in final)
    say(f"{record['status']} {rid} ({plan.label}): {metrics or record['error']} in {record.get('train_seconds') or 0:.1f}s "
        f"-> {folder}  (tables: {plan.root / 'runs.csv'}, {plan.root / 'epochs.csv'})")
    if record["status"] == "failed" and cfg.fail_fast:
        raise SystemExit(1)
    return record


RESUME = "resume.pt"  # in a run folder: the state the next epoch needs, while the run is not finished


def read_resume(folder: Path, plan: RunPlan) -> dict[str, Any] | None:
    """The saved state of an unfinished run of this plan, or None (a state that does not fit is reported and ignored)."""
    path = folder / RESUME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("run_id") != plan.run_id:
            raise ValueError("it belongs to another run")
        if not 1 <= int(state["epoch"]) < plan.cfg.epochs or len(state["rows"]) != int(state["epoch"]):
            raise ValueError(f"its epoch {state.get('epoch')} does not fit a run of {plan.cfg.epochs} epochs")
        return state
    except Exception as e:  # truncated, foreign or stale: the run starts from its first epoch
        records.report_corrupt(path, f"{' '.join(str(e).split()[:20])}; the run starts from its first epoch")
        return None


SELECT_BY = "val_acc"  # model selection: the epoch with the best validation accuracy (the earliest on ties)


def _finish(record: dict[str, Any], rows: list[dict[str, Any]], folder: Path, recorded_before: bool = True) -> None:
    last = rows[-1] if rows else {}
    # A finished run has its final metrics (with temperature scaling and OOD); others keep their last epoch's.
    final = record.get("metrics") or {k: v for k, v in last.items() if k.startswith(("test_", "val_"))}
    record["metrics"] = {k: last[k] for k in ("train_loss", "train_acc") if k in last} | final
    record |= {"epochs_done": len(rows), "finished_at": _now()}
    if rows and all(SELECT_BY in r for r in rows):
        best = max(rows, key=lambda r: (r[SELECT_BY], -r["epoch"]))
        record["best"] = {"epoch": best["epoch"]} | {k: v for k, v in best.items() if k.startswith(("test_", "val_"))}
    if "test_acc" in record["metrics"] and record.get("n_test"):
        spec = datasets.SPECS[record["config"]["dataset"]["name"]]
        record["at_chance"] = stats.at_chance(record["metrics"]["test_acc"], spec.num_classes, record["n_test"])
    records.update_tables(folder.parent.parent, record, replace=recorded_before, write=True)
