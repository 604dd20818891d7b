"""``python -m runner.summary RESULTS``: what a sweep found, and whether it is real.

Loads the runs (``load``), keeps the ones asked for (``--where``, at-chance runs out unless
``--include-at-chance``), groups them by every setting except the seed (typed columns, a distillation
run by its teacher's run id however the teacher was named), and writes into ``--out`` (default: the
results root it reads):

- ``summary.csv``: per group and metric, n, mean, sd and a bootstrap CI over seeds;
- ``comparison.csv`` (with ``--baseline axis=value``): each other method of that axis against the
  baseline within each task, paired by seed: mean difference, BCa bootstrap CI, exact sign-flip p-value,
  Holm over the report's comparisons, effect size d_z, the verdict (runner/stats.py) and, with
  ``--rope``, the Bayesian probabilities of better / equivalent / worse;
- ``ranks.csv``: ranks per task over common seeds, mean rank, Borda count, IQM and probability of
  improvement with stratified bootstrap CIs (``probability_of_improvement.csv``), the Friedman test and
  Wilcoxon–Holm post-hoc p-values;
- ``plots/``: paired differences, probability of improvement, critical-difference diagram (only when
  Friedman rejects), learning curves, reliability diagrams with bin counts and ECE;
- ``report.md``: a paragraph that answers in words, then the tables and plots.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from runner import records, stats, summary_tune
from runner.metrics import higher_is_better, is_rate

KEY_METRICS = ("test_acc", "test_nll", "test_ece", "test_ece_ts", "test_brier")
AXES = ("pooling", "global_pool", "norm", "loss", "model", "optim", "dataset")
# How a teacher was named (settings, run id, checkpoint) is not what it is: its run id is, kept as teacher_run_id.
TEACHER_NAMING = ("teacher", "teacher.overrides", "teacher.run_id", "teacher.checkpoint", "teacher_test_acc")
NOT_CONFIG = (set(records.BOOKKEEPING) | {"seed", "folder", "at_chance", "best_epoch"} | set(TEACHER_NAMING)
              | set(records.STAGE_COLUMNS))


class SummaryError(Exception):
    """A usage mistake: printed as one line, exit status 2."""


# ---------------------------------------------------------------- reading and choosing runs

def run_folders(paths: Iterable[Path]) -> list[Path]:
    """Run folders from results roots (holding ``runs/``) or run folders themselves; a runs.csv table stands for
    itself (read by ``load``)."""
    out: list[Path] = []
    for p in paths:
        if p.suffix == ".csv" and p.is_file():
            out.append(p)
        elif (p / "result.json").exists():
            out.append(p)
        elif (p / "runs").is_dir():
            out += sorted(f for f in (p / "runs").iterdir() if (f / "result.json").exists())
        else:
            raise SummaryError(f"{p}: neither a results root (with runs/) nor a run folder (with result.json)")
    return out


def load(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(runs, epochs, metric columns): one row per readable run (a corrupt one is reported and skipped)."""
    rows, epochs, metrics = [], [], set()
    for folder in folders:
        if folder.suffix == ".csv":  # a runs.csv table (a colleague's, or docs/examples): its rows as they are
            table = pd.read_csv(folder)
            if not {"run_id", "status", "seed"} <= set(table.columns):
                raise SummaryError(f"{folder}: not a runs.csv written by this runner (needs run_id, status and seed)")
            rows += [r | {"folder": ""} for r in table.to_dict("records")]
            metrics |= {c for c in table.columns if (c.startswith(("test_", "val_", "ood_", "best_test_", "best_val_"))
                        or c == "temperature") and c not in records.BOOKKEEPING and pd.api.types.is_numeric_dtype(table[c])}
            if (folder.parent / "epochs.csv").is_file():
                epochs.append(pd.read_csv(folder.parent / "epochs.csv"))
            continue
        record = records.read_result(folder)
        if record is None:
            continue
        row = records.row(record) | {"folder": str(folder)}
        metrics |= {k for k, v in row.items() if (k.startswith(("test_", "val_", "ood_", "best_test_", "best_val_"))
                                                   or k == "temperature") and k not in records.BOOKKEEPING
                    and isinstance(v, (int, float, type(None)))}
        rows.append(row)
        frame = records.read_epochs(folder)
        if frame is not None:
            epochs.append(frame.assign(run_id=record["run_id"]))
    if not rows:
        raise SummaryError("no runs found: run a sweep first, e.g. python -m runner -m pooling=max,avg seed=0,1,2")
    runs = pd.DataFrame(rows)
    for c in runs.columns:  # lists (model.widths) as text, so that they can be grouped on
        if runs[c].dtype == object:
            runs[c] = runs[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    runs["at_chance"] = [flag is True or flag == 1 if isinstance(flag, (bool, int, float)) and not pd.isna(flag)
                         else _at_chance(r) for flag, (_, r) in zip(runs.get("at_chance", [None] * len(runs)), runs.iterrows())]
    return runs, pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame(), sorted(metrics)


def _at_chance(row: pd.Series) -> bool:
    """For runs recorded before ``at_chance`` existed: the same rule, from the dataset's classes and n_test."""
    from datasets import SPECS  # here: only tables from before at_chance need it, and it imports torch

    acc, n, name = row.get("test_acc"), row.get("n_test"), row.get("dataset")
    if name not in SPECS or not isinstance(acc, (int, float)) or pd.isna(acc) or pd.isna(n):
        return False
    return stats.at_chance(float(acc), SPECS[name].num_classes, int(n))


def parse_where(items: list[str], columns: Iterable[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or key not in columns:
            raise SummaryError(f"--where {item}: expected column=value[,value...] with a column of runs.csv, "
                               f"e.g. pooling=max,softpool or dataset=cifar10")
        out[key] = values.split(",")
    return out


def select(runs: pd.DataFrame, where: dict[str, list[str]]) -> pd.DataFrame:
    for key, values in where.items():
        runs = runs[runs[key].map(_text).isin(values)]
    return runs


def _text(v: Any) -> str:
    """A cell as a user writes it: 3.0 as 3.0, 64 as 64 (not 64.0), missing as 'none'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none"
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if not isinstance(v, bool) else str(v)
    return str(v)


def config_columns(runs: pd.DataFrame, metrics: list[str]) -> list[str]:
    """The settings that vary across the runs (a missing value counts as a value), the seed aside."""
    cols = [c for c in runs.columns if c not in NOT_CONFIG and c not in metrics
            and not c.startswith(("train_", "best_"))]
    return [c for c in cols if runs[c].map(_text).nunique() > 1]


def group_key(runs: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One text key per run from typed columns, a missing value kept distinct from every value. An option's
    setting (``pooling.p``) is named only where it varies among the runs of one option; elsewhere the option's
    name says it all."""
    def informative(c: str) -> bool:
        axis = c.split(".")[0]
        if "." not in c or axis not in runs:
            return True
        return bool((runs.groupby(runs[axis].map(_text))[c].agg(lambda v: v.map(_text).nunique()) > 1).any())

    shown = [c for c in columns if informative(c)]
    if not shown:
        return pd.Series("all runs", index=runs.index)
    return runs[shown].apply(lambda r: " ".join(_label_part(c, v) for c, v in r.items() if _label_part(c, v)), axis=1)


def _label_part(column: str, value: Any) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    if missing and "." in column:  # a hyperparameter the option does not have: nothing to say
        return ""
    if column == "teacher_run_id":
        return "" if missing else f"teacher={value}"
    return f"{column}={_text(value)}"


# ---------------------------------------------------------------- the paired comparison

def method_columns(axis: str, columns: list[str]) -> list[str]:
    """The axis, its own hyperparameters, and for a loss the teacher: what defines a method of that axis."""
    return [c for c in columns if c == axis or c.startswith(axis + ".") or (axis == "loss" and c == "teacher_run_id")]


def compare(ok: pd.DataFrame, columns: list[str], metrics: list[str], baseline: str, main_metric: str,
            rope: float | None) -> pd.DataFrame:
    """comparison.csv: every method of the baseline's axis against the baseline, per task, paired by seed."""
    axis, _, value = baseline.partition("=")
    methods = method_columns(axis, columns)
    context = [c for c in columns if c not in methods]
    ok = ok.assign(_method=group_key(ok, methods), _task=group_key(ok, context))
    rows = []
    for task, group in ok.groupby("_task", sort=False):
        base = group[group[axis].map(_text) == value]
        if base.empty:
            continue
        if base["_method"].nunique() > 1:
            raise SummaryError(f"--baseline {baseline} matches several methods in {task}: "
                               f"{', '.join(sorted(base['_method'].unique()))}; add --where to keep one")
        for method, other in group[group[axis].map(_text) != value].groupby("_method", sort=False):
            pairs = base.merge(other, on="seed", suffixes=("_base", ""))
            unpaired = sorted(set(base.seed) ^ set(other.seed))
            for m in metrics:
                if m not in pairs or f"{m}_base" not in pairs:
                    continue
                r = stats.paired((pairs[m] - pairs[f"{m}_base"]).to_numpy(dtype=float))
                row = {"task": task, "method": method, "baseline": baseline, "metric": m,
                       "higher_is_better": higher_is_better(m), "n_pairs": r.n, "diff_mean": r.mean,
                       "diff_ci_low": r.ci_low, "diff_ci_high": r.ci_high, "p_sign_flip": r.p, "effect_dz": r.effect,
                       "diff_sd": r.sd, "unpaired_seeds": " ".join(map(str, unpaired))}
                if rope is not None:
                    left, eq, right = stats.bayes_correlated_t(
                        (pairs[m] - pairs[f"{m}_base"]).to_numpy(dtype=float), rope)
                    better_is_right = higher_is_better(m) is not False
                    row |= {"p_better": right if better_is_right else left, "p_equivalent": eq,
                            "p_worse": left if better_is_right else right}
                rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    table["verdict"] = ""
    for m, idx in table.groupby("metric").groups.items():
        sub = table.loc[idx]
        table.loc[idx, "p_holm"] = stats.holm(sub["p_sign_flip"])
        comparisons = int(sub["p_sign_flip"].notna().sum()) or 1
        percent = is_rate(m)
        for i in idx:
            r = table.loc[i]
            result = stats.Paired(int(r.n_pairs), r.diff_mean, r.diff_ci_low, r.diff_ci_high, r.p_sign_flip,
                                  r.effect_dz, r.diff_sd)
            table.loc[i, "verdict"] = stats.verdict(result, r.p_holm, higher_is_better(m), comparisons,
                                                    scale=100 if percent else 1, unit=" points" if percent else "")
    return table


# ---------------------------------------------------------------- ranks across tasks

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
    if not info["tasks_used"]:
        return pd.DataFrame(), info
    used = info["tasks_used"]
    hib = higher_is_better(metric) is not False
    matrix = np.array([[scores[n][t].mean() for n in names] for t in used])  # tasks × methods
    ranks = pd.DataFrame(matrix, index=used, columns=names).rank(axis=1, ascending=not hib, method="average")
    table = pd.DataFrame({"method": names, "mean_rank": ranks.mean().to_numpy(),
                          "borda": (len(names) - ranks).sum().to_numpy(), "tasks": len(used)})
    for n in names:  # rliable's aggregates with stratified bootstrap CIs over runs within tasks
        runs_n = [scores[n][t] for t in used]
        table.loc[table.method == n, "iqm"] = stats.iqm(np.concatenate(runs_n))
        lo, hi = stats.stratified_bootstrap_ci([runs_n], lambda s: stats.iqm(np.concatenate(s)), n_resamples=1000)
        table.loc[table.method == n, ["iqm_ci_low", "iqm_ci_high"]] = lo, hi
    swiss, swiss_se = stats.swiss_expected_scores(matrix if hib else -matrix, n_sims=2000)
    table["swiss_score"], table["swiss_score_se"] = swiss, swiss_se  # expected wins of a Swiss contest over the tasks
    info["friedman_p"] = stats.friedman_p(matrix if hib else -matrix)
    info["posthoc"] = pd.DataFrame(stats.wilcoxon_holm(matrix), index=names, columns=names) if len(used) >= 2 else None
    info["ranks"] = dict(zip(names, ranks.mean().to_numpy()))
    poi = pd.DataFrame(index=names, columns=names, dtype=float)
    pairs = []
    for a in names:
        for b in names:
            x, y = [scores[a][t] for t in used], [scores[b][t] for t in used]
            better, worse = (x, y) if hib else (y, x)
            poi.loc[a, b] = stats.probability_of_improvement(better, worse)
            if a != b:  # with a stratified bootstrap CI over the runs of each task (rliable)
                lo, hi = stats.stratified_bootstrap_ci([better, worse], stats.probability_of_improvement, n_resamples=500)
                pairs.append({"method": a, "other": b, "p_improvement": poi.loc[a, b], "ci_low": lo, "ci_high": hi})
    info["poi"], info["poi_table"] = poi, pd.DataFrame(pairs)
    return table.sort_values(["mean_rank", "borda"], ascending=[True, False]).reset_index(drop=True), info


# ---------------------------------------------------------------- the report

def answer(comparison: pd.DataFrame, metric: str, baseline: str | None) -> str:
    """The report's opening paragraph: each comparison of the main metric in one sentence."""
    if comparison.empty:
        return (f"No comparison was asked for: add --baseline axis=value (e.g. --baseline pooling=max) to compare "
                f"methods on {metric}.")
    c = comparison[comparison.metric == metric]
    scale, unit = (100, " points") if is_rate(metric) else (1, "")
    sentences = []
    for r in c.itertuples():
        ci = (f" [{r.diff_ci_low * scale:+.2g}, {r.diff_ci_high * scale:+.2g}]" if np.isfinite(r.diff_ci_low) else "")
        n = "" if r.verdict.startswith("n = ") else f"n = {r.n_pairs}, "
        where = "" if r.task == "all runs" else f" on {r.task}"
        sentences.append(f"{r.method} vs {baseline}{where}: {r.diff_mean * scale:+.2g}{unit}{ci}, {n}{r.verdict}.")
    return " ".join(sentences)


def _fmt(mean: float, lo: float, hi: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}] (n={n})" if np.isfinite(lo) else f"{mean:.4f} (n={n})"


def summarize(ok: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """summary.csv: per group and metric, n, mean, sd and the bootstrap CI of the mean over seeds."""
    out = []
    for g, group in ok.groupby("group", sort=False):
        for m in metrics:
            v = group[m].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            lo, hi = stats.bootstrap_ci(v)
            out.append({"group": g, "metric": m, "higher_is_better": higher_is_better(m), "n": len(v),
                        "mean": float(v.mean()) if len(v) else np.nan,
                        "sd": float(v.std(ddof=1)) if len(v) > 1 else np.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(out)


def overview(summary: pd.DataFrame, metrics: list[str], sort_by: str, references: list[tuple[str, str, float]]) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    for r in summary.itertuples():
        rows.setdefault(r.group, {"group": r.group})
        rows[r.group][r.metric] = _fmt(r.mean, r.ci_low, r.ci_high, r.n)
        if r.metric == sort_by:
            rows[r.group]["_key"] = r.mean
    for name, m, v in references:
        rows[f"{name} (published)"] = {"group": f"{name} (published)", m: f"{v:.4f}", "_key": v if m == sort_by else np.nan}
    table = pd.DataFrame(rows.values())
    table = table.sort_values("_key", ascending=higher_is_better(sort_by) is False, na_position="last")
    return table[["group"] + [m for m in metrics if m in table]]


def export(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "tex":
        return table.to_latex(index=False, float_format="%.4g", escape=True)
    if fmt == "md":
        return table.to_markdown(index=False, floatfmt=".4g")
    return table.to_csv(index=False)


def tuning_lines(chosen: pd.DataFrame, sensitivity: pd.DataFrame, speed: pd.DataFrame) -> list[str]:
    """The report's sections on tuned studies and on the time to a target."""
    lines = []
    if not chosen.empty:
        lines += ["## Tuning (python -m runner.tune): the same budget for every method, chosen on validation data", "",
                  "Each method's chosen setting is its best trial on the validation metric; `last_improvement` is the "
                  "trial at which its best-so-far last rose (near the budget: the search may not have converged); "
                  "`at_range_edge` names a setting chosen within 5 % of a bound of its range (on the log scale for a "
                  "log range): widen that range before trusting the choice.", "",
                  chosen.drop(columns=["study"]).to_markdown(index=False, floatfmt=".4g"), ""]
    if not sensitivity.empty:
        lines += ["### Sensitivity: Spearman's rank correlation of the validation metric with each tuned setting", "",
                  sensitivity.to_markdown(index=False, floatfmt=".3g"), ""]
    if not speed.empty:
        lines += ["## Time to target (first epoch reaching it; training seconds up to that epoch)", "",
                  speed.to_markdown(index=False, floatfmt=".4g"), ""]
    return lines


def report(runs: pd.DataFrame, ok: pd.DataFrame, table: pd.DataFrame, comparison: pd.DataFrame, ranks: pd.DataFrame,
           info: dict[str, Any], images: list[Path], args: argparse.Namespace, metric: str,
           extra: list[str] = (), note: str = "") -> str:
    excluded = runs[runs.status != "ok"]
    chance = runs[(runs.status == "ok") & runs.at_chance] if not args.include_at_chance else runs.iloc[:0]
    lines = [f"# What the runs found ({metric}, {args.select} epoch)", "", answer(comparison, metric, args.baseline), "",
             f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in runs.status.value_counts().items())
             + f". {len(ok)} enter the statistics." + (f" ({note[0].upper()}{note[1:]}.)" if note else ""), ""]
    if len(excluded):
        lines += ["Not aggregated (did not finish):", ""] + [f"- `{r.run_id}` {r.status}: {r.error}" for r in excluded.itertuples()] + [""]
    if len(chance):
        lines += ["Left out because they ended at chance (test accuracy within 3 standard errors of 1/K; "
                  "`--include-at-chance` keeps them):", ""] + [f"- `{r.run_id}` {r.group_label}: test_acc {r.test_acc:.4f}"
                                                               for r in chance.itertuples()] + [""]
    arrow = {True: "higher is better", False: "lower is better", None: ""}[higher_is_better(metric)]
    lines += [f"## Groups (mean [95 % bootstrap CI] over seeds), sorted by {metric} ({arrow})", "",
              table.to_markdown(index=False), ""]
    if not comparison.empty:
        c = comparison[comparison.metric == metric]
        cols = [k for k in ("task", "method", "n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "p_sign_flip",
                            "p_holm", "effect_dz", "p_better", "p_equivalent", "p_worse", "verdict", "unpaired_seeds")
                if k in c]
        lines += [f"## Against {args.baseline} ({metric}; paired by seed, exact sign-flip test, Holm over "
                  f"{int(c.p_sign_flip.notna().sum())} comparisons)", "", c[cols].to_markdown(index=False, floatfmt=".4g"), ""]
    if not ranks.empty:
        fried = info.get("friedman_p", math.nan)
        if len(info["tasks_used"]) < 2 or not np.isfinite(fried):
            test = (f"Friedman test: not possible with {len(info['tasks_used'])} task(s) and {len(info['methods'])} methods "
                    "(it needs 2 tasks and 3 methods); the ranks of one task are the order of its means, not a finding.")
        else:
            test = f"Friedman test: p = {fried:.3g}" + (" (the ranks differ; the critical-difference diagram shows which)."
                                                        if fried < stats.ALPHA else " (no detectable difference in ranks; "
                                                        "no critical-difference diagram is drawn).")
        lines += [f"## Across {len(info['tasks_used'])} tasks ({metric}; ranks over the seeds every method has)", "",
                  ranks.to_markdown(index=False, floatfmt=".4g"), "", test]
        if info["tasks_skipped"]:
            lines += ["", f"Tasks without every method, not ranked: {', '.join(info['tasks_skipped'])}."]
        if info["seeds_dropped"]:
            lines += ["", f"{info['seeds_dropped']} runs on seeds that not every method has were left out of the ranks."]
        lines.append("")
    lines += list(extra) + ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in images] + [""]
    return "\n".join(lines)


def parse_reference(items: list[str]) -> list[tuple[str, str, float]]:
    out = []
    for item in items:
        name, _, rest = item.partition(":")
        metric, eq, value = rest.partition("=")
        try:
            out.append((name, metric, float(value)))
        except ValueError:
            raise SummaryError(f"--reference {item}: expected 'label:metric=value', e.g. 'pooling=max:test_acc=0.9125'") from None
        if not eq or not name:
            raise SummaryError(f"--reference {item}: expected 'label:metric=value', e.g. 'pooling=max:test_acc=0.9125'")
    return out


def main(argv: list[str] | None = None) -> int:
    from runner import summary_plots  # here: it imports matplotlib, which a run of --help never needs

    parser = argparse.ArgumentParser(prog="python -m runner.summary", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="results roots, run folders or runs.csv tables (default: results)")
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # the old spelling of a single path
    parser.add_argument("--out", type=Path, help="where to write (default: the results root read)")
    parser.add_argument("--where", nargs="+", default=[], help="keep runs whose column has one of the values, "
                        "e.g. --where pooling=max,softpool dataset=cifar10")
    parser.add_argument("--metric", default="test_acc", help="the metric to sort, compare and rank by (default %(default)s)")
    parser.add_argument("--baseline", help="axis=value to compare every other value of that axis against, e.g. pooling=max")
    parser.add_argument("--select", choices=("last", "best_val"), default="last",
                        help="the epoch whose metrics are compared: the last (default) or the best validation accuracy")
    parser.add_argument("--task", default="dataset,model", help="columns that define a task for ranks (default %(default)s)")
    parser.add_argument("--rope", type=float, help="region of practical equivalence for a Bayesian verdict, e.g. 0.005")
    parser.add_argument("--reference", nargs="+", default=[], help="a published number as a row: 'pooling=max:test_acc=0.9125'")
    parser.add_argument("--format", choices=("md", "tex", "csv"), default="csv", help="also export the comparison table")
    parser.add_argument("--include-at-chance", action="store_true", help="keep runs that ended at chance in the statistics")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--stage", choices=("final", "tune", "all"), default="final",
                        help="with python -m runner.tune's runs: compare the final runs (default), the trials, or all")
    parser.add_argument("--target", type=float, help="also report epochs and training time to reach val_acc >= this")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    paths = args.paths or [args.results or Path("results")]
    out = args.out or args.results or (paths[0].parent if paths[0].suffix == ".csv" else paths[0]
                                       if (paths[0] / "runs").is_dir() or not (paths[0] / "result.json").exists()
                                       else paths[0].parent.parent)
    try:
        if args.rope is not None and not args.rope >= 0:
            raise SummaryError(f"--rope {args.rope}: allowed: a difference >= 0 on the metric's scale, e.g. 0.005")
        runs, epochs, metrics = load(run_folders(paths))
        runs = select(runs, parse_where(args.where, runs.columns))
        runs, stage_note = summary_tune.by_stage(runs, args.stage)
        if args.target is not None and not 0 < args.target <= 1:
            raise SummaryError(f"--target {args.target}: allowed: a validation accuracy in (0, 1], e.g. 0.95")
        references = parse_reference(args.reference)
        metric = args.metric if args.select == "last" else f"best_{args.metric}"
        if metric not in runs:
            allowed = sorted(m for m in metrics if not m.startswith("best_"))
            raise SummaryError(f"--metric {args.metric}: not recorded" + (" at the best validation epoch" if args.select
                               == "best_val" else "") + f". Allowed: {', '.join(allowed)}")
        tuned = summary_tune.tuned_columns(runs) if args.stage == "final" else set()
        columns = [c for c in config_columns(runs, metrics) if c not in tuned]  # a tuned setting is the method's own
        runs["group_label"] = group_key(runs, columns)
        ok = runs[(runs.status == "ok") & (~runs.at_chance | args.include_at_chance)].copy()
        if ok.empty:
            raise SummaryError(f"none of the {len(runs)} runs can be aggregated: " + ", ".join(runs.status.unique())
                               + (" (runs at chance are left out; --include-at-chance keeps them)" if runs.at_chance.any() else ""))
        ok["group"] = ok["group_label"]
        axis = None
        if args.baseline:
            axis, eq, value = args.baseline.partition("=")
            if not eq or axis not in ok:
                raise SummaryError(f"--baseline {args.baseline}: expected axis=value with axis one of "
                                   f"{', '.join(a for a in AXES if a in ok)}")
            if value not in set(ok[axis].map(_text)):
                raise SummaryError(f"--baseline {args.baseline}: no run in the statistics has {axis}={value}. "
                                   f"Values: {', '.join(sorted(set(ok[axis].map(_text))))}")
    except SummaryError as e:
        console.print(f"error: {e}", style="red", highlight=False)
        return 2

    shown = [m for m in dict.fromkeys([metric, *(m if args.select == "last" else f"best_{m}" for m in KEY_METRICS)])
             if m in ok]
    compared = [m for m in metrics if m in ok and (m.startswith("best_") == (args.select == "best_val"))]
    summary = summarize(ok, compared)
    comparison = compare(ok, columns, compared, args.baseline, metric, args.rope) if args.baseline else pd.DataFrame()
    axis = axis or next((a for a in AXES if a in columns), None)
    ranks, info = rank(ok, columns, metric, axis, args.task.split(",")) if axis else (pd.DataFrame(), {})
    table = overview(summary, shown, metric, references)
    trials = summary_tune.read_trials([p for p in paths if (p / "runs").is_dir()])
    studies = {s for v in runs.get("study", pd.Series(dtype=object)).dropna() for s in str(v).split(";")}
    spaces = summary_tune.read_spaces([p for p in paths if (p / "runs").is_dir()])
    chosen, sensitivity = summary_tune.tuning(trials, studies, spaces) if studies else (pd.DataFrame(), pd.DataFrame())
    curves = summary_tune.best_so_far(trials[trials.study.isin(studies)]) if not chosen.empty else None
    speed = summary_tune.time_to_target(ok, epochs, args.target) if args.target is not None else pd.DataFrame()
    extra = tuning_lines(chosen, sensitivity, speed)
    images = [] if args.no_plots else summary_plots.draw(ok, epochs, comparison, info, metric, args.rope, out / "plots",
                                                         curves)
    records.write_csv(out / "summary.csv", summary)
    poi_table = info.get("poi_table", pd.DataFrame()) if info else pd.DataFrame()
    for name, frame in (("comparison", comparison), ("ranks", ranks), ("probability_of_improvement", poi_table),
                        ("tuning", chosen), ("sensitivity", sensitivity), ("time_to_target", speed)):
        if frame.empty:
            (out / f"{name}.csv").unlink(missing_ok=True)
        else:
            records.write_csv(out / f"{name}.csv", frame)
    if not comparison.empty and args.format != "csv":
        records.write_text(out / f"comparison.{args.format}", export(comparison[comparison.metric == metric], args.format))
    records.write_text(out / "report.md", report(runs, ok, table, comparison, ranks, info, images, args, metric, extra,
                                                   stage_note))

    if stage_note:
        console.print(stage_note, highlight=False)
    console.print(answer(comparison, metric, args.baseline), highlight=False)
    t = Table(title=f"{len(ok)} runs in {ok.group.nunique()} groups, by {metric} (mean [95 % bootstrap CI])")
    for c in table.columns:
        t.add_column(c, justify="left" if c == "group" else "right")
    for r in table.itertuples(index=False):
        t.add_row(*map(str, r))
    console.print(t)
    for warning in mixed_devices(ok):
        console.print(warning, style="yellow", highlight=False)
    left_out = runs[(runs.status != "ok") | (runs.at_chance & ~args.include_at_chance)]
    for r in left_out.itertuples():
        why = "at chance" if r.status == "ok" else f"{r.status}: {r.error}"
        console.print(f"  not aggregated: {r.run_id} ({why})", highlight=False)
    for title, frame in (("chosen settings (python -m runner.tune)", chosen), ("time to target", speed)):
        if not frame.empty:
            console.print(title, highlight=False)
            console.print(frame.drop(columns=["study"], errors="ignore").to_string(index=False), highlight=False)
    console.print(f"wrote {out / 'summary.csv'}, {out / 'report.md'}" + (f" and {len(images)} plots in {out / 'plots'}" if images else ""))
    return 0


def mixed_devices(ok: pd.DataFrame) -> list[str]:
    """A warning per group whose seeds ran on different device types or autocast settings: their numbers
    differ for that reason alone (the run id holds both, so such runs are different experiments)."""
    where = [c for c in ("device_type", "autocast") if c in ok]
    out = []
    for g, group in ok.groupby("group", sort=False):
        kinds = sorted({"/".join(_text(v) for v in row) for row in group[where].itertuples(index=False)}) if where else []
        if len(kinds) > 1:
            out.append(f"warning: {g} mixes runs on {', '.join(kinds)}; compare runs of one device type")
    return out


if __name__ == "__main__":
    sys.exit(main())
