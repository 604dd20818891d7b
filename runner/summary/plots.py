"""The summary's plots, one function per figure: they draw what the summary and runner/stats.py computed, and compute
nothing new. Each takes ``save(fig, name)``, which writes the figure atomically and closes it."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runner import records, stats
from runner.metrics import calibration_errors, reliability, top_label

FIGURES = ("differences", "probability_of_improvement", "critical_difference", "learning_curves", "tuning_curves",
           "reliability")  # the files draw() may write, so that a figure this summary does not draw is not left stale


def draw(ok: pd.DataFrame, epochs: pd.DataFrame, comparison: pd.DataFrame, info: dict[str, Any], metric: str,
         rope: float | None, folder: Path, curves: pd.DataFrame | None = None) -> list[Path]:
    """Every figure that the data allows, into ``folder``; returns the files written."""
    import matplotlib  # here: the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = folder / name
        with records.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    for name in FIGURES:  # a figure from an earlier summary of other runs would read as this one's
        (folder / f"{name}.png").unlink(missing_ok=True)
    if not comparison.empty:
        differences(plt, comparison[comparison.metric == metric].reset_index(drop=True), metric, rope, save)
    if info.get("poi") is not None and len(info["poi"]) > 1:
        improvement(plt, info["poi"], metric, len(info["tasks_used"]), save)
    if info.get("friedman_p", math.nan) < stats.ALPHA and info.get("posthoc") is not None:
        critical_difference(plt, info["ranks"], info["posthoc"], metric, save)
    curve = metric.removeprefix("best_") if metric.removeprefix("best_") in epochs.columns else "test_acc"
    if not epochs.empty and curve in epochs.columns:
        learning_curves(plt, ok, epochs, curve, save)
    if curves is not None and not curves.empty:
        tuning_curves(plt, curves, save)
    logits = {g: [s for s in (records.read_logits(Path(f)) for f in ok[ok.group == g].folder if f) if s is not None]
              for g in dict.fromkeys(ok.group)}
    if any(logits.values()):  # runs read from a table have no logits to draw
        reliability_diagrams(plt, {g: saved for g, saved in logits.items() if saved}, save)
    return written


def differences(plt: Any, c: pd.DataFrame, metric: str, rope: float | None, save: Any) -> None:
    """What the verdict is about: each method's paired difference to the baseline and its CI."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(c) + 1.6))
    y = np.arange(len(c))
    if "diff_ci_low_test" in c and np.isfinite(c.diff_ci_low_test).any():  # the wider interval: seeds and test set
        wide = np.vstack([c.diff_mean - c.diff_ci_low_test, c.diff_ci_high_test - c.diff_mean])
        ax.errorbar(c.diff_mean, y, xerr=np.nan_to_num(wide), fmt="none", capsize=6, color="tab:gray", alpha=0.6,
                    label="seeds + test set")
    err = np.vstack([c.diff_mean - c.diff_ci_low, c.diff_ci_high - c.diff_mean])
    ax.errorbar(c.diff_mean, y, xerr=np.nan_to_num(err), fmt="o", capsize=4, label="seeds (this test set)")
    ax.legend(fontsize=7)
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
    save(fig, "differences.png")


def improvement(plt: Any, poi: pd.DataFrame, metric: str, tasks: int, save: Any) -> None:
    """Probability of improvement of each row over each column (rliable), across tasks."""
    fig, ax = plt.subplots(figsize=(1.1 * len(poi) + 2.5, 0.8 * len(poi) + 1.5))
    im = ax.imshow(poi.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdBu")
    for (i, j), v in np.ndenumerate(poi.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(poi)), poi.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(poi)), poi.index, fontsize=7)
    ax.set(title=f"P(row > column) on {metric}, over {tasks} tasks")
    fig.colorbar(im, ax=ax)
    save(fig, "probability_of_improvement.png")


def critical_difference(plt: Any, ranks: dict[str, float], posthoc: pd.DataFrame, metric: str, save: Any) -> None:
    """Mean ranks, with lines joining the methods the Wilcoxon–Holm tests cannot tell apart."""
    import scikit_posthocs as sp  # here: it imports seaborn, needed only when a diagram is drawn

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(ranks) + 1.5))
    sp.critical_difference_diagram(pd.Series(ranks), posthoc, ax=ax)
    ax.set_title(f"mean rank on {metric} (lines join methods the Wilcoxon–Holm tests cannot tell apart)", fontsize=8)
    save(fig, "critical_difference.png")


def learning_curves(plt: Any, ok: pd.DataFrame, epochs: pd.DataFrame, curve: str, save: Any) -> None:
    """``curve`` per epoch, mean ± sd over each group's seeds, a panel per dataset."""
    datasets = list(dict.fromkeys(ok.dataset))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
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
    save(fig, "learning_curves.png")


def tuning_curves(plt: Any, curves: pd.DataFrame, save: Any) -> None:
    """runner.tune: the best validation score so far per method: did each get the same budget, and converge?"""
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, c in curves.groupby("method", sort=False):
        ax.step(c["trial"] + 1, c["best"], where="post", marker="o", ms=3, label=method)
    ax.set(title="tuning: best validation score so far (each method's own study)", xlabel="trials",
           ylabel="best so far")
    ax.legend(fontsize=7)
    save(fig, "tuning_curves.png")


def reliability_diagrams(plt: Any, logits: dict[str, list[dict[str, Any]]], save: Any) -> None:
    """Per group, accuracy against confidence in 15 bins over its seeds' test predictions, with bin counts and ECE."""
    bins = np.linspace(0, 1, 16)
    names = list(logits)
    cols = min(4, len(names))
    rows_n = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.4 * cols, 3.4 * rows_n), squeeze=False)
    for ax, g in zip(axes.flat, names):
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
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    save(fig, "reliability.png")
