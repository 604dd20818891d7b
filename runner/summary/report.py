"""The words and tables of report.md: the opening answer, the groups, the comparisons, ranks and tuning."""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import stats
from runner.metrics import higher_is_better, is_rate
from runner.summary.load import SummaryError
from runner.summary.tuning import opening


def answer(comparison: pd.DataFrame, metric: str, baseline: str | None, decide: str = "test") -> str:
    """The report's opening paragraph: each comparison of the main metric in one sentence that agrees with every
    number beside it: how many seeds favour which, the mean difference with its interval (over seeds and the test
    set where the per-image predictions give it, else over seeds on this test set), the declared rule's verdict,
    and the other rule's probabilities where a ROPE was given."""
    if comparison.empty:
        return (f"No comparison was asked for: add --baseline axis=value (e.g. --baseline pooling=max) to compare "
                f"methods on {metric}.")
    c = comparison[comparison.metric == metric]
    scale, unit = (100, " points") if is_rate(metric) else (1, "")

    def interval(lo: float, hi: float) -> str:
        return f"[{lo * scale:+.2g}, {hi * scale:+.2g}]"

    sentences = []
    if decide == "test" and len(c) and c.verdict.str.startswith(("too few seeds", "not comparable")).all():
        fewest = int(c.n_pairs.max())
        need = stats.pairs_needed(stats.ALPHA, max(1, int(c.p_rule.notna().sum())))
        sentences.append(f"Exploratory: no comparison here can be decided; with {fewest} paired seeds the rule's "
                         f"smallest p is {stats.smallest_p(fewest):.3g} and {need} are needed, so the numbers below "
                         "describe these runs and decide nothing.")
    for r in c.itertuples():
        where = "" if r.task == "all runs" else f" on {r.task}"
        if r.n_pairs < 2:
            sentences.append(f"{r.method} vs {baseline}{where}: {r.verdict}.")
            continue
        k, j = r.seeds_favour_method, r.seeds_favour_baseline
        seeds = (f"{max(k, j)}/{r.n_pairs} seeds favour {r.method if k > j else baseline}" if k != j
                 else f"the seeds split {k}–{j}" + (f" ({r.n_pairs - k - j} tied)" if r.n_pairs > k + j else ""))
        if np.isfinite(r.diff_ci_low_test):
            ci = (f"{interval(r.diff_ci_low_test, r.diff_ci_high_test)} over seeds and test set (seeds alone "
                  f"{interval(r.diff_ci_low, r.diff_ci_high)})")
        else:
            ci = f"{interval(r.diff_ci_low, r.diff_ci_high)} over seeds, on this test set"
        sentence = f"{r.method} vs {baseline}{where}: {seeds}; mean {r.diff_mean * scale:+.2g}{unit} {ci}; {r.verdict}"
        if decide == "rope":
            sentence += f"; the sign test and t-test give p = {r.p_holm:.2g} after Holm"
        elif "p_better" in c and np.isfinite(r.p_better):
            bayes = {"better": r.p_better, "equivalent": r.p_equivalent, "worse": r.p_worse}
            sentence += ("; Bayesian: " + ", ".join(f"P({k}) = {v:.2f}" for k, v in bayes.items()))
            decided = [k for k, v in bayes.items() if v >= stats.BAYES_DECIDES]
            if decided and not r.verdict.startswith(decided[0]):
                sentence += (f" (its P({decided[0]}) ≥ {stats.BAYES_DECIDES:g} assumes normal seed noise, which the "
                             f"declared rule does not; --decide rope makes it the rule)")
        sentences.append(sentence + ".")
    return " ".join(sentences)


def _fmt(mean: float, lo: float, hi: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.4f} [{lo:.4f}, {hi:.4f}] (n={n})" if np.isfinite(lo) else f"{mean:.4f} (n={n})"


def overview(
    summary: pd.DataFrame, metrics: list[str], sort_by: str, references: list[tuple[str, str, float]]
) -> pd.DataFrame:
    rows: dict[str, dict[str, Any]] = {}
    for r in summary.itertuples():
        rows.setdefault(r.group, {"group": r.group})
        rows[r.group][r.metric] = _fmt(r.mean, r.ci_low, r.ci_high, r.n)
        if r.metric == sort_by:
            rows[r.group]["_key"] = r.mean
    for name, m, v in references:
        rows[f"{name} (published)"] = {
            "group": f"{name} (published)",
            m: f"{v:.4f}",
            "_key": v if m == sort_by else np.nan,
        }
    table = pd.DataFrame(rows.values())
    table = table.sort_values("_key", ascending=higher_is_better(sort_by) is False, na_position="last")
    return table[["group"] + [m for m in metrics if m in table]]


def tuning_lines(chosen: pd.DataFrame, sensitivity: pd.DataFrame, speed: pd.DataFrame) -> list[str]:
    """The report's sections on tuned studies and on the time to a target."""
    lines = []
    if not chosen.empty:
        lines += ["## Tuning (python -m runner.tune): the same budget for every method, chosen on validation data", "",
                  "Each method's chosen setting is its best trial on the validation metric; `last_improvement` is the "
                  "trial at which its best-so-far last rose, and `converged` is false when that was in the last fifth "
                  "of the budget; `selection_optimism` is the chosen validation score minus the mean of the final "
                  "seeds at that setting (positive: the best of noisy trials looked better than the setting is); "
                  "`at_range_edge` names a setting chosen within 5 % of a bound of its range (on the log scale for a "
                  "log range), and one whose trend over the trials points past the end of the explored range "
                  "(|Spearman ρ| ≥ 0.8, exact p, with the best trial at that end): widen that range before trusting "
                  "the choice.", "",
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
           extra: list[str] = (), note: str = "", chosen: pd.DataFrame | None = None,
           made: list[str] = ()) -> str:
    """``made``: the provenance header's lines (runner/summary/provenance.py), first after the title."""
    chosen = pd.DataFrame() if chosen is None else chosen
    excluded = runs[runs.status != "ok"]
    chance = runs[(runs.status == "ok") & runs.at_chance] if not args.include_at_chance else runs.iloc[:0]
    lines = [
        f"# What the runs found ({metric}, {args.select} epoch)",
        "",
        *made,
        " ".join([answer(comparison, metric, args.baseline, args.decide)]
                 + ([f"Tuning (the same budget per method): {' '.join(opening(chosen))}"] if not chosen.empty else [])),
        "",
        f"{len(runs)} runs: "
        + ", ".join(f"{n} {s}" for s, n in runs.status.value_counts().items())
        + f". {len(ok)} enter the statistics."
        + (f" ({note[0].upper()}{note[1:]}.)" if note else ""),
        "",
    ]
    if len(excluded):
        lines += (
            ["Not aggregated (did not finish):", ""]
            + [f"- `{r.run_id}` {r.status}: {r.error}" for r in excluded.itertuples()]
            + [""]
        )
    if len(chance):
        lines += (
            [
                "Left out because they ended at chance (test accuracy within 3 standard errors of 1/K; "
                "`--include-at-chance` keeps them):",
                "",
            ]
            + [f"- `{r.run_id}` {r.group_label}: test_acc {r.test_acc:.4f}" for r in chance.itertuples()]
            + [""]
        )
    arrow = {True: "higher is better", False: "lower is better", None: ""}[higher_is_better(metric)]
    lines += [f"## Groups (mean [95 % t-interval] over seeds), sorted by {metric} ({arrow})", "",
              table.to_markdown(index=False), ""]
    if not comparison.empty:
        c = comparison[comparison.metric == metric]
        cols = [k for k in ("task", "method", "n_pairs", "seeds_favour_method", "seeds_favour_baseline",
                            "diff_median", "diff_mean", "diff_ci_low", "diff_ci_high", "test_set_sd",
                            "diff_ci_low_test", "diff_ci_high_test",
                            "p_sign", "p_rule", "p_holm", "effect_dz", "p_better", "p_equivalent", "p_worse",
                            "verdict", "unpaired_seeds") if k in c]
        rule = ("Bayesian correlated t-test, deciding at P ≥ 0.95 (--decide rope)" if args.decide == "rope" else
                "better or worse when the exact sign test and the t-test of the mean both reject (p_rule, the larger "
                f"of the two), Holm over {int(c.p_rule.notna().sum())} comparison(s)")
        lines += [
            f"## Against {args.baseline} ({metric}; paired by seed; {rule})",
            "",
            "`diff_ci_low`/`diff_ci_high`: the 95 % t-interval of the mean difference over seeds, on this test set; "
            "`diff_ci_low_test`/`diff_ci_high_test`: the same with the test set's own sampling (sd `test_set_sd`, "
            "from the per-image predictions: blank where a run's logits are missing or the metric is not a mean "
            "over images).",
            "",
            c[cols].to_markdown(index=False, floatfmt=".4g"),
            "",
        ]
    if ranks.empty and info.get("methods") and len(info["methods"]) > 1:
        lines += [f"Across tasks: {len(info['tasks_used'])} task(s) with every method; ranks, IQM, probability of "
                  f"improvement and Swiss scores need at least 2 (--task says what a task is).", ""]
    if not ranks.empty:
        fried = info.get("friedman_p", math.nan)
        if not np.isfinite(fried):
            test = (
                f"Friedman test: not possible with {len(info['tasks_used'])} task(s) and {len(info['methods'])} "
                f"methods "
                "(it needs 2 tasks and 3 methods); the ranks of one task are the order of its means, not a finding."
            )
        else:
            posthoc = info.get("posthoc")
            pairs = posthoc.to_numpy(dtype=float)[~np.eye(len(posthoc), dtype=bool)] if posthoc is not None else []
            if not fried < stats.ALPHA:
                verdict = " (no detectable difference in ranks; no critical-difference diagram is drawn)."
            elif np.any(np.asarray(pairs) < stats.ALPHA):
                verdict = " (the ranks differ; the critical-difference diagram shows which pairs do, by Wilcoxon–Holm)."
            else:  # Friedman rejects, yet no pair does at this number of tasks: no promise of which
                verdict = (f" (the ranks differ, but no pair of methods does after Wilcoxon–Holm over "
                           f"{len(info['tasks_used'])} tasks: the critical-difference diagram joins them all).")
            test = f"Friedman test: p = {fried:.3g}" + verdict
        lines += [f"## Across {len(info['tasks_used'])} tasks ({metric}; ranks over the seeds every method has)", "",
                  ranks.to_markdown(index=False, floatfmt=".4g"), "", test]
        if info["tasks_skipped"]:
            lines += ["", f"Tasks without every method, not ranked: {', '.join(info['tasks_skipped'])}."]
        if info["seeds_dropped"]:
            lines += [
                "",
                f"{info['seeds_dropped']} runs on seeds that not every method has were left out of the ranks.",
            ]
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
            raise SummaryError(
                f"--reference {item}: expected 'label:metric=value', e.g. 'pooling=max:test_acc=0.9125'"
            ) from None
        if not eq or not name:
            raise SummaryError(f"--reference {item}: expected 'label:metric=value', e.g. 'pooling=max:test_acc=0.9125'")
    return out
