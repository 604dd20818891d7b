"""The one hand-off of planned runs to Hydra's launcher, used by ``python -m runner`` and ``runner.tune`` alike.

The command plans every cell first (runner/plan.py); ``hand_off`` then starts Hydra on the command's own
arguments (passed in, never through ``sys.argv``) with ``job`` as the task. Hydra's launcher (basic, joblib
or submitit, through the planned sweeper in hydra_plugins/runner_sweeper) runs each cell's ``job``, which
takes the cell's plan from this process, or plans the cell itself in a job process of a parallel launcher.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Sequence

from hydra._internal.utils import _run_hydra, get_args_parser
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from runner import machine
from runner.compose import CONF_DIR, Composer, chosen
from runner.progress import error, set_prefix
from runner.schema import ConfigError

# What the planned sweeper reads while Hydra runs: the plan of each cell by its overrides, the cells to launch,
# and (runner.tune) the exact cells instead of the command's grid. A job process of a parallel launcher starts
# with none of them and plans its own cell.
PLANNED: dict[tuple[str, ...], Any] = {}
TO_LAUNCH: set[tuple[str, ...]] | None = None
CELLS: list[list[str]] | None = None


class NotSubmitted(SystemExit):
    """The launcher's scheduler refused the jobs (sbatch's message): nothing ran. A SystemExit, so that it passes
    Hydra's report of failed tasks, which catches every Exception and prints its traceback."""


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def job(cfg: DictConfig) -> None:
    """Hydra's task: run one cell. Imports torch's side here, not at the top: --help and --cfg never need it."""
    from runner.plan import plan_from_config
    from runner.run import run

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (scancel, a time limit, preemption, kill) stops the run as Ctrl-C does: recorded as interrupted
        signal.signal(signal.SIGTERM, _terminated)
    hc = HydraConfig.get()
    overrides = tuple(hc.overrides.task)
    plan = PLANNED.get(overrides)
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
    run(machine.place(plan, hc.launcher))


def hydra(argv: Sequence[str]) -> int:
    """Hydra on ``argv`` with ``job`` as its task, as ``@hydra.main`` would run it (also --help, --cfg, --info);
    returns the status Hydra would exit with (it calls sys.exit after --help and --cfg)."""
    parser = get_args_parser()
    try:
        _run_hydra(args=parser.parse_args(list(argv)), args_parser=parser, task_function=job,
                   config_path=str(CONF_DIR), config_name="config")
    except SystemExit as e:
        # a message (Hydra's own, printed as sys.exit would), or the scheduler's refusal
        if isinstance(e, NotSubmitted) or not isinstance(e.code, (int, type(None))):
            raise
        return e.code or 0
    return 0


def hand_off(plans: Sequence[Any], pending: Sequence[Any], argv: Sequence[str], exact: bool = False) -> None:
    """Launch ``pending`` (planned, not completed) through the launcher ``argv`` selects. ``plans`` are every
    cell of the command; ``exact`` launches the pending cells themselves rather than the command's grid."""
    global TO_LAUNCH, CELLS
    PLANNED.clear()
    PLANNED.update({p.overrides: p for p in plans})
    TO_LAUNCH = {p.overrides for p in pending}
    CELLS = [list(p.overrides) for p in pending] if exact else None
    try:
        hydra(argv)
    except NotSubmitted as e:
        raise ConfigError(f"the launcher could not submit the runs, so nothing ran: {e.code}") from None
    finally:
        TO_LAUNCH, CELLS = None, None
