"""The statistics of a summary: per-group summaries, paired comparisons against a baseline, ranks across tasks."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from runner import across, stats
from runner.metrics import higher_is_better, is_rate
from runner.paired import PerImage
from runner.summary.load import SummaryError, _text, group_key, method_columns


def compare(ok: pd.DataFrame, columns: list[str], metrics: list[str], baseline: str, main_metric: str,
            rope: float | None, decide: str = "test") -> pd.DataFrame:
    """comparison.csv: every method of the baseline's axis against the baseline, per task, paired by seed."""
    axis, _, value = baseline.partition("=")
    methods = method_columns(axis, columns)
    context = [c for c in columns if c not in methods]
    ok = ok.assign(_method=group_key(ok, methods), _task=group_key(ok, context))
    images = PerImage(ok)
    rows = []
    for task, group in ok.groupby("_task", sort=False):
        base = group[group[axis].map(_text) == value]
        if base.empty:
            continue
        if base["_method"].nunique() > 1:
            raise SummaryError(f"--baseline {baseline} matches several methods in {task}: "
                               f"{', '.join(sorted(base['_method'].unique()))}; add --where to keep one")
        for method, other in group[group[axis].map(_text) != value].groupby("_method", sort=False):
            pairs = base.merge(other, on="seed", suffixes=("_base", "")).sort_values("seed")
            unpaired = sorted(set(base.seed) ^ set(other.seed))
            for m in metrics:
                if m not in pairs or f"{m}_base" not in pairs or higher_is_better(m) is None:
                    continue  # a measurement with no direction (the fitted temperature) has no better or worse
                d = (pairs[m] - pairs[f"{m}_base"]).to_numpy(dtype=float)
                x = images.differences(list(pairs.run_id), list(pairs.run_id_base), m) if len(d) > 1 else None
                r = stats.paired(d, stats.var_from_test_set(x) if x is not None else np.nan)
                sign = 1 if higher_is_better(m) else -1
                row = {"task": task, "method": method, "baseline": baseline, "metric": m,
                       "higher_is_better": higher_is_better(m), "n_pairs": r.n,
                       "seeds_favour_method": r.favour if sign > 0 else r.against,
                       "seeds_favour_baseline": r.against if sign > 0 else r.favour,
                       "diff_median": float(np.median(d)) if len(d) else np.nan,
                       "diff_mean": r.mean, "diff_ci_low": r.ci_low, "diff_ci_high": r.ci_high,
                       "test_set_sd": np.sqrt(r.test_var), "diff_ci_low_test": r.ci_low_test,
                       "diff_ci_high_test": r.ci_high_test, "p_sign": r.p_sign, "p_rule": r.p,
                       "effect_dz": r.effect, "diff_sd": r.sd, "unpaired_seeds": " ".join(map(str, unpaired))}
                if rope is not None:  # the Bayesian rule's posterior, with the test set's variance where known
                    left, eq, right = stats.bayes_correlated_t(d, rope, extra_var=r.test_var)
                    row |= {"p_better": right if sign > 0 else left, "p_equivalent": eq,
                            "p_worse": left if sign > 0 else right}
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    table["verdict"] = ""
    for m, idx in table.groupby("metric").groups.items():
        sub = table.loc[idx]
        table.loc[idx, "p_holm"] = stats.holm(sub["p_rule"])
        comparisons = int(sub["p_rule"].notna().sum()) or 1
        percent = is_rate(m)
        for i in idx:
            r = table.loc[i]
            if decide == "rope":
                table.loc[i, "verdict"] = stats.rope_verdict(r.p_better, r.p_equivalent, r.p_worse, rope,
                                                             scale=100 if percent else 1,
                                                             unit=" points" if percent else "")
                continue
            result = stats.Paired(int(r.n_pairs), r.diff_mean, r.diff_ci_low, r.diff_ci_high, r.p_sign, r.p_rule,
                                  r.effect_dz, r.diff_sd, 0, 0, r.test_set_sd ** 2)
            table.loc[i, "verdict"] = stats.verdict(result, r.p_holm, higher_is_better(m), comparisons,
                                                    scale=100 if percent else 1, unit=" points" if percent else "",
                                                    advise=m == main_metric)
    return table


def rank(ok: pd.DataFrame, columns: list[str], metric: str, axis: str,
         task_columns: list[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """ranks.csv and what the test across tasks found. A task counts only where every method has runs; each
    method's score in a task is its mean over the seeds that every method of that task has."""
    methods = method_columns(axis, columns)
    tasks = [c for c in task_columns if c in ok] + [c for c in columns if c not in methods and c not in task_columns]
    ok = ok.assign(_method=group_key(ok, methods), _task=group_key(ok, [c for c in tasks if c in ok]))
    names = sorted(ok["_method"].unique())
    info: dict[str, Any] = {"methods": names, "tasks_used": [], "tasks_skipped": [], "seeds_dropped": 0}
    if len(names) < 2:
        return pd.DataFrame(), info
    scores: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    for task, group in ok.groupby("_task", sort=False):
        if set(group["_method"]) != set(names):
            info["tasks_skipped"].append(task)
            continue
        common = set.intersection(*(set(g.seed) for _, g in group.groupby("_method")))
        if not common:
            info["tasks_skipped"].append(task)
            continue
        info["seeds_dropped"] += int((~group.seed.isin(common)).sum())
        info["tasks_used"].append(task)
        for name, g in group.groupby("_method"):
            scores[name][task] = g[g.seed.isin(common)].sort_values("seed")[metric].to_numpy(dtype=float)
    if len(info["tasks_used"]) < 2:  # ranks, Borda, IQM and Swiss scores of a one-round contest say nothing
        return pd.DataFrame(), info
    used = info["tasks_used"]
    hib = higher_is_better(metric) is not False
    matrix = np.array([[scores[n][t].mean() for n in names] for t in used])  # tasks × methods
    ranks = pd.DataFrame(matrix, index=used, columns=names).rank(axis=1, ascending=not hib, method="average")
    table = pd.DataFrame({"method": names, "mean_rank": ranks.mean().to_numpy(),
                          "borda": (len(names) - ranks).sum().to_numpy(), "tasks": len(used)})
    for n in names:  # rliable's aggregates with stratified bootstrap CIs over runs within tasks
        runs_n = [scores[n][t] for t in used]
        table.loc[table.method == n, "iqm"] = across.iqm(np.concatenate(runs_n))
        lo, hi = across.stratified_bootstrap_ci([runs_n], lambda s: across.iqm(np.concatenate(s)), n_resamples=1000)
        table.loc[table.method == n, ["iqm_ci_low", "iqm_ci_high"]] = lo, hi
    swiss, swiss_se = across.swiss_expected_scores(matrix if hib else -matrix, n_sims=2000)
    table["swiss_score"], table["swiss_score_se"] = swiss, swiss_se  # expected wins of a Swiss contest over the tasks
    info["friedman_p"] = across.friedman_p(matrix if hib else -matrix)
    info["posthoc"] = pd.DataFrame(across.wilcoxon_holm(matrix), index=names, columns=names)
    info["ranks"] = dict(zip(names, ranks.mean().to_numpy()))
    poi = pd.DataFrame(index=names, columns=names, dtype=float)
    pairs = []
    for a in names:
        for b in names:
            x, y = [scores[a][t] for t in used], [scores[b][t] for t in used]
            better, worse = (x, y) if hib else (y, x)
            poi.loc[a, b] = across.probability_of_improvement(better, worse)
            if a != b:  # with a stratified bootstrap CI over the runs of each task (rliable)
                lo, hi = across.stratified_bootstrap_ci(
                    [better, worse], across.probability_of_improvement, n_resamples=500
                )
                pairs.append({"method": a, "other": b, "p_improvement": poi.loc[a, b], "ci_low": lo, "ci_high": hi})
    info["poi"], info["poi_table"] = poi, pd.DataFrame(pairs)
    info["scores"] = {n: {t: scores[n][t] for t in used} for n in names}  # per method and task: the runs' scores
    return table.sort_values(["mean_rank", "borda"], ascending=[True, False]).reset_index(drop=True), info


def summarize(ok: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """summary.csv: per group and metric, n, mean, sd and the t-interval of the mean over seeds."""
    out = []
    for g, group in ok.groupby("group", sort=False):
        for m in metrics:
            v = group[m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            lo, hi = stats.t_interval(v)
            out.append({"group": g, "metric": m, "higher_is_better": higher_is_better(m), "n": len(v),
                        "mean": float(v.mean()) if len(v) else np.nan,
                        "sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)
