"""The summary's plots, one function per figure, each drawing on the axes it is given: a user can call one on an
axes of their own figure, in their own style. They draw what the summary and runner/stats.py computed (the IQM's
bootstrap and the score distributions are runner/stats.py's too). ``draw`` makes each figure and writes it as PNG
(for report.md) and PDF (vector, for a paper)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from runner import across, rundir, stats
from runner.metrics import calibration_errors, higher_is_better, reliability, top_label

FIGURES = ("differences", "intervals", "probability_of_improvement", "improvement_intervals",
           "performance_profiles", "critical_difference", "learning_curves", "tuning_curves",
           "reliability")  # the files draw() may write, so that a figure this summary does not draw is not left stale
FORMATS = ("png", "pdf")


def draw(ok: pd.DataFrame, epochs: pd.DataFrame, comparison: pd.DataFrame, info: dict[str, Any], metric: str,
         rope: float | None, folder: Path, curves: pd.DataFrame | None = None,
         summary: pd.DataFrame | None = None) -> list[Path]:
    """Every figure that the data allows, into ``folder``; returns the PNGs written (each has its PDF beside it)."""
    import matplotlib  # here: the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def figure(size: tuple[float, float], rows: int = 1, cols: int = 1) -> tuple[Any, Any]:
        fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
        return fig, (axes[0, 0] if rows == cols == 1 else axes)

    def save(fig: Any, name: str) -> None:
        for fmt in FORMATS:
            with rundir.atomic_path(folder / f"{name}.{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / f"{name}.png")

    for name in FIGURES:  # a figure from an earlier summary of other runs would read as this one's
        for fmt in FORMATS:
            (folder / f"{name}.{fmt}").unlink(missing_ok=True)
    if not comparison.empty:
        c = comparison[comparison.metric == metric].reset_index(drop=True)
        fig, ax = figure((7, 0.45 * len(c) + 1.6))
        differences(ax, c, metric, rope)
        save(fig, "differences")
    if summary is not None and ok.group.nunique() > 0 and (summary.metric == metric).any():
        rows = summary[summary.metric == metric].reset_index(drop=True)
        fig, axes = figure((9, 0.4 * len(rows) + 1.6), 1, 2)
        intervals(axes[0, 0], rows, {g: ok[ok.group == g][metric].to_numpy(dtype=float) for g in rows.group}, metric,
                  axes[0, 1])
        save(fig, "intervals")
    poi = info.get("poi")
    if poi is not None and len(poi) > 1:
        fig, ax = figure((1.1 * len(poi) + 2.5, 0.8 * len(poi) + 1.5))
        improvement(ax, poi, metric, len(info["tasks_used"]))
        save(fig, "probability_of_improvement")
        pairs = info.get("poi_table")
        if pairs is not None and not pairs.empty:
            fig, ax = figure((7, 0.3 * len(pairs) + 1.6))
            improvement_intervals(ax, pairs, metric, len(info["tasks_used"]))
            save(fig, "improvement_intervals")
    if info.get("scores") and len(info["tasks_used"]) >= 2:
        fig, ax = figure((7, 4))
        performance_profiles(ax, info["scores"], metric)
        save(fig, "performance_profiles")
    if info.get("friedman_p", math.nan) < stats.ALPHA and info.get("posthoc") is not None:
        fig, ax = figure((7, 0.35 * len(info["ranks"]) + 1.5))
        critical_difference(ax, info["ranks"], info["posthoc"], metric)
        save(fig, "critical_difference")
    curve = metric.removeprefix("best_") if metric.removeprefix("best_") in epochs.columns else "test_acc"
    if not epochs.empty and curve in epochs.columns:
        datasets = list(dict.fromkeys(ok.dataset))
        fig, axes = figure((6 * len(datasets), 4), 1, len(datasets))
        learning_curves(list(np.ravel(axes)), ok, epochs, curve)
        save(fig, "learning_curves")
    if curves is not None and not curves.empty:
        fig, ax = figure((7, 4))
        tuning_curves(ax, curves)
        save(fig, "tuning_curves")
    logits = {g: [s for s in (rundir.read_logits(Path(f)) for f in ok[ok.group == g].folder if f) if s is not None]
              for g in dict.fromkeys(ok.group)}
    logits = {g: saved for g, saved in logits.items() if saved}
    if logits:  # runs read from a table have no logits to draw
        cols = min(4, len(logits))
        rows_n = (len(logits) + cols - 1) // cols
        fig, axes = figure((3.4 * cols, 3.4 * rows_n), rows_n, cols)
        reliability_diagrams(list(np.ravel(axes)), logits)
        save(fig, "reliability")
    return written


def _err(center: Any, low: Any, high: Any) -> np.ndarray:
    """Error-bar lengths of an interval around ``center`` (0 where the interval is unknown, or a percentile
    bootstrap interval does not reach its own estimate)."""
    center, low, high = (np.asarray(a, dtype=float) for a in (center, low, high))
    return np.clip(np.nan_to_num(np.vstack([center - low, high - center])), 0, None)


def differences(ax: Any, c: pd.DataFrame, metric: str, rope: float | None) -> None:
    """What the verdict is about: each method's paired difference to the baseline and its CI."""
    y = np.arange(len(c))
    if "diff_ci_low_test" in c and np.isfinite(c.diff_ci_low_test).any():  # the wider interval: seeds and test set
        ax.errorbar(c.diff_mean, y, xerr=_err(c.diff_mean, c.diff_ci_low_test, c.diff_ci_high_test), fmt="none",
                    capsize=6, color="tab:gray", alpha=0.6, label="seeds + test set")
    ax.errorbar(c.diff_mean, y, xerr=_err(c.diff_mean, c.diff_ci_low, c.diff_ci_high), fmt="o", capsize=4,
                label="seeds (this test set)")
    ax.axvline(0, color="k", lw=0.8)
    if rope:
        ax.axvspan(-rope, rope, color="tab:green", alpha=0.15, label=f"ROPE ±{rope:g}")
    ax.legend(fontsize=7)
    ax.set_yticks(
        y,
        [f"{m} ({t + ', ' if t != 'all runs' else ''}n={n})" for m, t, n in zip(c.method, c.task, c.n_pairs)],
        fontsize=7,
    )
    ax.set(title=f"{metric}: difference to {c.baseline.iloc[0]} paired by seed, 95 % t-interval", xlabel="difference")


def intervals(ax: Any, rows: pd.DataFrame, values: dict[str, np.ndarray], metric: str, iqm_ax: Any) -> None:
    """Interval estimates per method (rliable's figure): the mean with its 95 % t-interval over seeds on ``ax``, the
    interquartile mean with its 95 % bootstrap interval over seeds on ``iqm_ax``."""
    y = np.arange(len(rows))
    ax.errorbar(rows["mean"], y, xerr=_err(rows["mean"], rows.ci_low, rows.ci_high), fmt="o", capsize=4)
    ax.set_yticks(y, [f"{g} (n={n})" for g, n in zip(rows.group, rows.n)], fontsize=7)
    ax.set(title=f"mean {metric} [95 % t-interval]", xlabel=metric)
    iqm, low, high = [], [], []
    for g in rows.group:
        v = values[g][np.isfinite(values[g])]
        iqm.append(across.iqm(v) if len(v) else np.nan)
        lo, hi = (across.stratified_bootstrap_ci([[v]], lambda s: across.iqm(np.concatenate(s)), n_resamples=1000)
                  if len(v) > 1 else (np.nan, np.nan))
        low.append(lo)
        high.append(hi)
    iqm_ax.errorbar(iqm, y, xerr=_err(iqm, low, high), fmt="s", capsize=4, color="tab:orange")
    iqm_ax.set_yticks(y, [""] * len(y))
    iqm_ax.set(title=f"IQM {metric} [95 % bootstrap]", xlabel=metric)


def improvement(ax: Any, poi: pd.DataFrame, metric: str, tasks: int) -> None:
    """Probability of improvement of each row over each column (rliable), across tasks."""
    im = ax.imshow(poi.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdBu")
    for (i, j), v in np.ndenumerate(poi.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(poi)), poi.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(poi)), poi.index, fontsize=7)
    ax.set(title=f"P(row > column) on {metric}, over {tasks} tasks")
    ax.figure.colorbar(im, ax=ax)


def improvement_intervals(ax: Any, pairs: pd.DataFrame, metric: str, tasks: int) -> None:
    """P(X > Y) for each pair with its 95 % stratified bootstrap interval (rliable's figure); 0.5 is no difference."""
    half = pairs[pairs.method < pairs.other].reset_index(drop=True)  # P(Y > X) = 1 - P(X > Y): each pair once
    y = np.arange(len(half))
    ax.errorbar(half.p_improvement, y, xerr=_err(half.p_improvement, half.ci_low, half.ci_high), fmt="o", capsize=4)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, [f"P({a} > {b})" for a, b in zip(half.method, half.other)], fontsize=7)
    ax.set(xlim=(0, 1), title=f"probability of improvement on {metric} over {tasks} tasks, 95 % bootstrap",
           xlabel="probability")


def performance_profiles(ax: Any, scores: dict[str, dict[str, np.ndarray]], metric: str) -> None:
    """Performance profiles (rliable's score distributions): for each method, the share of its runs, averaged over
    tasks, whose score is above τ (below, for a metric where lower is better), as τ sweeps the observed range."""
    pooled = np.concatenate([v for per_task in scores.values() for v in per_task.values()])
    taus = np.linspace(np.nanmin(pooled), np.nanmax(pooled), 200)
    up = higher_is_better(metric.removeprefix("best_")) is not False
    for method, per_task in scores.items():
        ax.plot(taus, across.score_distribution(list(per_task.values()), taus, up), label=method)
    ax.set(title=f"performance profiles on {metric} over {len(next(iter(scores.values())))} tasks",
           xlabel=f"{metric} threshold τ", ylabel=f"share of runs {'>' if up else '<'} τ", ylim=(0, 1.02))
    ax.legend(fontsize=7)


def critical_difference(ax: Any, ranks: dict[str, float], posthoc: pd.DataFrame, metric: str) -> None:
    """Mean ranks, with lines joining the methods the Wilcoxon–Holm tests cannot tell apart."""
    import scikit_posthocs as sp  # here: it imports seaborn, needed only when a diagram is drawn

    sp.critical_difference_diagram(pd.Series(ranks), posthoc, ax=ax)
    ax.set_title(f"mean rank on {metric} (lines join methods the Wilcoxon–Holm tests cannot tell apart)", fontsize=8)


def learning_curves(axes: Sequence[Any], ok: pd.DataFrame, epochs: pd.DataFrame, curve: str) -> None:
    """``curve`` per epoch, mean ± sd over each group's seeds, one axes per dataset."""
    for ax, ds in zip(axes, dict.fromkeys(ok.dataset)):
        for g, members in ok[ok.dataset == ds].groupby("group", sort=False):
            e = epochs[epochs.run_id.isin(members.run_id)].groupby("epoch")[curve]
            mean, sd = e.mean(), e.std().fillna(0)
            ax.plot(mean.index, mean.values, marker="o", ms=4, label=f"{g} (n={members.run_id.nunique()})")
            ax.fill_between(mean.index, mean - sd, mean + sd, alpha=0.2)
        ax.set(title=f"{ds}: {curve} per epoch (mean ± sd over seeds)", xlabel="epoch", ylabel=curve)
        ax.set_xticks(
            sorted(epochs[epochs.run_id.isin(ok.run_id)].epoch.unique())[:: max(1, len(epochs.epoch.unique()) // 12)]
        )
        ax.legend(fontsize=7)


def tuning_curves(ax: Any, curves: pd.DataFrame) -> None:
    """runner.tune: the best validation score so far per method: did each get the same budget, and converge?"""
    for method, c in curves.groupby("method", sort=False):
        ax.step(c["trial"] + 1, c["best"], where="post", marker="o", ms=3, label=method)
    ax.set(title="tuning: best validation score so far (each method's own study)", xlabel="trials",
           ylabel="best so far")
    ax.legend(fontsize=7)


def reliability_diagrams(axes: Sequence[Any], logits: dict[str, list[dict[str, Any]]]) -> None:
    """Per group (one axes each), accuracy against confidence in 15 bins over its seeds' test predictions, with bin
    counts and ECE; axes beyond the groups are hidden."""
    bins = np.linspace(0, 1, 16)
    for ax, g in zip(axes, logits):
        pairs = [top_label(s["test_logits"], s["test_target"]) for s in logits[g]]
        conf, hit = np.concatenate([c for c, _ in pairs]), np.concatenate([h for _, h in pairs])
        mass, acc, _ = reliability(conf, hit, bins)
        ax.bar(bins[:-1], np.where(mass > 0, acc, 0), width=1 / 15, align="edge", edgecolor="k")
        for left, m in zip(bins[:-1], mass):
            if m > 0:
                ax.text(left + 1 / 30, 0.02, f"{int(round(m * len(conf)))}", ha="center", fontsize=5, rotation=90)
        ax.plot([0, 1], [0, 1], "r--")
        ece = calibration_errors(conf, hit)["ece"]
        ax.set(title=f"{g}\nECE {ece:.4f} ({len(pairs)} seeds pooled)", xlabel="confidence", ylabel="accuracy",
               xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(7)
    for ax in list(axes)[len(logits):]:
        ax.axis("off")
