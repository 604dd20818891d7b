"""What the summary says about tuned comparisons (``python -m runner.tune``) and about speed to a target.

- ``by_stage``: the runs a comparison is about: by default the *final* runs of tuned studies (each method at
  its chosen setting); the trials are the search, not the result.
- ``tuning``: per study, the budget used, the chosen setting, whether the best-so-far was still improving,
  and how much the validation metric moved with each tuned setting (Spearman's rank correlation, scipy).
- ``time_to_target``: per group, how many runs reached a validation accuracy and after how many epochs and
  training seconds (from epochs.csv).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats as sps

from runner import rundir
from runner.metrics import is_rate

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
            rundir.report_corrupt(path, f"not a table of python -m runner.tune ({' '.join(str(e).split()[:12])})")
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
    """Every root's tune/spaces.csv (each study's ranges); a bound that is not a number is left out (as a `choices`
    setting is, which has none)."""
    spaces = _read_tables(roots, "spaces.csv", {"study", "setting"})
    for bound in ("low", "high"):
        if bound in spaces:
            spaces[bound] = pd.to_numeric(spaces[bound], errors="coerce")
    return spaces


def read_sequential(roots: Iterable[Path]) -> list[dict]:
    """Every root's sequential.json: the decisions of a study whose final seeds were added until decided."""
    out = []
    for root in roots:
        path = root / "sequential.json"
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict) or not isinstance(saved.get("rows"), list) or "metric" not in saved:
                raise ValueError("it has no metric and rows")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            rundir.report_corrupt(path, f"not the tuner's sequential decisions ({' '.join(str(e).split()[:12])})")
            continue
        out.append(saved)
    return out


def sequential_verdicts(comparison: pd.DataFrame, saved: list[dict]) -> pd.DataFrame:
    """The verdicts of a sequential study in place of the fixed-n rule's, on the rows it decided: its p-values
    assume the seeds were fixed in advance, which they were not."""
    if comparison.empty:
        return comparison
    comparison = comparison.copy()
    for study in saved:
        for r in study["rows"]:
            hit = ((comparison.metric == study["metric"]) & (comparison.method == r.get("method"))
                   & (comparison.baseline == r.get("baseline")))
            if hit.sum() != 1:
                continue
            how = (f"sequential: looks at {', '.join(map(str, study.get('looks', [])))} seeds, the sign test's exact "
                   f"bounds and the t-test with Lan–DeMets α-spending, Bonferroni over {study.get('comparisons')}; "
                   "the fixed-n p-values beside it are descriptive")
            decision = r.get("decision")
            comparison.loc[hit, "verdict"] = (f"{decision} at {r.get('seeds')} seeds ({how})" if decision != "undecided"
                                              else f"undecided at {r.get('seeds')} seeds, the most allowed ({how})")
    return comparison


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
    for r in ranges[ranges["low"].notna() & ranges["high"].notna()].itertuples():  # `choices` have no bounds
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


UNFINISHED = 0.2  # a best trial in this last share of the budget: the search was still finding better settings
TREND = 0.8  # |Spearman ρ| from which a setting's trend over the trials is flagged when its best sits at the end


def spearman_exact(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's ρ of ``x`` and ``y`` and its two-sided permutation p-value: exact over every pairing up to 8 trials
    (8! = 40320), 9999 seeded random pairings above (scipy.stats.permutation_test on the ranks). With t trials and
    no ties, |ρ| = 1 has p = 2/t!; scipy's spearmanr gives an asymptotic p that reads 0 there."""
    rx, ry = sps.rankdata(x), sps.rankdata(y)

    def rho(a: np.ndarray, axis: int = -1) -> np.ndarray:  # Pearson's r of the ranks, over many pairings at once
        a = a - a.mean(axis=axis, keepdims=True)
        b = ry - ry.mean()
        return (a * b).sum(axis=axis) / np.sqrt((a ** 2).sum(axis=axis) * (b ** 2).sum())

    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan"), float("nan")
    exact = len(x) <= 8
    res = sps.permutation_test((rx,), rho, permutation_type="pairings", vectorized=True, alternative="two-sided",
                               n_resamples=np.inf if exact else 9999, rng=np.random.default_rng(0))
    return float(res.statistic), float(res.pvalue)


def _optimism(final: pd.DataFrame, metric: str, chosen_value: float | None, maximize: bool) -> tuple[float, int]:
    """How much better the chosen trial's validation score is than the same setting's mean over the final seeds
    (positive: the choice looked better than it is; a winner's curse of picking the best of noisy trials)."""
    if chosen_value is None or final.empty or metric not in final:
        return float("nan"), 0
    v = pd.to_numeric(final[metric], errors="coerce").dropna()
    if v.empty:
        return float("nan"), 0
    gap = chosen_value - float(v.mean())
    return (gap if maximize else -gap), len(v)


def tuning(trials: pd.DataFrame, studies: Iterable[str] | None = None, spaces: pd.DataFrame | None = None,
           finals: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(chosen settings, sensitivity) of the studies (all in trials.csv when None).

    Per study: ``converged`` is False when the best trial came in the last fifth of the budget; with the final runs
    (``finals``, rows of runs.csv with their ``study``), ``selection_optimism`` is the chosen validation score minus
    the final seeds' mean at that setting (in the metric's better direction); with the studies' ``spaces``,
    ``at_range_edge`` names each chosen value at a bound of its range, and each setting whose trend over the trials
    points past the end of the range it explored (|ρ| >= 0.8 with the best trial at that end)."""
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
        maximize = t["direction"].iloc[0] == "maximize"
        curve = curves[curves.study == study].sort_values("trial")["best"].to_numpy()
        improved = [int(n) for n, a, b in zip(t.sort_values("trial")["trial"], np.r_[np.nan, curve[:-1]], curve)
                    if np.isfinite(b) and not (np.isfinite(a) and a == b)]
        budget = int(t["budget"].iloc[0])
        row = {"method": t["method"].iloc[0], "study": study, "budget": budget,
               "trials": len(t), "complete": int(counts.get("complete", 0)), "pruned": int(counts.get("pruned", 0)),
               "failed": int(counts.get("fail", 0)), "metric": t["metric"].iloc[0],
               "chosen_trial": int(pick["trial"].iloc[0]) if len(pick) else None,
               "chosen_value": float(pick["value"].iloc[0]) if len(pick) else None,
               "last_improvement": improved[-1] if improved else None}
        row["converged"] = bool(improved) and improved[-1] < budget - math.ceil(UNFINISHED * budget)
        mine = pd.DataFrame() if finals is None or "study" not in finals else finals[
            finals["study"].fillna("").astype(str).str.split(";").map(lambda v: study in v)]
        row["selection_optimism"], row["final_seeds"] = _optimism(mine, row["metric"], row["chosen_value"], maximize)
        row |= {p: pick[p].iloc[0] for p in params if len(pick) and pd.notna(pick[p].iloc[0])}
        at_bound = (range_edges(row, spaces[spaces["study"] == study])
                    if spaces is not None and not spaces.empty and len(pick) else "")
        edges = [at_bound]
        done = t[t["state"] == "complete"]
        for p in params:
            x = done[[p, "value"]].dropna()
            if len(x) < 3 or x[p].nunique() < 2 or not pd.api.types.is_numeric_dtype(x[p]):
                continue
            rho, pval = spearman_exact(x[p].to_numpy(dtype=float), x["value"].to_numpy(dtype=float))
            toward = np.sign(rho) * (1 if maximize else -1)  # +1: better toward larger values of the setting
            best = x["value"].max() if maximize else x["value"].min()
            at_best = x.loc[x["value"] == best, p].astype(float)
            end = x[p].max() if toward > 0 else x[p].min()
            past = "high" if toward > 0 else "low"
            trend = abs(rho) >= TREND and bool((at_best == float(end)).any())
            if trend and f"{p} ({past})" not in at_bound:  # a choice at the bound it points past is said once
                edges.append(f"{p} (trend past {past}: ρ = {rho:+.2f}, p = {pval:.2g})")
            sens_rows.append({"method": row["method"], "setting": p, "trials": len(x), "spearman_rho": rho,
                              "p_exact": pval, "value_range": float(x["value"].max() - x["value"].min()),
                              "trend_past_range": past if trend else ""})
        if spaces is not None:
            row["at_range_edge"] = ", ".join(e for e in edges if e)
        chosen_rows.append(row)
    return pd.DataFrame(chosen_rows), pd.DataFrame(sens_rows)


def opening(chosen: pd.DataFrame) -> list[str]:
    """The report's first paragraph on tuning: per method, whether the search converged, the selection optimism and
    what to widen."""
    out = []
    for r in chosen.itertuples():
        if r.chosen_trial is None or pd.isna(r.chosen_trial):
            out.append(f"{r.method}: no trial completed, no chosen setting.")
            continue
        state = (f"converged (best at trial {int(r.chosen_trial)} of trials 0–{r.budget - 1})" if r.converged else
                 f"not converged: the best came at trial {int(r.last_improvement)} of trials 0–{r.budget - 1} (the "
                 "last fifth of the budget); raise tune.trials")
        scale, unit = (100, " points") if is_rate(r.metric) else (1, "")
        opt = (f"; selection optimism {r.selection_optimism * scale:+.2g}{unit} (chosen {r.metric} "
               f"{r.chosen_value:.4g} against the mean of its {int(r.final_seeds)} final seeds)"
               if np.isfinite(r.selection_optimism) else "")
        edge = f"; at or past the range: {r.at_range_edge} (widen it)" if getattr(r, "at_range_edge", "") else ""
        out.append(f"{r.method}: {state}{opt}{edge}.")
    return out


def time_to_target(ok: pd.DataFrame, epochs: pd.DataFrame, target: float, metric: str = "val_acc") -> pd.DataFrame:
    """Per group: runs that reached ``metric >= target`` at some epoch, and the median epochs, training seconds
    (wall) and training CPU seconds they needed (those of the epochs up to and including the first that reached it;
    CPU seconds are comparable across a shared machine's load, wall seconds are not)."""
    if epochs.empty or metric not in epochs or "run_id" not in epochs:
        return pd.DataFrame()
    rows = []
    for group, g in ok.groupby("group", sort=False):
        reached_epochs, reached_seconds, reached_cpu = [], [], []
        for rid in g["run_id"]:
            e = epochs[epochs["run_id"] == rid].sort_values("epoch")
            if e.empty:
                continue
            hit = np.flatnonzero(e[metric].to_numpy(dtype=float) >= target)
            if len(hit):
                reached_epochs.append(int(e["epoch"].iloc[hit[0]]))
                reached_seconds.append(float(e["train_s"].iloc[: hit[0] + 1].sum()) if "train_s" in e else np.nan)
                reached_cpu.append(float(e["train_cpu_s"].iloc[: hit[0] + 1].sum(min_count=hit[0] + 1))
                                   if "train_cpu_s" in e else np.nan)
        rows.append({"group": group, "target": f"{metric} >= {target:g}", "runs": len(g),
                     "reached": len(reached_epochs),
                     "median_epochs": float(np.median(reached_epochs)) if reached_epochs else np.nan,
                     "median_train_s": float(np.nanmedian(reached_seconds)) if reached_epochs else np.nan,
                     "median_train_cpu_s": (float(np.nanmedian(reached_cpu)) if np.isfinite(reached_cpu).any()
                                            else np.nan)})
    return pd.DataFrame(rows)
