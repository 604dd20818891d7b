"""``python -m runner [overrides]``: plan every cell, then let Hydra launch the ones that must run.

Before Hydra starts, every cell of the command (one, or the whole -m grid) gets its plan
(runner/plan.py), so a mistake anywhere exits with status 2 and nothing written, and a cell whose
run already completed is skipped without building anything. Hydra's launcher (basic, joblib or
submitit, through the planned sweeper) runs the rest; after it returns, the cells' records give
the exit status: 1 if any run did not finish, else 0.
"""
from __future__ import annotations

import signal
import sys
import threading

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import launch
from runner.compose import CONF_DIR, Composer, chosen, unset_nulls
from runner.progress import error, say, set_prefix
from runner.schema import ConfigError


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")  # absolute: runner.tune calls it too
def task(cfg: DictConfig) -> None:
    # Imported here, not at the top: --help and --cfg never need torch (1.8 s of start-up on 2 cores).
    from runner.plan import plan_from_config
    from runner.run import run

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (scancel, a time limit, preemption, kill) stops the run as Ctrl-C does: recorded as interrupted
        signal.signal(signal.SIGTERM, _terminated)
    hc = HydraConfig.get()
    overrides = tuple(hc.overrides.task)
    plan = launch.PLANNED.get(overrides)
    if plan is None:  # a job process of a parallel launcher: its cell is planned here, by the same function
        composer = Composer.from_global()
        try:
            plan = plan_from_config(cfg, chosen(hc.runtime.choices), overrides,
                                    OmegaConf.to_container(hc.launcher, resolve=True), composer=composer)
        except ConfigError as e:
            error(f"error: {e}")
            raise SystemExit(2) from None
        finally:
            composer.release()
    if "BasicLauncher" not in str(hc.launcher.get("_target_", "")):  # runs in parallel: lines interleave
        set_prefix(plan.run_id)
    run(launch.place(plan, hc.launcher))


def report(plans: list) -> int:
    """Print what a grid did and return the exit status: 0 when every cell finished (ok or diverged)."""
    from runner.records import DONE, read_result  # here, as below: records imports pandas, which --help never needs

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


def main() -> int:
    parser = get_args_parser()
    args = parser.parse_args(sys.argv[1:])
    modes = [flag for flag, given in (("--multirun", args.multirun), ("--cfg", args.cfg), ("--info", args.info),
                                      ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        error(f"error: {' and '.join(modes)} cannot be combined; give one of them.")
        return 2
    args.overrides = unset_nulls(args.overrides)
    sys.argv[1:] = unset_nulls(sys.argv[1:])  # Hydra parses sys.argv itself
    where = dict(config_dir=args.config_dir, config_path=args.config_path, config_name=args.config_name)
    tuning = [o for o in args.overrides if o.lstrip("+~").split("=", 1)[0].split(".")[0] in ("tune", "trial")]
    if tuning:  # a plain run would ignore them: say so rather than run one setting untuned
        error(f"error: {tuning[0]}: tune settings are read by python -m runner.tune (same overrides, plus tune.*); "
              "python -m runner runs the setting it is given.")
        return 2
    if args.help or args.hydra_help or args.shell_completion or args.info:
        task()
        return 0
    try:
        if args.cfg:  # composing is enough to print it: no model is built, torch is not imported
            with Composer(**where) as composer:
                composer.master(args.overrides, multirun=False)
                composer.compose(args.overrides)
            task()
            return 0
        from runner.plan import make_plans  # here, so that --cfg and --help stay fast

        plans = make_plans(args.overrides, args.multirun, **where)
    except ConfigError as e:
        error(f"error: {e}")
        return 2
    from runner.records import completed  # here, as make_plans

    pending = []
    for p in plans:
        done = None if p.cfg.force else completed(p.folder)
        if done:
            say(f"skip {p.run_id} ({p.label}): already completed, status={done['status']} (force=true reruns it)")
        else:
            pending.append(p)
    if pending:
        launch.PLANNED.update({p.overrides: p for p in plans})
        launch.TO_LAUNCH = {p.overrides for p in pending}
        from runner.monitor import GridProgress  # here, as make_plans

        try:
            with GridProgress(pending):
                task()
        except KeyboardInterrupt:
            error("interrupted: nothing half-written; run the same command again to run what is not finished")
            return 130
    return report(plans)


if __name__ == "__main__":
    sys.exit(main())
