"""One recorded run: its lock, resume state, teacher, tracker and record around the training loop.

``run(plan)`` is the whole life of a run folder: skip a completed run, hold the run's lock, continue from the
saved epoch, train the teacher first when the plan says so, call runner/train.py's ``fit`` and record what it
returns (result.json, checkpoint, logits, the tidy tables). Nothing is validated here: the plan was.
"""
from __future__ import annotations

import contextlib
import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch
from filelock import Timeout
from omegaconf import OmegaConf

import datasets
from runner import build, records, rundir, stats
from runner.checkpoint import read_checkpoint, save_checkpoint
from runner.machine import usable_cores
from runner.loggers import open_tracker, run_axes
from runner.metrics import final_metrics
from runner.plan import RunPlan, TeacherRef
from runner.progress import error, say
from runner.provenance import git_commit, where_it_ran
from runner.prune import Pruned, reporter
from runner.train import Diverged, Teacher, fit

TEACHER_WAIT_S = 6 * 3600  # how long a student waits for another process to finish training its teacher

# ---------------------------------------------------------------- setup

def resolve_device(plan: RunPlan) -> torch.device:
    """The device the plan was made for; a planned CUDA run on a machine without CUDA is an error of this run."""
    name = plan.cfg.device if plan.cfg.device != "auto" else plan.device_type
    if plan.device_type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"run {plan.run_id} was planned for CUDA (device={plan.cfg.device}), and this machine has none"
        )
    return torch.device(name)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_teacher(ref: TeacherRef, student_dataset: str) -> Teacher:
    """The teacher's model from its plan (made when the student was planned) and its checkpoint's weights."""
    ckpt = read_checkpoint(ref.checkpoint, "teacher")
    model = build.model(ref.plan.cfg)
    model.load_state_dict(ckpt["model"])
    return Teacher(model, datasets.SPECS[student_dataset], datasets.SPECS[ref.plan.cfg.dataset.name])


# ---------------------------------------------------------------- one recorded run

def _fmt(row: Mapping[str, Any]) -> str:
    shown = ("train_loss", "train_acc", "val_acc", "test_acc", "test_nll", "test_ece")
    return "  ".join(f"{k} {row[k]:.4f}" for k in shown if k in row) + f"  {row['train_s']:.1f}s"


def run(plan: RunPlan) -> dict[str, Any]:
    """Train, evaluate and record one planned run; return its record (``status`` ok, diverged, failed,
    interrupted, or busy when another process holds the same run). A completed run is skipped
    unless ``force``. Nothing is validated here: the plan was."""
    done = rundir.completed(plan.folder)
    if done and not plan.cfg.force:
        say(f"skip {plan.run_id} ({plan.label}): already completed, status={done['status']} (force=true reruns it)")
        return done
    lock = rundir.run_lock(plan.root, plan.run_id)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"skip {plan.run_id} ({plan.label}): running in another process")
        return {"run_id": plan.run_id, "status": "busy"}
    try:
        if rundir.restore_previous(plan.folder):  # a forced rerun that was killed: its earlier result comes back
            records.rebuild_tables(plan.root)
            say(f"{plan.run_id}: a forced rerun of it was killed; its earlier complete result is restored")
            done = rundir.completed(plan.folder)
            if done and not plan.cfg.force:
                say(f"skip {plan.run_id} ({plan.label}): already completed, status={done['status']} "
                    "(force=true reruns it)")
                return done
        return _execute(plan)
    finally:
        lock.release()


def _teacher_for(plan: RunPlan) -> tuple[TeacherRef, dict[str, Any]] | None:
    """The student's teacher, after training it first when it is missing (or waiting while another process does)."""
    ref = plan.teacher
    if ref is None:
        return None
    if ref.trains and not rundir.completed(ref.plan.folder):
        say(f"teacher {ref.run_id} ({plan.choices['teacher']}) is not in {plan.cfg.results_dir}: training it first")
        record = run(ref.plan)
        if record.get("status") == "busy":
            say(
                f"teacher {ref.run_id} is being trained by another process: waiting for it (at most "
                f"{TEACHER_WAIT_S // 3600} h)"
            )
            lock = rundir.run_lock(ref.plan.root, ref.run_id)
            try:
                lock.acquire(timeout=TEACHER_WAIT_S)
                lock.release()
            except Timeout:
                raise RuntimeError(
                    f"the teacher run {ref.run_id} was still training after {TEACHER_WAIT_S} s"
                ) from None
            record = rundir.read_result(ref.plan.folder) or {}
        if record.get("status") != "ok":
            raise RuntimeError(
                f"the teacher run {ref.run_id} ended with status={record.get('status')}: {record.get('error')}"
            )
    return ref, rundir.read_result(ref.checkpoint.parent) or {}


def spent(clock: tuple[float, float], before: Mapping[str, float]) -> dict[str, float]:
    """Wall and CPU seconds (every thread of this process) since ``clock`` = (perf_counter(), process_time()), plus
    what earlier attempts of a resumed run spent (``before``)."""
    return {"wall_seconds": round(time.perf_counter() - clock[0] + float(before.get("wall_seconds", 0)), 3),
            "cpu_seconds": round(time.process_time() - clock[1] + float(before.get("cpu_seconds", 0)), 3)}


def _execute(plan: RunPlan) -> dict[str, Any]:
    cfg, rid, folder = plan.cfg, plan.run_id, plan.folder
    torch.set_num_threads(cfg.threads or usable_cores())  # never more threads than the cores this process may use
    resume = None if cfg.force else read_resume(folder, plan)
    recorded_before = (folder / "result.json").exists()  # then its rows may be in the tables: they are rebuilt
    if cfg.force and rundir.completed(folder):  # kept aside until the new result is complete
        rundir.set_aside(folder)
    for stale in ("result.json", "checkpoint.pt", "logits.pt") + (() if resume else ("epochs.csv", rundir.RESUME)):
        (folder / stale).unlink(missing_ok=True)
    rundir.write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record: dict[str, Any] = {
        "run_id": rid, "choices": dict(plan.choices), "config": OmegaConf.to_container(cfg, resolve=True),
        "device_type": plan.device_type, "autocast": plan.autocast, "started_at": _now(), "error": None,
    }
    rows: list[dict[str, Any]] = list(resume["rows"]) if resume else []
    clock = (time.perf_counter(), time.process_time())  # this attempt's cost; a resumed run's earlier ones add up
    before = dict(resume.get("spent") or {}) if resume else {}

    report = None
    if cfg.trial is not None:  # a trial of python -m runner.tune that its pruner may stop
        report = reporter(cfg.trial)

    tracker = open_tracker(cfg, rid, plan.label,
                           run_axes(plan.choices, cfg.seed, rid, git_commit(), rundir.stage_of(folder)))

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        records.write_csv(folder / "epochs.csv", pd.DataFrame(rows))
        say(f"epoch {row['epoch']}/{cfg.epochs}  {_fmt(row)}")
        tracker.epoch(row)
        if report is not None:
            report(row)

    def on_state(state: dict[str, Any]) -> None:  # one file per run, replaced atomically: only the latest state
        with rundir.atomic_path(folder / rundir.RESUME) as tmp:
            torch.save(state | {"run_id": rid, "rows": rows, "spent": spent(clock, before)}, tmp)

    try:
        device = resolve_device(plan)
        record |= where_it_ran(device)
        rundir.write_json(folder / "result.json", record | {"status": "running"})  # read as interrupted if killed
        splits = datasets.load(cfg.dataset, cfg.data_dir, cfg.download)
        record |= splits.sizes() | {"val_hash": splits.val_hash}
        say(
            f"run {rid} ({plan.label}) on {device}: {record['n_train']} train / {record['n_val']} val / "
            f"{record['n_test']} test images"
        )
        if resume:
            say(f"resuming {rid} after epoch {resume['epoch']}/{cfg.epochs} "
                f"(its saved state: {folder / rundir.RESUME})")
            record["resumed_from_epoch"] = int(resume["epoch"])
            records.write_csv(folder / "epochs.csv", pd.DataFrame(rows))
        teacher = None
        found = _teacher_for(plan)
        if found is not None:
            ref, teacher_record = found
            teacher = load_teacher(ref, cfg.dataset.name)
            record |= {
                "teacher_run_id": ref.run_id,
                "teacher_test_acc": teacher_record.get("metrics", {}).get("test_acc"),
            }
        torch.manual_seed(cfg.seed)  # the initial weights
        built, why = build.for_run(cfg, record["n_train"])
        if why:
            say(f"run {rid}: {why}")
        model, loss_fn, optimizer = build.parts(built)
        record["params"] = sum(p.numel() for p in model.parameters())
        ood = None
        if plan.ood is not None:
            tensors = datasets.load_cached(plan.ood, cfg.data_dir, cfg.download)
            ood = (tensors["test_x"], tensors["test_y"])
        out = fit(
            cfg, model, loss_fn, optimizer, splits, device, on_epoch, teacher, resume, on_state, plan.autocast, ood
        )
        save_checkpoint(folder / "checkpoint.pt", model, cfg, plan.choices, rid)
        with rundir.atomic_path(folder / "logits.pt") as tmp:
            torch.save(out["logits"], tmp)
        record |= {
            "status": "ok",
            "train_seconds": out["train_seconds"],
            "metrics": final_metrics(out["logits"], cfg.ts_method),
        }
    except Diverged as e:
        record |= {"status": "diverged", "error": str(e.args[0]), "train_seconds": e.args[1],
                   "diverged_step": e.args[2]}
    except Pruned as e:
        record |= {"status": "pruned", "error": str(e)}
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, SIGTERM, or submitit exiting to requeue a preempted job
        if isinstance(e, SystemExit):
            why = "stopped to be requeued by submitit (preempted or timed out)"
        else:
            why = {"SIGTERM": "SIGTERM (scancel, a time limit or kill)"}.get(str(e), "SIGINT (Ctrl-C)")
        record |= {"status": "interrupted", "error": why}
        if rundir.restore_previous(folder):  # force=true: the earlier complete result stays
            say(f"interrupted {rid} ({why}): its earlier result is kept; force=true replaces it only with a "
                "complete run")
            raise
        record |= spent(clock, before)
        _finish_or_fail(record, rows, folder, recorded_before)
        tracker.finish(record)
        say(f"interrupted {rid}: recorded as interrupted ({why}); the same command runs it again")
        raise
    except Exception as e:  # a bug, bad data or a numerical failure in this cell: record it, let the grid go on
        error(traceback.format_exc())
        record |= {"status": "failed", "error": f"{type(e).__name__}: {' '.join(str(e).split())}"}
        if rundir.restore_previous(folder):
            tracker.finish(record)
            say(f"failed {rid} ({record['error']}): its earlier result is kept (force=true replaces it only with a "
                "complete run)")
            return rundir.read_result(folder) or record
    record |= spent(clock, before)
    if not _finish_or_fail(record, rows, folder, recorded_before) and rundir.restore_previous(folder):
        return rundir.read_result(folder) or record
    rundir.drop_previous(folder)  # the new result is complete: the one it replaces goes
    tracker.finish(record)
    if record["status"] in rundir.DONE and not cfg.keep_resume:
        (folder / rundir.RESUME).unlink(missing_ok=True)
    final = record.get("metrics", {})
    metrics = ", ".join(
        f"{k} {final[k]:.4f}" for k in ("test_acc", "test_nll", "test_ece", "test_ece_ts") if k in final
    )
    say(
        f"{record['status']} {rid} ({plan.label}): {metrics or record['error']} in "
        f"{record.get('train_seconds') or 0:.1f}s "
        f"-> {folder}  (tables: {plan.root / 'runs.csv'}, {plan.root / 'epochs.csv'})"
    )
    if record["status"] == "failed" and cfg.fail_fast:
        raise SystemExit(1)
    return record




def read_resume(folder: Path, plan: RunPlan) -> dict[str, Any] | None:
    """The saved state of an unfinished run of this plan, or None (a state that does not fit is reported, ignored)."""
    path = folder / rundir.RESUME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("run_id") != plan.run_id:
            raise ValueError("it belongs to another run")
        if not 1 <= int(state["epoch"]) < plan.cfg.epochs or len(state["rows"]) != int(state["epoch"]):
            raise ValueError(f"its epoch {state.get('epoch')} does not fit a run of {plan.cfg.epochs} epochs")
        fits_parts(state, plan.cfg)
        return state
    except Exception as e:  # truncated, foreign or stale: the run starts from its first epoch
        rundir.report_corrupt(path, f"{' '.join(str(e).split()[:20])}; the run starts from its first epoch")
        return None


def fits_parts(state: dict[str, Any], cfg: Any) -> None:
    """Raise unless ``state`` loads into this run's model, loss and optimizer as ``fit`` will load it: a state
    with the right id but other weights (edited, or saved by other code) would fail the run on every attempt."""
    model, loss_fn, optimizer = build.parts(cfg)  # throwaway parts: ``fit`` gets freshly seeded ones
    model.load_state_dict(state["model"])
    loss_fn.load_state_dict(state.get("loss", {}))
    optimizer.load_state_dict(state["optimizer"])
    for p, kept in optimizer.state.items():
        if any(torch.is_tensor(v) and v.dim() and v.shape != p.shape for v in kept.values()):
            raise ValueError("its optimizer state does not match the model's weights")
    torch.Generator().set_state(state["generator"])
    float(state["train_seconds"]), state["scheduler"], state["torch_rng"]


SELECT_BY = "val_acc"  # model selection: the epoch with the best validation accuracy (the earliest on ties)


def _finish_or_fail(record: dict[str, Any], rows: list[dict[str, Any]], folder: Path, recorded_before: bool) -> bool:
    """``_finish``; when the disk is full or a table cannot be written, the run is recorded ``failed`` with the
    reason instead (never left ``running``) and False is returned. The next command runs it again."""
    try:
        _finish(record, rows, folder, recorded_before)
        return True
    except OSError as e:
        record |= {"status": "failed", "error": f"its result could not be recorded ({e.strerror or e}: "
                                                f"{e.filename or folder}); free space or fix the file, then rerun"}
        error(f"error: {record['run_id']}: {record['error']}")
        try:
            rundir.write_json(folder / "result.json", record)
        except OSError:  # too full even for the record: its old copy goes, and the essentials take its place
            (folder / "result.json").unlink(missing_ok=True)
            short = {k: record.get(k) for k in ("run_id", "status", "error", "choices", "config", "started_at")}
            with contextlib.suppress(OSError):
                rundir.write_text(folder / "result.json", json.dumps(short, separators=(",", ":"), default=str))
        return False


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
