"""``python -m runner [overrides]``: plan every cell, then let Hydra launch the ones that must run.

Before Hydra starts, every cell of the command (one, or the whole -m grid) gets its plan
(runner/plan.py), so a mistake anywhere exits with status 2 and nothing written, and a cell whose
run already completed is skipped without building anything. Hydra's launcher (basic, joblib or
submitit, through the planned sweeper) runs the rest; after it returns, the cells' records give
the exit status: 1 if any run did not finish, else 0.
"""
from __future__ import annotations

import os
import shlex
import sys

from hydra._internal.utils import get_args_parser

from runner import launch
from runner.compose import Composer, searchpath, unset_nulls
from runner.progress import encodable_streams, error, say
from runner.schema import ConfigError, check_sweep_ranges, override_key


def await_others(plans: list) -> None:
    """Wait for the cells of this grid that another process is training (a SLURM array or a second shell sharing
    the grid): each one's run lock is an flock, held while it trains and dropped by the OS if that process dies, so
    taking it in turn waits exactly as long as the other needs. Their outcomes are then this grid's too."""
    from filelock import Timeout

    from runner.rundir import DONE, read_result, run_lock
    from runner.records import read_epochs

    for p in plans:
        if (read_result(p.folder) or {}).get("status") in DONE:
            continue
        lock = run_lock(p.root, p.run_id)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            epochs = read_epochs(p.folder)
            at = f", at epoch {len(epochs)} of {p.cfg.epochs}" if epochs is not None else ""
            say(f"waiting for {p.run_id} ({p.label}): another process is training it{at}")
            lock.acquire()
        lock.release()


def add_seeds(plans: list, planned: object, rounds: object, argv: list[str], where: dict) -> int:
    """``sequential.max_seeds``: the grid's methods on seeds added in rounds until each comparison is decided
    (runner/sequential.py); each round's runs go through the command's launcher like any grid's."""
    from runner import sequential
    from runner.design import method_key
    from runner.monitor import GridProgress
    from runner.plan import make_plans
    from runner.rundir import completed

    cells = {method_key(p.overrides): [o for o in p.overrides if override_key(o) != "seed"]
             for p in plans}

    def plans_for(keys, seeds):
        out = {}
        for key in keys:
            for p in make_plans([*cells[key], f"seed={','.join(map(str, seeds))}"], True, **where):
                out[(key, int(p.cfg.seed))] = p
        return out

    def run_them(todo):
        pending = [p for p in todo if not completed(p.folder)]
        if pending:
            with GridProgress(pending):
                launch.hand_off(pending, pending, argv, exact=True)

    try:
        return sequential.run_rounds(planned, rounds, plans_for, run_them, plans[0].root)
    except KeyboardInterrupt:
        error("interrupted: the same command continues the rounds where they stopped")
        return 130
    except ConfigError as e:  # the scheduler refused a round's jobs
        error(f"error: {e}")
        return 2


def report(plans: list) -> int:
    """Print what a grid did and return the exit status: 0 when every cell finished (ok or diverged)."""
    from runner.rundir import DONE, read_result  # here, as below: what --help never needs is imported late

    await_others(plans)
    statuses = [(read_result(p.folder) or {}).get("status", "not recorded") for p in plans]
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    if len(plans) > 1:
        say(f"grid of {len(plans)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            + f"  (tables in {plans[0].root}/)")
        for p, s in zip(plans, statuses):
            if s not in DONE:
                say(f"  {s}: {p.run_id} ({p.label})")
    return 0 if all(s in DONE for s in statuses) else 1


def earlier_ids(plans: list) -> None:
    """Say so when the results folder holds runs under an earlier version's ids, which this command cannot find."""
    from runner.earlier import older_runs

    for root in dict.fromkeys(p.root for p in plans):
        old = older_runs(root, {p.run_id for p in plans})
        if old:
            say(f"note: {root}/runs/ holds runs recorded under an earlier version's run ids ({', '.join(old)}): "
                "this command cannot recognize them as completed, so it trains its cells again beside them. "
                "runner.summary still reads them; CHANGELOG.md says which versions changed the ids.")


def show_grid(overrides: list[str], multirun: bool, where: dict) -> int:
    """``python -m runner -m <grid> --cfg job`` (or ``--dry-run``, also without ``-m``): every cell of the grid
    planned (a mistake anywhere is exit 2), with its run id and whether the command would run it or skip it;
    nothing is trained or written."""
    from runner import facts
    from runner.rundir import completed, read_result
    from runner.plan import make_plans

    plans = make_plans(overrides, multirun, preview=True, **where)  # no model built, no data fetched
    done = [completed(p.folder) for p in plans]
    if not all(done):
        with facts.remembered():  # the earlier runs' configs typed as the cells' were
            earlier_ids(plans)
    cells = f"grid of {len(plans)} cell{'s' * (len(plans) != 1)}" if multirun else "1 run"
    say(f"{cells}: {sum(d is None for d in done)} would run, "
        f"{sum(d is not None for d in done)} completed (skipped)  (results in {plans[0].root}/)")
    for p, d in zip(plans, done):
        status = (read_result(p.folder) or {}).get("status")
        what = (f"skip ({d['status']})" if d else "run" + (f" (was {status})" if status else ""))
        say(f"  {what:<20} {p.run_id}  {p.label}")
    return 0


def main() -> int:
    encodable_streams()
    parser = get_args_parser()
    dry_run = "--dry-run" in sys.argv[1:]  # the preview's other spelling, which Hydra's parser does not know
    given = [a for a in sys.argv[1:] if a != "--dry-run"]
    args = parser.parse_args(given)
    # -m --cfg job or --dry-run: the command's cells planned, each with its id and fate; nothing runs
    preview = dry_run or (args.multirun and args.cfg == "job")
    modes = [flag for flag, on in (("--multirun", args.multirun and not preview), ("--dry-run", dry_run),
                                   ("--cfg", args.cfg and not (preview and args.cfg == "job")), ("--info", args.info),
                                   ("--shell-completion", args.shell_completion)) if on]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        error(f"error: {' and '.join(modes)} cannot be combined; give one of them.")
        return 2
    argv = unset_nulls(given)
    # each run records it (rundir.COMMAND; imported later, as everything --help does not need)
    os.environ["RUNNER_COMMAND"] = shlex.join(["python", "-m", "runner", *sys.argv[1:]])
    args.overrides = unset_nulls(args.overrides)
    where = dict(config_dir=args.config_dir, config_path=args.config_path, config_name=args.config_name)
    try:
        where["searchpath"] = searchpath(args.overrides)
    except ConfigError as e:
        error(f"error: {e}")
        return 2
    tuning = [o for o in args.overrides if override_key(o).split(".")[0] in ("tune", "trial")]
    if tuning:  # a plain run would ignore them: say so rather than run one setting untuned
        error(f"error: {tuning[0]}: tune settings are read by python -m runner.tune (same overrides, plus tune.*); "
              "python -m runner runs the setting it is given.")
        return 2
    if args.help or args.hydra_help or args.shell_completion or args.info:
        return launch.hydra(argv)
    try:
        if args.cfg and not preview:  # composing is enough to print it: no model is built, torch is not imported
            with Composer(**where) as composer:
                composer.master(args.overrides, multirun=False)
                composer.compose(args.overrides)
            return launch.hydra(argv)
        check_sweep_ranges(args.overrides)  # a bad value anywhere in a grid, before planning imports torch
        if preview:
            return show_grid(args.overrides, args.multirun, where)
        from runner.plan import make_plans  # here, so that --cfg and --help stay fast

        plans = make_plans(args.overrides, args.multirun, **where)
        baseline = plans[0].cfg.get("baseline") if plans else None
        rounds = None
        if baseline:  # before any run: can the seeds this grid gives decide the comparisons it makes?
            from runner import sequential
            from runner.design import design

            planned = design([(p.overrides, int(p.cfg.seed)) for p in plans], baseline)
            seq = plans[0].cfg.sequential
            if seq.max_seeds:
                rounds = sequential.Rounds(seq.max_seeds, seq.step, seq.decide_on, seq.rope,
                                           tuple(sorted({int(p.cfg.seed) for p in plans})))
                sequential.check(planned, rounds)
            elif planned is not None:
                say(planned.sentence())
        elif plans and plans[0].cfg.sequential.max_seeds:
            raise ConfigError("sequential.max_seeds: seeds are added until the comparisons against a baseline are "
                              "decided; give the baseline too, e.g. baseline=pooling=max.")
    except ConfigError as e:
        error(f"error: {e}")
        return 2
    if rounds is not None:
        return add_seeds(plans, planned, rounds, argv, where)
    from runner.rundir import RESUME, completed
    from runner.records import repair_tables  # here, as make_plans

    for root in dict.fromkeys(p.root for p in plans):  # a finish cut off between a run's record and its rows
        repaired = repair_tables(root, [p.run_id for p in plans if p.root == root])
        if repaired:
            say(f"added the missing rows of {len(repaired)} finished run(s) to {root}/runs.csv and epochs.csv "
                f"({', '.join(repaired)}: their finish was cut off before its rows were written)")
    pending = []
    for p in plans:
        done = None if p.cfg.force else completed(p.folder)
        if done:
            say(f"skip {p.run_id} ({p.label}): already completed, status={done['status']} (force=true reruns it)")
            if not p.cfg.keep_resume:  # a kill after the record, before the finish removed the saved state
                (p.folder / RESUME).unlink(missing_ok=True)
        else:
            pending.append(p)
    if pending:
        earlier_ids(plans)
        from runner.monitor import GridProgress  # here, as make_plans

        try:
            with GridProgress(pending):
                launch.hand_off(plans, pending, argv)
        except KeyboardInterrupt:
            error("interrupted: nothing half-written; run the same command again to run what is not finished")
            return 130
        except ConfigError as e:  # the scheduler refused the jobs
            error(f"error: {e}")
            return 2
    return report(plans)


if __name__ == "__main__":
    sys.exit(main())
