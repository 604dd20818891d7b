"""Sections ``plan`` and ``records``: what a user waits for before anything trains, and a run's finish."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


from runner.compose import Composer
from runner.plan import Planner, make_plan

from runner.bench.common import timed


PLAN_GRID = ["pooling=max,avg,lp,softpool", "seed=range(50)"]  # 200 cells


def plan_section(rounds: int) -> dict[str, float]:
    """What a user waits for before anything trains: planning a 200-cell grid, re-running a completed one,
    rejecting one whose last cell is bad, and ``--cfg job``; the commands' times include the interpreter's start."""
    import subprocess
    import sys
    import tempfile

    from runner import rundir
    from runner.plan import make_plans

    make_plans(PLAN_GRID[:1], multirun=True)  # imports and first compositions, paid once by any command
    planning = []
    for _ in range(rounds):
        start = time.perf_counter()
        plans = make_plans(PLAN_GRID, multirun=True)
        planning.append(time.perf_counter() - start)
    trial = []  # a tuning trial after its method's first: its cell planned by the command's Planner
    with Composer() as composer:
        planner = Planner(None)
        planner.plan(composer, ["pooling=lp", "seed=100", "lr=0.05", "weight_decay=0.0005", "skip_test=true"])
        for i in range(rounds * 5):
            cell = ["pooling=lp", "seed=100", f"lr={0.01 + i / 1000}", f"weight_decay={1e-4 + i / 1e5}",
                    "skip_test=true"]
            start = time.perf_counter()
            planner.plan(composer, cell)
            trial.append(time.perf_counter() - start)

    def command(*args: str, env: dict[str, str] | None = None) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        return time.perf_counter() - start

    bad_last = "seed=" + ",".join(map(str, range(199))) + ",-1"  # 200 cells, the last one out of range
    with tempfile.TemporaryDirectory() as root:
        for p in make_plans([*PLAN_GRID, f"results_dir={root}"], multirun=True):  # a finished grid, as records
            rundir.write_json(p.folder / "result.json", {"run_id": p.run_id, "status": "ok", "choices": p.choices,
                                                          "config": {}, "metrics": {}})
        times: dict[str, list[float]] = {"python": [], "imports": [], "rerun": [], "reject": [], "cfg": [],
                                         "preview": [], "preview_cold": []}
        for _ in range(rounds):
            times["python"].append(command("-c", "pass"))
            times["imports"].append(command("-c", "import runner.plan"))  # Hydra, OmegaConf: any planning command
            times["rerun"].append(command("-m", "runner", "-m", *PLAN_GRID, f"results_dir={root}"))
            times["reject"].append(command("-m", "runner", "-m", bad_last, f"results_dir={root}"))
            times["cfg"].append(command("-m", "runner", "--cfg", "job"))
            with tempfile.TemporaryDirectory() as fresh:  # the grid's preview before any of it ran
                preview = ("-m", "runner", "-m", *PLAN_GRID, f"results_dir={fresh}", "--dry-run")
                times["preview"].append(command(*preview))  # the record (runner/facts.py) written by the above
                times["preview_cold"].append(command(*preview, env=os.environ | {"RUNNER_CACHE_DIR": fresh}))
    best = {k: min(v) for k, v in times.items()}
    figures = {"plan_200_cells_s": min(planning), "plan_rerun_completed_200_s": best["rerun"],
               "plan_reject_200_last_bad_s": best["reject"], "plan_cfg_job_s": best["cfg"] - best["python"],
               "plan_python_start_s": best["python"], "plan_imports_s": best["imports"] - best["python"],
               "plan_cells": len(plans), "plan_trial_s": min(trial), "plan_preview_200_s": best["preview"],
               "plan_preview_200_no_record_s": best["preview_cold"]}
    print(f"\nplanning `-m {' '.join(PLAN_GRID)}` ({len(plans)} cells) in-process: {figures['plan_200_cells_s']:.2f} s "
          f"(target <= 2)\nthe whole command, each including the interpreter and its imports "
          f"(runner.plan {best['imports']:.2f} s; torch, which a run imports, 1.5 s more):\n"
          f"  re-running it when every run is complete: {best['rerun']:.2f} s (target <= 4)\n"
          f"  rejecting a 200-cell grid whose last cell is bad: {best['reject']:.2f} s (target <= 2)\n"
          f"  previewing it (--dry-run) before any run: {best['preview']:.2f} s (target < 1); with no record of "
          f"the code and configs (runner/facts.py): {best['preview_cold']:.2f} s\n"
          f"--cfg job after the interpreter starts: {figures['plan_cfg_job_s']:.2f} s (target <= 2; "
          f"the interpreter alone {best['python']:.2f} s)\n"
          f"a tuning trial's plan after its method's first: {min(trial) * 1e3:.0f} ms (target <= 100)")
    return figures


def records_section(rounds: int) -> dict[str, float]:
    """The cost of one run's finish (its rows into runs.csv and epochs.csv) in a results root that already
    holds 10 and 1,000 runs of 12 epochs each, and a full rebuild from 1,000 folders (what every finish did)."""
    import tempfile

    import pandas as pd

    from runner import records, rundir

    plan = make_plan([])
    base = {"choices": plan.choices, "config": {**dict(plan.cfg.items()), "teacher": None}, "status": "ok",
            "metrics": {f"test_m{i}": 0.5 for i in range(30)}}
    base = json.loads(json.dumps(base, default=lambda o: None))
    epochs = pd.DataFrame({"epoch": range(1, 13), **{f"test_m{i}": [0.5] * 12 for i in range(30)}})

    def add(root: Path, i: int) -> dict:
        rid = f"{i:010x}"
        record = base | {"run_id": rid, "config": base["config"] | {"seed": i}}
        rundir.write_json(root / "runs" / rid / "result.json", record)
        records.write_csv(root / "runs" / rid / "epochs.csv", epochs)
        return record

    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (10, 1000):
            root = Path(tmp) / str(n)
            for i in range(n):
                add(root, i)
            records.rebuild_tables(root)
            times = []
            for r in range(max(rounds, 3) * 3):
                record = add(root, n + r)
                times.append(timed(lambda: records.update_tables(root, record)))
            figures[f"records_finish_at_{n}_ms"] = min(times) * 1e3
        figures["records_rebuild_at_1000_ms"] = min(timed(lambda: records.rebuild_tables(Path(tmp) / "1000"))
                                                    for _ in range(2)) * 1e3
    figures["records_finish_1000_over_10"] = figures["records_finish_at_1000_ms"] / figures["records_finish_at_10_ms"]
    print(
        f"\none finish (rows appended to runs.csv and epochs.csv): {figures['records_finish_at_10_ms']:.1f} ms with 10 "
        f"runs, {figures['records_finish_at_1000_ms']:.1f} ms with 1,000 (ratio "
        f"{figures['records_finish_1000_over_10']:.2f}, target <= 1.5); a rebuild from 1,000 folders "
        f"{figures['records_rebuild_at_1000_ms']:.0f} ms"
    )
    return figures
