"""``python -m runner [overrides]``: a thin shell around ``runner.train.run``.

Before Hydra starts, every cell of the command (one, or the whole -m grid) is composed and
validated, so a mistake anywhere exits with status 2 and nothing written. After Hydra returns,
the cells' records give the exit status: 1 if any run failed, else 0.
"""
from __future__ import annotations

import signal
import sys
import threading

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from runner.config import Cell, ConfigError, chosen, preflight
from runner.progress import error, say


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def task(cfg: DictConfig) -> None:
    from runner.launch import place
    from runner.train import run

    if threading.current_thread() is threading.main_thread():
        # SIGTERM (scancel, a time limit, preemption, kill) stops the run as Ctrl-C does: recorded as interrupted
        signal.signal(signal.SIGTERM, _terminated)
    hc = HydraConfig.get()
    place(cfg, hc.launcher)
    choices = chosen(hc.runtime.choices)
    try:
        run(cfg, choices, overrides=hc.overrides.task)
    except ConfigError as e:
        error(f"error: {e}")
        raise SystemExit(2) from None


def report(plan: list[Cell]) -> int:
    """Print what a grid did and return the exit status."""
    from pathlib import Path

    from runner.records import read_result

    statuses = {c.run_id: (read_result(Path(c.results_dir) / "runs" / c.run_id) or {}).get("status", "not recorded") for c in plan}
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    if len(plan) > 1:
        say(f"grid of {len(plan)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"  (tables in {plan[0].results_dir}/)")
        for c in plan:
            if statuses[c.run_id] not in ("ok", "diverged"):
                say(f"  {statuses[c.run_id]}: {c.run_id} ({' '.join(c.overrides)})")
    return 1 if "failed" in counts else 0


def main() -> int:
    args = get_args_parser().parse_args(sys.argv[1:])
    informational = args.help or args.hydra_help or args.info or args.shell_completion or args.cfg
    modes = [flag for flag, given in (("--multirun", args.multirun), ("--cfg", args.cfg), ("--info", args.info),
                                      ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:  # Hydra raises a ValueError with a traceback for this
        error(f"error: {' and '.join(modes)} cannot be combined; give one of them.")
        return 2
    plan: list[Cell] = []
    if not (args.help or args.hydra_help or args.shell_completion):
        try:
            plan = preflight(args.overrides, multirun=args.multirun)
        except ConfigError as e:
            error(f"error: {e}")
            return 2
    try:
        task()
    except KeyboardInterrupt:
        error("interrupted: nothing half-written; run the same command again to resume")
        return 130
    if informational or not plan:
        return 0
    return report(plan)


if __name__ == "__main__":
    sys.exit(main())
