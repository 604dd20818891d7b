"""What the summary says about tuned comparisons (``python -m runner.tune``) and about speed to a target.

- ``by_stage``: the runs a comparison is about: by default the *final* runs of tuned studies (each method at
  its chosen setting); the trials are the search, not the result.
- ``tuning``: per study, the budget used, the chosen setting, whether the best-so-far was still improving,
  and how much the validation metric moved with each tuned setting (Spearman's rank correlation, scipy).
- ``time_to_target``: per group, how many runs reached a validation accuracy and after how many epochs and
  training seconds (from epochs.csv).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as sps

from runner import records

TRIAL_COLUMNS = ("study", "method", "trial", "state", "value", "metric", "direction", "budget", "in_budget", "chosen",
                 "epochs_reported", "started", "finished", "duration_s")


def by_stage(runs: pd.DataFrame, stage: str) -> tuple[pd.DataFrame, str]:
    """The runs of ``stage`` (final, tune or all) and a sentence saying what was kept."""
    if stage == "all" or "stage" not in runs or not runs["stage"].notna().any():
        return runs, ""
    kept = runs[runs["stage"].fillna("").str.split("+").map(lambda s: stage in s)]
    if kept.empty:
        return runs, f"no {stage} runs: every run is compared"
    left = len(runs) - len(kept)
    what = "final runs of tuned studies (each method at its chosen setting)" if stage == "final" else "tuning trials"
    return kept, f"comparing the {len(kept)} {what}; {left} other runs left out (--stage all keeps them)"


def tuned_columns(runs: pd.DataFrame) -> set[str]:
    """The settings a study tuned: part of each method's result, not of the task its methods are compared on."""
    if "tuned" not in runs:
        return set()
    return {k for v in runs["tuned"].dropna() for k in str(v).split(",") if k}


def _read_tables(roots: Iterable[Path], name: str, required: set[str]) -> pd.DataFrame:
    """Every root's tune/<name> as one frame; a file that is not the tuner's table is reported and skipped."""
    frames = []
    for root in roots:
        path = root / "tune" / name
        if not path.is_file():
            continue
        try:
            frame = pd.read_csv(path)
            missing = required - set(frame.columns)
            if missing:
                raise ValueError(f"it lacks {', '.join(sorted(missing))}")
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            records.report_corrupt(path, f"not a table of python -m runner.tune ({' '.join(str(e).split()[:12])})")
            continue
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_trials(roots: Iterable[Path]) -> pd.DataFrame:
    """Every root's tune/trials.csv (a row per trial), typed."""
    trials = _read_tables(roots, "trials.csv", {"study", "method", "trial", "state", "value", "direction", "in_budget",
                                                "chosen"})
    if not trials.empty:
        for flag in ("in_budget", "chosen"):
            trials[flag] = trials[flag].astype(str).str.lower().eq("true")
        trials["value"] = pd.to_numeric(trials["value"], errors="coerce")
    return trials


def read_spaces(roots: Iterable[Path]) -> pd.DataFrame:
    """Every root's tune/spaces.csv (each study's ranges)."""
    return _read_tables(roots, "spaces.csv", {"study", "setting"})


EDGE = 0.05  # a chosen value this close to a bound (as a share of the range; log scale for a log range) is at its edge


def at_edge(value: float, low: float, high: float, log: bool) -> str | None:
    """"low" or "high" when ``value`` lies within EDGE of that bound of [low, high], else None."""
    if log and low > 0 and value > 0:
        value, low, high = np.log(value), np.log(low), np.log(high)
    if not high > low:
        return None
    share = (value - low) / (high - low)
    return "low" if share <= EDGE else "high" if share >= 1 - EDGE else None


def range_edges(chosen: dict, ranges: pd.DataFrame) -> str:
    """The settings of one study's ``chosen`` row at an edge of their ``ranges`` (spaces.csv rows), as "key (side)"."""
    if "low" not in ranges:
        return ""
    edges = []
    for r in ranges[ranges["low"].notna()].itertuples():  # a `choices` setting has no bounds
        value = chosen.get(r.setting)
        if not isinstance(value, (int, float, np.number)):
            continue
        side = at_edge(float(value), float(r.low), float(r.high), str(getattr(r, "log", False)).lower() == "true")
        if side:
            edges.append(f"{r.setting} ({side})")
    return ", ".join(edges)


def params_of(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c not in TRIAL_COLUMNS]


def best_so_far(trials: pd.DataFrame) -> pd.DataFrame:
    """Per study and trial number (within the budget), the best value of the trials so far (NaN until one completes)."""
    out = []
    for study, t in trials[trials["in_budget"].astype(bool)].groupby("study", sort=False):
        t = t.sort_values("trial")
        v = t["value"].where(t["state"] == "complete")
        best = v.cummax() if t["direction"].iloc[0] == "maximize" else v.cummin()
        out.append(pd.DataFrame({"study": study, "method": t["method"], "trial": t["trial"], "best": best.ffill()}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def tuning(trials: pd.DataFrame, studies: Iterable[str] | None = None,
           spaces: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(chosen settings, sensitivity) of the studies (all in trials.csv when None). With the studies' ``spaces``,
    ``at_range_edge`` names each chosen value that lies at a bound of its range: the range may be too narrow."""
    if trials.empty:
        return pd.DataFrame(), pd.DataFrame()
    if studies is not None:
        trials = trials[trials["study"].isin(set(studies))]
    params = params_of(trials)
    curves = best_so_far(trials)
    chosen_rows, sens_rows = [], []
    for study, t in trials[trials["in_budget"].astype(bool)].groupby("study", sort=False):
        counts = t["state"].value_counts()
        pick = t[t["chosen"].astype(bool)]
        curve = curves[curves.study == study].sort_values("trial")["best"].to_numpy()
        improved = [int(n) for n, a, b in zip(t.sort_values("trial")["trial"], np.r_[np.nan, curve[:-1]], curve)
                    if np.isfinite(b) and not (np.isfinite(a) and a == b)]
        row = {"method": t["method"].iloc[0], "study": study, "budget": int(t["budget"].iloc[0]),
               "trials": len(t), "complete": int(counts.get("complete", 0)), "pruned": int(counts.get("pruned", 0)),
               "failed": int(counts.get("fail", 0)), "metric": t["metric"].iloc[0],
               "chosen_trial": int(pick["trial"].iloc[0]) if len(pick) else None,
               "chosen_value": float(pick["value"].iloc[0]) if len(pick) else None,
               "last_improvement": improved[-1] if improved else None}
        row |= {p: pick[p].iloc[0] for p in params if len(pick) and pd.notna(pick[p].iloc[0])}
        if spaces is not None and not spaces.empty and len(pick):
            row["at_range_edge"] = range_edges(row, spaces[spaces["study"] == study])
        chosen_rows.append(row)
        done = t[t["state"] == "complete"]
        for p in params:
            x = done[[p, "value"]].dropna()
            if len(x) < 3 or x[p].nunique() < 2:
                continue
            if pd.api.types.is_numeric_dtype(x[p]):
                rho, pval = sps.spearmanr(x[p], x["value"])
                sens_rows.append({"method": row["method"], "setting": p, "trials": len(x), "spearman_rho": float(rho),
                                  "p": float(pval), "value_range": float(x["value"].max() - x["value"].min())})
    return pd.DataFrame(chosen_rows), pd.DataFrame(sens_rows)


def time_to_target(ok: pd.DataFrame, epochs: pd.DataFrame, target: float, metric: str = "val_acc") -> pd.DataFrame:
    """Per group: runs that reached ``metric >= target`` at some epoch, and the median epochs and training seconds
    they needed (the seconds of the epochs up to and including the first that reached it)."""
    if epochs.empty or metric not in epochs or "run_id" not in epochs:
        return pd.DataFrame()
    rows = []
    for group, g in ok.groupby("group", sort=False):
        reached_epochs, reached_seconds = [], []
        for rid in g["run_id"]:
            e = epochs[epochs["run_id"] == rid].sort_values("epoch")
            if e.empty:
                continue
            hit = np.flatnonzero(e[metric].to_numpy(dtype=float) >= target)
            if len(hit):
                reached_epochs.append(int(e["epoch"].iloc[hit[0]]))
                reached_seconds.append(float(e["train_s"].iloc[: hit[0] + 1].sum()) if "train_s" in e else np.nan)
        rows.append({"group": group, "target": f"{metric} >= {target:g}", "runs": len(g),
                     "reached": len(reached_epochs),
                     "median_epochs": float(np.median(reached_epochs)) if reached_epochs else np.nan,
                     "median_train_s": float(np.nanmedian(reached_seconds)) if reached_epochs else np.nan})
    return pd.DataFrame(rows)
