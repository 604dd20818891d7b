"""The tuner's studies: its settings (conf/tune/), each method and its Optuna study in the results folder's journal,
which trial a study chose, and the studies as tables (tune/trials.csv, tune/spaces.csv). ``python -m runner.tune``
(runner/tune.py) runs the trials and the finals."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from filelock import FileLock, Timeout
from omegaconf import OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from runner import records, rundir, space
from runner.journal import journal, repair_journal, storage
from runner.metrics import higher_is_better, metric_names
from runner.plan import RunPlan
from runner.schema import ConfigError, _num, check_dataclass_ranges, did_you_mean

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # each counts in the budget
UNSAMPLED = "unsampled"  # a trial cut off before all its settings were recorded: set aside, not in the budget


def tuning_targets() -> tuple[str, ...]:
    """What a study may choose by: every validation metric a run writes (each epoch's row and its best epoch's) that
    has a direction; derived from the metrics themselves, so a new metric is a target without a list to edit."""
    return tuple(f"{p}val_{m}" for p in ("", "best_") for m in metric_names() if higher_is_better(m) is not None)


@dataclass
class TuneConfig:
    """conf/tune/default.yaml, typed (its comments say what each key does)."""
    trials: int = _num(8, ge=1)
    seeds: list[int] = field(default_factory=lambda: [100])
    metric: str = "val_acc"
    direction: str | None = None
    sampler: str = "tpe"
    sampler_seed: int = _num(0, ge=0)
    startup_trials: int | None = _num(None, ge=1)
    pruner: str = "none"
    parallel: int = _num(1, ge=1)
    space: Any = None
    exploratory: bool = False  # run finals that cannot decide (too few seeds for the rule); the report says so
    finals: str = "fixed"  # fixed: the grid's seeds | sequential: add seeds in rounds until each comparison is decided
    max_seeds: int | None = _num(None, ge=2)  # sequential: the most final seeds per method
    step: int = _num(2, ge=1)  # sequential: seeds added per round after the first look
    decide_on: str = "test_acc"  # sequential: the metric the comparisons are decided on (the summary's default)
    rope: float | None = _num(None, ge=0)  # sequential: also stop as equivalent within ±rope


@dataclass
class Method:
    """One method of the comparison: a grid cell without its seed, and its study."""
    cell: tuple[str, ...]
    label: str
    plan: RunPlan  # the plan of the method's first cell
    settings: TuneConfig
    space: dict[str, BaseDistribution]
    seeds: list[int] = field(default_factory=list)  # the final runs' seeds
    study_name: str = ""
    study: Any = None

    @property
    def root(self) -> Path:
        return self.plan.root


def tune_settings(node: Any) -> TuneConfig:
    if node is None:
        raise ConfigError(
            "tune: no tune settings; python -m runner.tune needs tune=default (or another option of conf/tune/)."
        )
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TuneConfig), node)
    except Exception as e:  # OmegaConf's validation: the key and value it could not take
        key = getattr(e, "full_key", "") or ""
        keys = [f.name for f in dataclasses.fields(TuneConfig)]
        raise ConfigError(f"tune.{key}: {' '.join(str(e).splitlines()[0].split())}.{did_you_mean(key, keys)}") from None
    check_dataclass_ranges(typed, TuneConfig, "tune.")
    settings = TuneConfig(**OmegaConf.to_container(typed))
    if not settings.seeds or any(s < 0 for s in settings.seeds) or len(set(settings.seeds)) != len(settings.seeds):
        raise ConfigError(
            f"tune.seeds={settings.seeds}: allowed: a list of distinct seeds >= 0, e.g. [100] or [100,101]."
        )
    targets = tuning_targets()
    if settings.metric not in targets:
        why = " (choosing on the test split would leak it into the comparison)" if "test_" in settings.metric else ""
        raise ConfigError(f"tune.metric={settings.metric}: allowed: a validation metric{why}: {', '.join(targets)}."
                          f"{did_you_mean(settings.metric, targets)}")
    for key, allowed in (("direction", (None, "maximize", "minimize")), ("sampler", ("tpe", "random")),
                         ("pruner", ("none", "median")), ("finals", ("fixed", "sequential"))):
        if getattr(settings, key) not in allowed:
            raise ConfigError(f"tune.{key}={getattr(settings, key)}: allowed: {', '.join(map(str, allowed))}.")
    if higher_is_better(settings.decide_on) is None or not settings.decide_on.startswith("test_"):
        allowed = [f"test_{m}" for m in metric_names() if higher_is_better(m) is not None]
        raise ConfigError(f"tune.decide_on={settings.decide_on}: allowed: a test metric with a direction: "
                          f"{', '.join(allowed)}.{did_you_mean(settings.decide_on, allowed)}")
    if settings.direction is None:
        settings.direction = "maximize" if higher_is_better(settings.metric) else "minimize"
    return settings


def startup_trials(s: TuneConfig) -> int:
    return s.startup_trials or min(10, max(2, s.trials // 3))


def sampler(s: TuneConfig, number: int) -> optuna.samplers.BaseSampler:
    """A sampler seeded by the study's seed and the trial's number: a study proposes the same trials however often
    the command was stopped and run again (a sampler's own random state would restart at each run)."""
    seed = int(np.random.SeedSequence([s.sampler_seed, number]).generate_state(1)[0])
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(s), constant_liar=s.parallel > 1)


def study_settings(m: Method) -> dict[str, Any]:
    """What a study is: stored with it, and compared with the command's on every later run."""
    s = m.settings
    return {"space": {k: space.describe(d) for k, d in m.space.items()},
            "metric": s.metric, "direction": s.direction, "seeds": list(s.seeds), "sampler": s.sampler,
            "sampler_seed": s.sampler_seed, "startup_trials": startup_trials(s), "pruner": s.pruner}


def _diff(stored: dict[str, Any], given: dict[str, Any]) -> str:
    lines = []
    for k in sorted(set(stored) | set(given)):
        if k == "space":
            for key in sorted(set(stored.get(k, {})) | set(given.get(k, {}))):
                a, b = stored.get(k, {}).get(key), given.get(k, {}).get(key)
                if a != b:
                    lines.append(f"  tune.space.{key}: stored {json.dumps(a)}, command {json.dumps(b)}")
        elif stored.get(k) != given.get(k):
            lines.append(f"  tune.{k}: stored {json.dumps(stored.get(k))}, command {json.dumps(given.get(k))}")
    return "\n".join(lines)


# ---------------------------------------------------------------- studies

def counted(trials: list[FrozenTrial], budget: int) -> list[FrozenTrial]:
    """The trials that count in a budget: in number order, less those set aside as cut off before their settings
    were recorded (they never ran at a setting of their own); the first ``budget``."""
    return [t for t in sorted(trials, key=lambda t: t.number) if not t.user_attrs.get(UNSAMPLED)][:budget]


def check_trial(m: Method, t: FrozenTrial) -> None:
    """A trial's settings, read back from the journal, as the study's space declares them (names and ranges) before
    they become a run's overrides: a ConfigError for anything else (an edited or foreign journal)."""
    bad = []
    for k, v in t.params.items():
        dist = m.space.get(k)
        try:
            ok = dist is not None and dist._contains(dist.to_internal_repr(v))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(f"{k}={v!r}")
    if bad:
        raise ConfigError(f"{journal(m.root)}: trial {t.number} of study {m.study_name} has settings outside its "
                          f"space ({', '.join(bad)}; the space: {', '.join(sorted(m.space))}); the journal was edited "
                          "or is not this study's. Restore it, or give another results_dir.")


def open_studies(methods: list[Method]) -> list[FileLock]:
    """Create or load each method's study and hold its lock; a ConfigError when another process tunes it or when
    its stored settings differ from the command's (shown key by key: a study never mixes two spaces)."""
    locks: list[FileLock] = []
    storages: dict[Path, Any] = {}
    try:
        for m in methods:
            (m.root / "tune").mkdir(parents=True, exist_ok=True)
            name = hashlib.sha1(m.study_name.encode()).hexdigest()[:12]
            lock = FileLock(str(m.root / "tune" / f"{name}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise ConfigError(f"study {m.study_name}: another python -m runner.tune is tuning it in {m.root}; "
                                  "wait for it to finish, or tune other methods.") from None
            locks.append(lock)
            path = journal(m.root)
            if path not in storages:
                repair_journal(path)
                storages[path] = storage(path)
            if m.study_name in optuna.study.get_all_study_names(storages[path]):  # loading writes nothing
                m.study = optuna.load_study(study_name=m.study_name, storage=storages[path])
            else:
                m.study = optuna.create_study(study_name=m.study_name, storage=storages[path],
                                              direction=m.settings.direction)
            given, stored = study_settings(m), m.study.user_attrs.get("settings")
            if stored is not None and stored != given:
                raise ConfigError(
                    f"study {m.study_name} in {path} was run with other settings than this command's "
                    f"(its {len(m.study.trials)} trials would mix two searches):\n{_diff(stored, given)}\n"
                    "Run it with its stored settings, or give another results_dir for a new study."
                )
            if stored is None:
                m.study.set_user_attr("settings", given)
                m.study.set_user_attr("label", m.label)
            if m.study.user_attrs.get("budget") != m.settings.trials:
                m.study.set_user_attr("budget", m.settings.trials)
    except BaseException:
        for lock in locks:
            lock.release()
        raise
    return locks


def chosen(m: Method) -> FrozenTrial | None:
    """The best finished trial within the budget (the earliest on ties), or None when none completed."""
    trials = [t for t in counted(m.study.get_trials(deepcopy=False), m.settings.trials)
              if t.state == TrialState.COMPLETE]
    if not trials:
        return None
    sign = 1 if m.settings.direction == "maximize" else -1
    return max(trials, key=lambda t: (sign * t.value, -t.number))


# ---------------------------------------------------------------- the studies as tables

def trial_costs(root: Path) -> dict[tuple[str, int], dict[str, float]]:
    """Each trial's own cost, summed over its runs' records: wall and CPU seconds and the number of runs. (Optuna's
    start and end of a trial span the whole round its runs were launched in, so they are not a trial's cost.)"""
    costs: dict[tuple[str, int], dict[str, float]] = {}
    folders = (root / "runs").iterdir() if (root / "runs").is_dir() else ()
    for folder in folders:
        served = [e for e in rundir.read_stages(folder) if e["stage"] == "tune"]
        record = rundir.read_result(folder) if served else None
        if not record:
            continue
        for e in served:
            cost = costs.setdefault((e["study"], int(e["trial"])), {"runs": 0})
            cost["runs"] += 1
            for key, fallback in (("wall_seconds", "train_seconds"), ("cpu_seconds", None)):
                value = record.get(key, record.get(fallback) if fallback else None)
                if isinstance(value, (int, float)):
                    cost[key] = cost.get(key, 0.0) + float(value)
    return costs


def write_trials(methods: list[Method]) -> None:
    """``<results>/tune/trials.csv``: a row per trial of every study in the journal, with its setting, value and own
    cost (``duration_s`` and ``cpu_s``: its runs' wall and CPU seconds, summed);
    ``spaces.csv``: each study's search space, a row per setting (low, high, log, step or choices)."""
    for root in {m.root for m in methods}:
        storage = next(m.study._storage for m in methods if m.root == root)
        costs = trial_costs(root)
        rows, ranges = [], []
        for name in optuna.study.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            budget = int(study.user_attrs.get("budget") or 0)
            settings = study.user_attrs.get("settings") or {}
            ranges += [
                {"study": name, "setting": key} | {k: json.dumps(v) if k == "choices" else v for k, v in spec.items()}
                for key, spec in (settings.get("space") or {}).items()
            ]
            budgeted = {t.number for t in counted(study.get_trials(deepcopy=False), budget)}
            finished = [t for t in study.get_trials(deepcopy=False)
                        if t.number in budgeted and t.state == TrialState.COMPLETE]
            sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
            best = max(finished, key=lambda t: (sign * t.value, -t.number)).number if finished else None
            for t in study.get_trials(deepcopy=False):
                rows.append(
                    {
                        "study": name,
                        "method": study.user_attrs.get("label", name),
                        "trial": t.number,
                        "state": t.state.name.lower(),
                        "value": t.value,
                        "metric": settings.get("metric"),
                        "direction": study.direction.name.lower(),
                        "budget": budget,
                        "in_budget": t.number in budgeted,
                        "chosen": t.number == best,
                        "epochs_reported": len(t.intermediate_values),
                        "started": t.datetime_start,
                        "finished": t.datetime_complete,
                        "runs": costs.get((name, t.number), {}).get("runs", 0),
                        "duration_s": costs.get((name, t.number), {}).get("wall_seconds"),
                        "cpu_s": costs.get((name, t.number), {}).get("cpu_seconds"),
                    }
                    | dict(sorted(t.params.items()))
                )
        with FileLock(str(root / "tune" / ".trials.lock")):
            records.write_csv(root / "tune" / "trials.csv", pd.DataFrame(rows))
            records.write_csv(root / "tune" / "spaces.csv", pd.DataFrame(ranges))
