"""``python -m runner.summary``: what a sweep found, with statistics over seeds.

Reads every run folder under the results root (or the folders given), groups the finished runs by
every config setting except ``seed``, and writes under the results root:

- ``summary.csv``: per group and metric, n, mean, std and the 95 % t-interval of the mean over seeds;
- ``comparison.csv`` (with ``--baseline axis=value``): for every other value of that axis, the
  difference to the baseline paired by seed within each setting of the other axes, its 95 % CI,
  the paired t-test and Wilcoxon signed-rank p-values, both Holm-corrected over all comparisons of
  a metric, and a verdict (better / worse / no detectable difference at α = 0.05 on the corrected
  t-test). Seeds present on one side only are listed, not silently dropped;
- ``ranks.csv``: each method's rank in every task (dataset × setting of the other axes), its mean
  rank and its Borda count (Colombo et al., "What are the best systems? New perspectives on NLP
  Benchmarking", NeurIPS 2022);
- ``plots/``: learning curves (mean ± std over seeds), reliability diagrams, a method comparison;
- ``report.md``: all of it in one file.

Runs that failed, diverged or were interrupted are counted and listed, never averaged in. Works on
partial results and rewrites every output each time (idempotent).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import stats

from runner import records
from runner.metrics import higher_is_better, reliability, top_label

ALPHA = 0.05
KEY_METRICS = ("test_acc", "test_nll", "test_ece", "test_ece_ts", "test_brier")


class SummaryError(Exception):
    """A usage mistake: printed as one line, exit status 2."""


# ---------------------------------------------------------------- reading runs

def run_folders(paths: Iterable[Path]) -> list[Path]:
    """Run folders from results roots (holding ``runs/``) or run folders themselves."""
    out: list[Path] = []
    for p in paths:
        if (p / "result.json").exists():
            out.append(p)
        elif (p / "runs").is_dir():
            out += sorted(f for f in (p / "runs").iterdir() if (f / "result.json").exists())
        else:
            raise SummaryError(f"{p}: neither a results root (with runs/) nor a run folder (with result.json)")
    return out


def load(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """(runs, epochs, config columns, metric columns): one row per run, one per run × epoch."""
    rows, epochs, metrics = [], [], set()
    for folder in folders:
        record = records.read_result(folder)
        if record is None:
            continue
        metrics |= {k for k, v in record.get("metrics", {}).items() if isinstance(v, (int, float))}
        rows.append(records.row(record) | {"folder": str(folder)})
        frame = records.read_epochs(folder)
        if frame is not None:
            epochs.append(frame.assign(run_id=record["run_id"]))
    if not rows:
        raise SummaryError("no runs found: run a sweep first, e.g. python -m runner -m pooling=max,avg seed=0,1,2")
    runs = pd.DataFrame(rows)
    for c in runs.columns:  # lists (model.widths) as text, so that they can be grouped on
        if runs[c].dtype == object:
            runs[c] = runs[c].map(lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v)
    skip = set(records.BOOKKEEPING) | metrics | {"seed", "folder"}
    config = [c for c in runs.columns if c not in skip]
    return runs, pd.concat(epochs, ignore_index=True) if epochs else pd.DataFrame(), config, sorted(metrics)


def mixed_devices(ok: pd.DataFrame, config: list[str]) -> list[str]:
    """A warning per group whose seeds ran on different device types or autocast settings: their numbers
    differ for that reason alone (the run id holds both, so such runs are different experiments)."""
    where = [c for c in ("device_type", "autocast") if c in ok]
    out = []
    for key, group in ok.groupby(config, dropna=False, sort=False):
        kinds = sorted({"/".join("None" if pd.isna(v) else str(v) for v in row) for row in group[where].itertuples(index=False)})
        if len(kinds) > 1:
            out.append(f"warning: {label(pd.Series(dict(zip(config, key))), varying(ok, config)) or 'one group'} mixes "
                       f"runs on {', '.join(kinds)}; compare runs of one device type")
    return out


def varying(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns that take more than one value (NaN counts as a value)."""
    return [c for c in columns if df[c].astype(str).nunique() > 1]


def label(row: pd.Series, columns: list[str]) -> str:
    return " ".join(f"{c}={row[c]}" for c in columns if pd.notna(row[c])) or "all runs"


# ---------------------------------------------------------------- statistics

def describe(values: np.ndarray) -> dict[str, float]:
    """n, mean, sample std and the 95 % t-interval of the mean."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    mean = float(values.mean()) if n else np.nan
    std = float(values.std(ddof=1)) if n > 1 else np.nan
    if n > 1 and std > 0:
        lo, hi = stats.t.interval(1 - ALPHA, n - 1, loc=mean, scale=stats.sem(values))
    elif n > 1:
        lo = hi = mean
    else:
        lo = hi = np.nan
    return {"n": n, "mean": mean, "std": std, "ci_low": float(lo), "ci_high": float(hi)}


def summarize(ok: pd.DataFrame, config: list[str], metrics: list[str]) -> pd.DataFrame:
    """summary.csv: one row per group × metric."""
    out = []
    for key, group in ok.groupby(config, dropna=False, sort=False):
        base = dict(zip(config, key))
        for m in metrics:
            out.append(base | {"metric": m, "higher_is_better": higher_is_better(m)} | describe(group[m].to_numpy()))
    return pd.DataFrame(out)


# A distillation method is its loss and its teacher: comparing losses keeps the teacher with the loss.
ATTACHED = {"loss": ("teacher", "teacher_run_id", "teacher_test_acc")}
# Columns that identify a teacher in detail; labels show the teacher's option name instead.
LABEL_SKIP = ("teacher.overrides", "teacher.run_id", "teacher.checkpoint", "teacher_run_id", "teacher_test_acc")


def _method_columns(axis: str, config: list[str]) -> list[str]:
    """The axis and its own hyperparameters (``pooling`` and ``pooling.*``): what defines a method."""
    own = [axis] + [c for c in config if c.startswith(axis + ".")]
    attached = [c for c in config if c in ATTACHED.get(axis, ()) or any(c.startswith(a + ".") for a in ATTACHED.get(axis, ()))]
    return own + attached


def labelled(df: pd.DataFrame, columns: list[str]) -> list[str]:
    """The varying columns worth showing in a label."""
    return [c for c in varying(df, columns) if c not in LABEL_SKIP]


def compare(ok: pd.DataFrame, config: list[str], metrics: list[str], baseline: str) -> pd.DataFrame:
    """comparison.csv: every method of the baseline's axis against the baseline, paired by seed."""
    axis, _, value = baseline.partition("=")
    methods = _method_columns(axis, config)
    context = [c for c in config if c not in methods]
    rows = []
    for ctx, group in ok.groupby(context, dropna=False, sort=False) if context else [((), ok)]:
        ctx = ctx if isinstance(ctx, tuple) else (ctx,)
        base = group[group[axis].astype(str) == value]
        if base.empty:
            continue
        if base[methods].astype(str).drop_duplicates().shape[0] > 1:
            raise SummaryError(f"--baseline {baseline} matches several settings of {', '.join(methods[1:])}; "
                               "summarize a results folder with one of them")
        for key, other in group[group[axis].astype(str) != value].groupby(methods, dropna=False, sort=False):
            method = label(pd.Series(dict(zip(methods, key if isinstance(key, tuple) else (key,)))),
                           labelled(ok, methods) or [axis])
            pairs = base.merge(other, on="seed", suffixes=("_base", ""))
            unpaired = sorted(set(base.seed) ^ set(other.seed))
            for m in metrics:
                d = (pairs[m] - pairs[f"{m}_base"]).to_numpy(dtype=float)
                d = d[np.isfinite(d)]
                rows.append(dict(zip(context, ctx)) | {"method": method, "baseline": baseline, "metric": m,
                            "higher_is_better": higher_is_better(m), "n_pairs": len(d),
                            "unpaired_seeds": " ".join(map(str, unpaired))}
                            | {f"diff_{k}": v for k, v in describe(d).items() if k != "n"} | _tests(d))
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    from statsmodels.stats.multitest import multipletests

    for test in ("t", "wilcoxon"):
        table[f"p_{test}_holm"] = np.nan
        for m, idx in table.groupby("metric").groups.items():
            p = table.loc[idx, f"p_{test}"]
            valid = p.notna()
            if valid.any():
                table.loc[p[valid].index, f"p_{test}_holm"] = multipletests(p[valid], alpha=ALPHA, method="holm")[1]
    table["verdict"] = [_verdict(r) for r in table.itertuples()]
    return table


def _tests(d: np.ndarray) -> dict[str, float]:
    if len(d) < 2:
        return {"p_t": np.nan, "p_wilcoxon": np.nan}
    if np.all(d == 0):
        return {"p_t": 1.0, "p_wilcoxon": 1.0}
    with warnings.catch_warnings():  # near-identical differences make scipy warn; its p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        p_t = stats.ttest_rel(d, np.zeros_like(d)).pvalue if np.std(d) > 0 else 0.0  # identical non-zero differences
        return {"p_t": float(p_t), "p_wilcoxon": float(stats.wilcoxon(d).pvalue)}


def _verdict(r: Any) -> str:
    if r.n_pairs < 2:
        return "too few paired seeds"
    if r.higher_is_better is None or not (r.p_t_holm < ALPHA):
        return "no detectable difference"
    return "better" if (r.diff_mean > 0) == bool(r.higher_is_better) else "worse"


def rank(ok: pd.DataFrame, config: list[str], metric: str, axis: str) -> pd.DataFrame:
    """ranks.csv: per task (dataset × setting of the other axes) rank 1 = best; mean rank and Borda count."""
    methods = _method_columns(axis, config)
    tasks = [c for c in config if c not in methods]
    means = ok.groupby(tasks + methods, dropna=False, sort=False)[metric].mean().reset_index()
    means["method"] = [label(r, labelled(ok, methods) or [axis]) for _, r in means.iterrows()]
    means["task"] = [label(r, ["dataset"] + [c for c in varying(ok, tasks) if c != "dataset"]) for _, r in means.iterrows()]
    ascending = higher_is_better(metric) is False
    means["rank"] = means.groupby("task")[metric].rank(ascending=ascending, method="average")
    means["borda"] = means.groupby("task")["rank"].transform("count") - means["rank"]  # methods beaten
    wide = means.pivot_table(index="method", columns="task", values="rank")
    wide.columns = [f"rank: {c}" for c in wide.columns]
    agg = means.groupby("method").agg(mean_rank=("rank", "mean"), borda=("borda", "sum"), tasks=("task", "nunique"))
    return agg.join(wide).sort_values(["mean_rank", "borda"], ascending=[True, False]).reset_index()


# ---------------------------------------------------------------- plots

def plots(ok: pd.DataFrame, epochs: pd.DataFrame, summary: pd.DataFrame, groups: list[str], metric: str,
          root: Path) -> list[Path]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    out_dir = root / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ok = ok.assign(group=[label(r, groups) for _, r in ok.iterrows()])
    datasets = list(dict.fromkeys(ok["dataset"]))

    def save(fig: Any, name: str) -> None:
        with warnings.catch_warnings():  # long labels: tight_layout gives up where bbox_inches="tight" still fits them
            warnings.simplefilter("ignore", UserWarning)
            fig.tight_layout()
        path = out_dir / name
        with records.atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    curve = metric if metric in epochs.columns else "test_acc"
    if not epochs.empty and curve in epochs.columns:
        fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets):
            for g, members in ok[ok.dataset == ds].groupby("group", sort=False):
                e = epochs[epochs.run_id.isin(members.run_id)].groupby("epoch")[curve]
                mean, std = e.mean(), e.std().fillna(0)
                ax.plot(mean.index, mean.values, label=f"{g} (n={members.run_id.nunique()})")
                ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2)
            ax.set(title=f"{ds}: {curve} per epoch (mean ± std over seeds)", xlabel="epoch", ylabel=curve)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.legend(fontsize=7)
        save(fig, "learning_curves.png")

    bins = np.linspace(0, 1, 16)
    group_names = list(dict.fromkeys(ok["group"]))
    cols = min(4, len(group_names))
    fig, axes = plt.subplots((len(group_names) + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.2 * ((len(group_names) + cols - 1) // cols)),
                             squeeze=False)
    for ax, g in zip(axes.flat, group_names):
        pairs = [top_label(saved["test_logits"], saved["test_target"])
                 for saved in (records.read_logits(Path(f)) for f in ok[ok.group == g].folder) if saved is not None]
        if not pairs:
            ax.axis("off")
            continue
        mass, acc, _ = reliability(np.concatenate([c for c, _ in pairs]), np.concatenate([h for _, h in pairs]), bins)
        ax.bar(bins[:-1], np.where(mass > 0, acc, 0), width=1 / 15, align="edge", edgecolor="k", label="accuracy")
        ax.plot([0, 1], [0, 1], "r--", label="perfect calibration")
        ax.set(title=g, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.title.set_fontsize(7)
    for ax in list(axes.flat)[len(group_names):]:
        ax.axis("off")
    save(fig, "reliability.png")

    s = summary[summary.metric == metric].assign(group=lambda d: [label(r, groups) for _, r in d.iterrows()])
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 0.5 * s.group.nunique() + 1.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        d = s[s.dataset == ds].sort_values("mean", ascending=higher_is_better(metric) is not False)  # best at the top
        y = np.arange(len(d))
        err = np.vstack([d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]])
        ax.errorbar(d["mean"], y, xerr=np.nan_to_num(err), fmt="o", capsize=4)
        ax.set_yticks(y, d["group"], fontsize=7)
        ax.set(title=f"{ds}: {metric}, mean and 95 % CI over seeds", xlabel=metric)
    save(fig, "comparison.png")
    return written


# ---------------------------------------------------------------- report and CLI

def _fmt(mean: float, lo: float, hi: float, n: int) -> str:
    if not np.isfinite(mean):
        return "–"
    half = (hi - lo) / 2 if np.isfinite(lo) else np.nan
    return f"{mean:.4f} ± {half:.4f} (n={n})" if np.isfinite(half) else f"{mean:.4f} (n={n})"


def overview(summary: pd.DataFrame, groups: list[str], metrics: list[str], sort_by: str) -> pd.DataFrame:
    """One row per group: 'mean ± CI half-width (n)' per metric, best first by ``sort_by``."""
    rows = {}
    for _, r in summary.iterrows():
        g = label(r, groups)
        rows.setdefault(g, {"group": g})
        rows[g][r.metric] = _fmt(r["mean"], r.ci_low, r.ci_high, r.n)
        if r.metric == sort_by:
            rows[g]["_key"] = r["mean"]
    table = pd.DataFrame(rows.values())
    table = table.sort_values("_key", ascending=higher_is_better(sort_by) is False, na_position="last")
    return table[["group"] + [m for m in metrics if m in table]]


def report(root: Path, runs: pd.DataFrame, table: pd.DataFrame, comparison: pd.DataFrame, ranks: pd.DataFrame,
           images: list[Path], metric: str, baseline: str | None) -> str:
    bad = runs[runs.status != "ok"]
    lines = [f"# Sweep summary: {root}", "",
             f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in runs.status.value_counts().items())
             + ". Only `ok` runs are aggregated.", ""]
    if len(bad):
        lines += ["Not aggregated:", ""] + [f"- `{r.run_id}` {r.status}: {r.error}" for r in bad.itertuples()] + [""]
    arrow = {True: "higher is better", False: "lower is better", None: ""}[higher_is_better(metric)]
    lines += [f"## Groups (mean ± 95 % CI half-width over seeds), sorted by {metric} ({arrow})", "",
              table.to_markdown(index=False), ""]
    if baseline and not comparison.empty:
        c = comparison[comparison.metric == metric]
        fixed = [col for col in c.columns[:c.columns.get_loc("method")] if c[col].astype(str).nunique() == 1]
        cols = [col for col in c.columns if col not in ("baseline", "metric", "higher_is_better", *fixed)]
        lines += [f"## Against {baseline} ({metric}, paired by seed; Holm-corrected p-values)", "",
                  c[cols].to_markdown(index=False, floatfmt=".4g"), ""]
    if not ranks.empty:
        lines += [f"## Ranks by {metric} (1 = best; Borda = methods beaten, summed over tasks)", "",
                  ranks.to_markdown(index=False, floatfmt=".3g"), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in images] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(prog="python -m runner.summary", description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="results roots or run folders (default: --results)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="results root; outputs go here (default %(default)s)")
    parser.add_argument("--metric", default="test_acc", help="the metric to sort, compare and rank by (default %(default)s)")
    parser.add_argument("--baseline", help="axis=value to compare every other value of that axis against, e.g. pooling=max")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    try:
        runs, epochs, config, metrics = load(run_folders(args.paths or [args.results]))
        if args.metric not in metrics:
            raise SummaryError(f"--metric {args.metric}: not a recorded metric. Allowed: {', '.join(metrics)}")
        ok = runs[runs.status == "ok"]
        if ok.empty:
            raise SummaryError(f"none of the {len(runs)} runs finished ok: " + ", ".join(runs.status.unique()))
        axis = None
        if args.baseline:
            axis, eq, value = args.baseline.partition("=")
            if not eq or axis not in config:
                raise SummaryError(f"--baseline {args.baseline}: expected axis=value with axis one of "
                                   f"{', '.join(c for c in config if '.' not in c)}")
            if value not in set(ok[axis].astype(str)):
                raise SummaryError(f"--baseline {args.baseline}: no ok run has {axis}={value}. "
                                   f"Values: {', '.join(sorted(set(ok[axis].astype(str))))}")
    except SummaryError as e:
        console.print(f"error: {e}", style="red", highlight=False)
        return 2

    groups = labelled(ok, config)
    summary = summarize(ok, config, metrics)
    comparison = compare(ok, config, metrics, args.baseline) if args.baseline else pd.DataFrame()
    axis = axis or next((a for a in ("pooling", "global_pool", "norm", "loss", "model", "optim") if a in groups), None)
    ranks = rank(ok, config, args.metric, axis) if axis else pd.DataFrame()
    root = args.results
    records.write_csv(root / "summary.csv", summary)
    for name, table in (("comparison.csv", comparison), ("ranks.csv", ranks)):
        if not table.empty:
            records.write_csv(root / name, table)
        else:
            (root / name).unlink(missing_ok=True)
    images = [] if args.no_plots else plots(ok, epochs, summary, groups, args.metric, root)
    shown = [m for m in dict.fromkeys([args.metric, *KEY_METRICS]) if m in metrics]
    table = overview(summary, groups, shown, args.metric)
    records.write_text(root / "report.md", report(root, runs, table, comparison, ranks, images, args.metric, args.baseline))

    arrow = "↑" if higher_is_better(args.metric) else "↓" if higher_is_better(args.metric) is False else ""
    t = Table(title=f"{len(ok)} ok runs in {len(table)} groups, sorted by {args.metric} {arrow} (mean ± 95 % CI half-width)")
    for c in table.columns:
        t.add_column(c, justify="left" if c == "group" else "right")
    for r in table.itertuples(index=False):
        t.add_row(*map(str, r))
    console.print(t)
    if not comparison.empty:
        c = comparison[comparison.metric == args.metric]
        t = Table(title=f"against {args.baseline}: {args.metric} difference paired by seed (Holm-corrected)")
        for col in ("method", "n_pairs", "diff_mean", "95% CI", "p_t_holm", "p_wilcoxon_holm", "verdict", "unpaired_seeds"):
            t.add_column(col)
        for r in c.itertuples():
            t.add_row(r.method, str(r.n_pairs), f"{r.diff_mean:+.4f}", f"[{r.diff_ci_low:+.4f}, {r.diff_ci_high:+.4f}]",
                      f"{r.p_t_holm:.3g}", f"{r.p_wilcoxon_holm:.3g}", r.verdict, r.unpaired_seeds or "–")
        console.print(t)
    for warning in mixed_devices(ok, config):
        console.print(warning, style="yellow", highlight=False)
    not_ok = runs[runs.status != "ok"]
    if len(not_ok):
        console.print(f"not aggregated: {len(not_ok)} runs ({', '.join(f'{n} {s}' for s, n in not_ok.status.value_counts().items())}):")
        for r in not_ok.itertuples():
            console.print(f"  {r.run_id} {r.status}: {r.error}", highlight=False)
    console.print(f"wrote {root / 'summary.csv'}, {root / 'report.md'}" + (f" and {len(images)} plots in {root / 'plots'}" if images else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
