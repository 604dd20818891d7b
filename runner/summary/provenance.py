"""How the numbers of a report were made, from the runs' own records: the commands, seeds, data, code, versions,
machine and the compute each stage used. It heads report.md and every export, so that a table pasted into a paper
carries what reproduces it."""
from __future__ import annotations

import argparse
import math

import pandas as pd


def _values(frame: pd.DataFrame, column: str) -> list[str]:
    if column not in frame:
        return []
    return [str(v) for v in dict.fromkeys(frame[column].dropna()) if str(v) not in ("", "nan")]


def _listed(frame: pd.DataFrame, column: str, missing: str = "not recorded") -> str:
    values = _values(frame, column)
    return ", ".join(f"`{v}`" for v in values) if values else missing


def seed_ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` as ``0-2, 5, 7-8``."""
    parts, ordered = [], sorted(set(seeds))
    for s in ordered:
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def _int(value: object) -> str:
    try:
        return str(int(float(value)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"


def compute(runs: pd.DataFrame) -> list[tuple[str, int, float, float]]:
    """(stage, runs, CPU seconds, wall seconds) per stage (tuning trials, final runs, plain runs), from the records;
    a record without CPU seconds (made before they were recorded) counts its wall time from its training time."""
    stage = runs["stage"].fillna("") if "stage" in runs else pd.Series("", index=runs.index)
    wall = runs["wall_seconds"] if "wall_seconds" in runs else pd.Series(math.nan, index=runs.index)
    wall = wall.fillna(runs["train_seconds"] if "train_seconds" in runs else 0.0)
    cpu = runs["cpu_seconds"] if "cpu_seconds" in runs else pd.Series(math.nan, index=runs.index)
    out = []
    for name, mask in (("tuning trials", stage.str.contains("tune")), ("final runs", stage.str.contains("final")),
                       ("runs", stage == "")):
        if mask.any():
            out.append((name, int(mask.sum()), float(cpu[mask].sum(min_count=1)), float(wall[mask].sum())))
    return out


def provenance(runs: pd.DataFrame, ok: pd.DataFrame, args: argparse.Namespace,
               summary_seconds: tuple[float, float] | None = None) -> list[str]:
    """The lines of the provenance header: ``runs`` are every run read (of every stage), ``ok`` those in the
    statistics; ``summary_seconds`` the summary's own (CPU, wall) seconds."""
    seeds = [f"{g}: {seed_ranges([int(s) for s in frame.seed])} ({len(frame)})"
             for g, frame in ok.groupby("group", sort=False)] if "seed" in ok else []
    sizes = sorted({f"{_int(r.n_train)} / {_int(r.n_val)} / {_int(r.n_test)}"
                    for r in ok.itertuples() if hasattr(r, "n_train")})
    commits = _values(ok, "git_commit")
    dirty = any(c.endswith("-dirty") for c in commits)
    selection = ("each run's last epoch" if args.select == "last" else
                 "each run's epoch of best validation accuracy (--select best_val)")
    lines = [
        "## How these numbers were made",
        "",
        f"- Commands: {_listed(runs, 'command', 'not recorded (runs made before the runner recorded its command)')}",
        f"- Seeds per method: {'; '.join(seeds) or 'not recorded'}",
        f"- Data: {_listed(ok, 'dataset')}; train / validation / test images {', '.join(sizes) or 'not recorded'}; "
        f"model {_listed(ok, 'model')}; epochs {_listed(ok, 'epochs')}; batch size {_listed(ok, 'batch_size')}",
        f"- Metrics from: {selection}",
        f"- Code: git commit {', '.join(f'`{c}`' for c in commits) or 'not recorded'}"
        + (" (uncommitted changes: the commit alone does not reproduce it)" if dirty else ""),
        f"- Versions: {_listed(ok, 'versions', 'torch ' + _listed(ok, 'torch_version'))}",
        f"- Machine: device {_listed(ok, 'device')}; threads {_listed(ok, 'threads')}; "
        f"{len(_values(ok, 'host'))} host(s)",
    ]
    cost = [f"{name} {n} runs, {cpu:,.0f} CPU-s, {wall:,.0f} s wall" if math.isfinite(cpu) else
            f"{name} {n} runs, {wall:,.0f} s wall (CPU time not recorded)" for name, n, cpu, wall in compute(runs)]
    if summary_seconds is not None:
        cost.append(f"this summary {summary_seconds[0]:,.1f} CPU-s, {summary_seconds[1]:,.1f} s wall")
    lines += [f"- Compute: {'; '.join(cost)}", ""]
    return lines
