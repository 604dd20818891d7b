"""python -m runner.tune [-m] <overrides>: every method of a grid tuned with the same budget, then its seeds.

The command takes python -m runner's overrides plus the tune group (conf/tune/default.yaml). Each cell of the
grid without its seed is a method; each method gets a study of tune.trials trials. A trial is a normal run of
this runner on each of tune.seeds at the setting Optuna proposes, scored by the mean of tune.metric on the
validation split; then the method's runs at seed=... of the grid use the setting of its best trial and are the
final runs (tune.finals=sequential adds seeds in rounds until each comparison is decided). Every run is a row of
runs.csv with its stage, study and trial.

Studies live in <results>/tune/journal.log, Optuna's append-only journal file storage, locked with an flock
(runner/journal.py) that works on a cluster's NFS and needs no database server. The same command continues
each study up to its budget: a trial cut off by a kill is run again at its setting (its runs resume from their
last epoch), never replaced; one cut off before its settings were recorded is set aside and resampled. One
process tunes a study at a time.
"""
from __future__ import annotations

import math
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import pandas as pd
from hydra._internal.utils import get_args_parser
from optuna.trial import FrozenTrial, TrialState

from runner import launch, records, rundir, sequential
from runner.compose import Composer, searchpath, unset_nulls
from runner.design import Design, design, method_key
from runner.monitor import GridProgress
from runner.plan import Planner, RunPlan, literal, no_cycle_collection
from runner.progress import encodable_streams, error, say
from runner.prune import trial_setting
from runner.schema import ConfigError, override_key
from runner.methods import prepare, trial_cell
from runner.study import (FINISHED, UNSAMPLED, Method, check_trial, chosen, counted, journal, open_studies, sampler,
                          startup_trials, write_trials)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the runner says what happened to each trial, once




def plan_cells(cells: Sequence[Sequence[str]], job: "Job") -> list[RunPlan]:
    """The plans of a round's cells, by the command's planner: a trial after its method's first is its typed
    config with the sampled values set (runner/template.py), neither composed nor typed again."""
    with Composer(**job.where) as composer, no_cycle_collection():
        return [job.planner.plan(composer, c) for c in cells]


@dataclass
class Job:
    methods: list[Method]
    where: dict[str, Any]
    launcher: dict[str, Any]
    argv: list[str]  # for Hydra: -m, the command's overrides less tune's, where Hydra writes what it launched
    planner: Planner  # the command's: each round plans its trials from what earlier rounds composed and typed
    rebuild: set[Path] = field(default_factory=set)  # roots whose tables need a finished run's new stage


def launch_plans(plans: Sequence[RunPlan], job: Job) -> None:
    """Run the plans that have not completed, through Hydra's launcher of the command (basic, joblib, submitit)."""
    unique = {p.run_id: p for p in reversed(plans)}
    for root in dict.fromkeys(p.root for p in unique.values()):  # a finish cut off between record and rows
        repaired = records.repair_tables(root, [p.run_id for p in unique.values() if p.root == root])
        if repaired:
            say(f"added the missing rows of {len(repaired)} finished run(s) to {root}/runs.csv and epochs.csv "
                f"({', '.join(repaired)})")
    pending = [p for p in unique.values() if not rundir.completed(p.folder)]
    if not pending:
        return
    with GridProgress(pending):
        launch.hand_off(pending, pending, job.argv, exact=True)


def mark(plan: RunPlan, m: Method, trial: FrozenTrial, stage: str, job: Job) -> None:
    if rundir.add_stage(plan.folder, {"study": m.study_name, "trial": trial.number, "stage": stage,
                                       "params": dict(trial.params)}) and rundir.completed(plan.folder):
        job.rebuild.add(plan.root)  # its row in runs.csv was written without this stage


def outcome(plans: Sequence[RunPlan], metric: str) -> tuple[TrialState | None, float | None, str]:
    """A trial's result from its runs' records: (state, value, why); state None while a run has not finished."""
    recs = [rundir.read_result(p.folder) for p in plans]
    statuses = [(r or {}).get("status") for r in recs]
    if all(s == "ok" for s in statuses):
        values = [records.row(r).get(metric) for r in recs if r]
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return TrialState.COMPLETE, float(np.mean(values)), ""
        return TrialState.FAIL, None, f"{metric} was not recorded"
    if "pruned" in statuses:
        return TrialState.PRUNED, None, "pruned"
    bad = [f"{p.run_id} {s}" for p, s in zip(plans, statuses) if s in ("failed", "diverged")]
    if bad:
        return TrialState.FAIL, None, ", ".join(bad)
    return None, None, ", ".join(f"{p.run_id} {s or 'not run'}" for p, s in zip(plans, statuses) if s != "ok")


def trial_plans(job: Job, batch: list[tuple[Method, FrozenTrial]]) -> list[list[RunPlan]]:
    cells = []
    for m, t in batch:
        for i, seed in enumerate(m.settings.seeds):
            extra = ()
            if m.settings.pruner == "median":
                setting = trial_setting(str(journal(m.root).resolve()), m.study_name, t.number, m.settings.metric,
                                        i * m.plan.cfg.epochs, startup_trials(m.settings))
                extra = (f"trial={literal(setting)}",)
            cells.append(trial_cell(m, seed, t.params, ("skip_test=true", *extra)))
    plans = plan_cells(cells, job)
    k = 0
    out = []
    for m, t in batch:
        out.append(plans[k:k + len(m.settings.seeds)])
        k += len(m.settings.seeds)
    return out


def run_trials(job: Job) -> bool:
    """Run rounds of trials until every study has its budget: each round asks each unfinished study for up to
    ``tune.parallel`` trials (a trial cut off earlier first) and launches all their runs at once. False when a
    round could finish none (their runs are held by another process)."""
    while True:
        batch: list[tuple[Method, FrozenTrial]] = []
        for m in job.methods:
            for t in m.study.get_trials(deepcopy=False):
                if t.state == TrialState.RUNNING and set(t.params) != set(m.space):  # cut off while being sampled
                    m.study._storage.set_trial_user_attr(t._trial_id, UNSAMPLED, True)
                    m.study.tell(t.number, state=TrialState.FAIL)
                    say(f"tune {m.label}: trial {t.number} was cut off before its settings were recorded; it is set "
                        "aside (not in the budget) and another is sampled in its place")
            live = [t for t in m.study.get_trials(deepcopy=False) if not t.user_attrs.get(UNSAMPLED)]
            todo = [t for t in live if t.state == TrialState.RUNNING]
            for _ in range(max(0, min(m.settings.parallel - len(todo), m.settings.trials - len(live)))):
                m.study.sampler = sampler(m.settings, len(live))  # the proposal the cut-off trial would have had
                asked = m.study.ask(m.space)
                todo.append(m.study.trials[asked.number])
                live.append(todo[-1])
            for t in todo:
                check_trial(m, t)
            batch += [(m, t) for t in todo]
        if not batch:
            return True
        groups = trial_plans(job, batch)
        for (m, t), plans in zip(batch, groups):
            for p in plans:
                mark(p, m, t, "tune", job)
        launch_plans([p for plans in groups for p in plans], job)
        told = 0
        for (m, t), plans in zip(batch, groups):
            state, value, why = outcome(plans, m.settings.metric)
            if state is None:
                error(f"tune {m.label}: trial {t.number} is not finished ({why})")
                continue
            m.study.tell(t.number, value, state=state)  # value is None for a pruned or failed trial
            told += 1
            done = sum(tr.state in FINISHED for tr in counted(m.study.get_trials(deepcopy=False), m.settings.trials))
            best = chosen(m)
            shown = " ".join(f"{k}={_short(v)}" for k, v in sorted(t.params.items()))
            result = f"{m.settings.metric} {value:.4f}" if value is not None else f"{state.name.lower()} ({why})"
            say(f"tune {m.label}: trial {t.number} ({done}/{m.settings.trials}) {shown}: {result}"
                + (f"; best {best.value:.4f} (trial {best.number})" if best else ""))
        write_trials(job.methods)
        if not told:
            return False


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_finals(job: Job) -> int:
    """Each method's final runs at its chosen setting; the exit status (0: every final run finished)."""
    status, batch = 0, []
    for m in job.methods:
        best = chosen(m)
        if best is None:
            error(
                f"tune {m.label}: none of its {m.settings.trials} trials completed, so it has no chosen setting and no "
                "final runs; see the trials' errors in runs.csv"
            )
            status = 1
            continue
        check_trial(m, best)
        shown = " ".join(f"{k}={_short(v)}" for k, v in sorted(best.params.items()))
        say(f"tune {m.label}: chosen trial {best.number} ({shown}, {m.settings.metric} {best.value:.4f}); final runs "
            f"on seed {','.join(map(str, m.seeds))}")
        batch.append((m, best))
    cells = [trial_cell(m, seed, best.params) for m, best in batch for seed in m.seeds]
    plans = plan_cells(cells, job) if cells else []
    k = 0
    for m, best in batch:
        for p in plans[k:k + len(m.seeds)]:
            mark(p, m, best, "final", job)
        k += len(m.seeds)
    launch_plans(plans, job)
    for root in job.rebuild:
        records.rebuild_tables(root)
    statuses = [(rundir.read_result(p.folder) or {}).get("status") for p in plans]
    if any(s not in rundir.DONE for s in statuses):
        status = 1
    counts = pd.Series(statuses, dtype=object).fillna("not run").value_counts()
    say(f"tuned {len(job.methods)} methods × {job.methods[0].settings.trials} trials; final runs: "
        + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none")
        + f"  (runs.csv and tune/trials.csv in {job.methods[0].root}/; python -m runner.summary {job.methods[0].root})")
    return status


def rounds(methods: list[Method]) -> sequential.Rounds:
    s = methods[0].settings
    return sequential.Rounds(s.max_seeds or 0, s.step, s.decide_on, s.rope, tuple(methods[0].seeds), tuple(s.seeds),
                             "tune.max_seeds")


def plan_finals(methods: list[Method]) -> Design | None:
    """Before any trial: the comparisons of the study and whether its final seeds can decide them; a ConfigError for
    finals that cannot, unless the study is exploratory or adds seeds sequentially."""
    s = methods[0].settings
    planned = design([(m.cell, seed) for m in methods for seed in m.seeds], methods[0].plan.cfg.get("baseline"))
    if s.finals == "sequential":
        sequential.check(planned, rounds(methods))
    elif planned is not None and not planned.decides:
        if not s.exploratory:
            raise ConfigError(f"tune: {planned.sentence()}. Give more final seeds; or tune.finals=sequential "
                              f"tune.max_seeds={max(20, 2 * planned.needed)} to add seeds until each comparison is "
                              f"decided; or tune.exploratory=true to run a study that cannot decide.")
        say(f"{planned.sentence()}; tune.exploratory=true: it runs, and its report says it cannot decide")
    elif planned is not None:
        say(planned.sentence())
    return planned


def run_sequential(job: Job, planned: Design) -> int:
    """The final runs in rounds (runner/sequential.py), each method at its chosen trial's setting."""
    by_key = {method_key(m.cell): m for m in job.methods}
    best = {key: chosen(m) for key, m in by_key.items()}
    missing = [by_key[k].label for k, b in best.items() if b is None]
    if missing:
        error(f"tune: {', '.join(missing)} completed no trial, so no comparison can be run; see the trials' errors")
        return 1
    for key, b in best.items():
        check_trial(by_key[key], b)

    def plans_for(keys: Sequence[tuple[str, ...]], seeds: Sequence[int]) -> dict[tuple[tuple[str, ...], int], RunPlan]:
        plans = plan_cells([trial_cell(by_key[key], seed, best[key].params) for key in keys for seed in seeds], job)
        out = {}
        for (key, seed), p in zip([(key, seed) for key in keys for seed in seeds], plans):
            mark(p, by_key[key], best[key], "final", job)
            out[(key, seed)] = p
        return out

    status = sequential.run_rounds(planned, rounds(job.methods), plans_for, lambda plans: launch_plans(plans, job),
                                   job.methods[0].root)
    for root in job.rebuild:
        records.rebuild_tables(root)
    return status


# ---------------------------------------------------------------- the command

def main(argv: list[str] | None = None) -> int:
    encodable_streams()
    argv = unset_nulls(list(sys.argv[1:] if argv is None else argv))
    os.environ[rundir.COMMAND] = shlex.join(["python", "-m", "runner.tune", *argv])  # with tune.*: each run records it
    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help:
        print(__doc__)
        print(
            "Example: python -m runner.tune -m pooling=max,avg,softpool tune.trials=8 seed=0,1,2\n"
            "Settings: conf/tune/default.yaml (tune.trials, tune.seeds, tune.metric, tune.sampler, tune.pruner, "
            "tune.space)."
        )
        return 0
    if args.cfg or args.info or args.shell_completion:
        error("error: --cfg, --info and --shell-completion are python -m runner's; give them to it.")
        return 2
    where = dict(config_dir=args.config_dir, config_path=args.config_path, config_name=args.config_name)
    try:
        where["searchpath"] = searchpath(args.overrides)
    except ConfigError as e:
        error(f"error: {e}")
        return 2
    try:
        methods, launcher, planner = prepare(args.overrides, args.multirun, where)
        if any(m.plan.cfg.force for m in methods):
            raise ConfigError(
                "force=true: a study reuses the runs it already has (it is how a stopped study continues); "
                "to start over, give another results_dir."
            )
        planned = plan_finals(methods)
        locks = open_studies(methods)
    except ConfigError as e:
        error(f"error: {e}")
        return 2
    # Hydra composes its own record of the command (multirun.yaml) from these; tune.* stay in it, while each
    # launched cell is the trial's or final run's own overrides
    tuning = [a for a in argv if override_key(a).split(".")[0] == "tune"]
    tuning = tuning if any(override_key(a) == "tune" for a in tuning) else ["tune=default", *tuning]
    hydra_argv = ["-m"] + [a for a in argv if a not in ("-m", "--multirun") and override_key(a).split(".")[0] != "tune"]
    hydra_argv += tuning
    if not any(override_key(a) == "hydra.sweep.dir" for a in argv):  # one folder for what Hydra writes of each round
        hydra_argv.append(f"hydra.sweep.dir={literal(str(methods[0].root / 'tune' / 'launch'))}")
    job = Job(methods, where, launcher, hydra_argv, planner)
    budget = methods[0].settings.trials
    say(
        f"tuning {len(methods)} methods with {budget} trials each on seed "
        f"{','.join(map(str, methods[0].settings.seeds))} "
        f"by {methods[0].settings.metric} ({methods[0].settings.direction}); studies in {journal(methods[0].root)}"
    )
    try:
        complete = run_trials(job)
        write_trials(job.methods)  # also when every study was already complete: the tables follow this version
        if not complete:
            error("some trials could not finish (another process holds their runs); run the same command again later")
            return 1
        if methods[0].settings.finals == "sequential":
            return run_sequential(job, planned)
        return run_finals(job)
    except ConfigError as e:  # an edited journal met while tuning: nothing of it becomes a run
        error(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        error(
            "interrupted: every finished trial is in the study; the same command continues each study where it stopped"
        )
        return 130
    finally:
        for lock in locks:
            lock.release()


if __name__ == "__main__":
    sys.exit(main())
