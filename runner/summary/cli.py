"""The command: read, choose, compare, write the tables, the report and the plots, print the answer."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from runner import records, rundir
from runner.progress import encodable_streams
from runner.summary import tuning as summary_tune
from runner.summary.compare import compare, rank, summarize
from runner.summary.html import render as render_html
from runner.summary.export import export, latex_comparison, latex_methods, tex_comment
from runner.summary.provenance import provenance
from runner.summary.load import (AXES, KEY_METRICS, SummaryError, _text, config_columns, group_key, load,
                                 mixed_devices, parse_where, run_folders, select)
from runner.summary.report import answer, overview, parse_reference, report, tuning_lines


def main(argv: list[str] | None = None) -> int:
    encodable_streams()
    from runner.summary import plots as summary_plots  # here: it imports matplotlib, which --help never needs

    parser = argparse.ArgumentParser(
        prog="python -m runner.summary", description="what a sweep found, and whether it is real",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=(
            "writes into --out: summary.csv (per group and metric: n, mean, sd, 95 % t-interval), comparison.csv\n"
            "(--baseline: paired by seed, with the verdict), ranks.csv (with 2 or more tasks), plots/ (PNG and\n"
            "PDF), report.md (how the runs were made, the answer in words, the tables and plots) and report.html\n"
            "(the same as one self-contained page).\n\n"
            "example: python -m runner.summary results --baseline pooling=max --format tex"))
    parser.add_argument(
        "paths", nargs="*", type=Path, help="results roots, run folders or runs.csv tables (default: results)"
    )
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # the old spelling of a single path
    parser.add_argument("--out", type=Path, help="where to write (default: the results root read)")
    parser.add_argument("--where", nargs="+", default=[], help="keep runs whose column has one of the values, "
                        "e.g. --where pooling=max,softpool dataset=cifar10")
    parser.add_argument(
        "--metric", default="test_acc", help="the metric to sort, compare and rank by (default %(default)s)"
    )
    parser.add_argument(
        "--baseline", help="axis=value to compare every other value of that axis against, e.g. pooling=max"
    )
    parser.add_argument("--select", choices=("last", "best_val"), default="last",
                        help="the epoch whose metrics are compared: the last (default) or the best validation accuracy")
    parser.add_argument(
        "--task", default="dataset,model", help="columns that define a task for ranks (default %(default)s)"
    )
    parser.add_argument("--rope", type=float, help="region of practical equivalence for a Bayesian verdict, e.g. 0.005")
    parser.add_argument("--decide", choices=("test", "rope"), default="test",
                        help="the rule that says better or worse: the sign test and t-test (default) or the Bayesian "
                        "correlated t-test with --rope")
    parser.add_argument(
        "--reference", nargs="+", default=[], help="a published number as a row: 'pooling=max:test_acc=0.9125'"
    )
    parser.add_argument(
        "--format", choices=("md", "tex", "csv"), default="csv",
        help="also export the tables: md (comparison.md) or tex (methods.tex and comparison.tex, booktabs tables "
             "that compile with pdflatex)"
    )
    parser.add_argument(
        "--include-at-chance", action="store_true", help="keep runs that ended at chance in the statistics"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--stage", choices=("final", "tune", "all"), default="final",
                        help="with python -m runner.tune's runs: compare the final runs (default), the trials, or all")
    parser.add_argument("--target", type=float, help="also report epochs and training time to reach val_acc >= this")
    args = parser.parse_args(argv)
    clock = (time.process_time(), time.perf_counter())  # the summary's own cost, reported with the runs'
    console = Console(width=None if sys.stdout.isatty() else 160)
    paths = args.paths or [args.results or Path("results")]
    out = args.out or args.results or (paths[0].parent if paths[0].suffix == ".csv" else paths[0]
                                       if (paths[0] / "runs").is_dir() or not (paths[0] / "result.json").exists()
                                       else paths[0].parent.parent)
    try:
        if out.exists() and not out.is_dir():
            raise SummaryError(f"--out {out}: a file; allowed: a folder (it is created if missing)")
        unwritable = rundir.cannot_write(out)
        if unwritable:
            raise SummaryError(f"--out {out}: {unwritable}" if args.out else f"{out}: {unwritable} The summary is "
                               "written beside the runs it reads unless --out names another folder.")
        if args.rope is not None and not args.rope >= 0:
            raise SummaryError(f"--rope {args.rope}: allowed: a difference >= 0 on the metric's scale, e.g. 0.005")
        if args.decide == "rope" and args.rope is None:
            raise SummaryError("--decide rope: give the region of practical equivalence with --rope, e.g. --rope 0.005")
        runs, epochs, metrics = load(run_folders(paths))
        runs = select(runs, parse_where(args.where, runs.columns))
        every = runs  # the provenance's commands and compute count the runs of every stage
        runs, stage_note = summary_tune.by_stage(runs, args.stage)
        if args.target is not None and not 0 < args.target <= 1:
            raise SummaryError(f"--target {args.target}: allowed: a validation accuracy in (0, 1], e.g. 0.95")
        references = parse_reference(args.reference)
        metric = args.metric if args.select == "last" else f"best_{args.metric}"
        if metric not in runs or metric not in metrics:
            allowed = sorted(m for m in metrics if not m.startswith("best_"))
            raise SummaryError(f"--metric {args.metric}: not recorded" + (" at the best validation epoch" if args.select
                               == "best_val" else "") + f". Allowed: {', '.join(allowed)}")
        tuned = summary_tune.tuned_columns(runs) if args.stage == "final" else set()
        columns = [c for c in config_columns(runs, metrics) if c not in tuned]  # a tuned setting is the method's own
        runs["group_label"] = group_key(runs, columns)
        ok = runs[(runs.status == "ok") & (~runs.at_chance | args.include_at_chance)].copy()
        if ok.empty:
            raise SummaryError(
                f"none of the {len(runs)} runs can be aggregated: "
                + ", ".join(runs.status.unique())
                + (" (runs at chance are left out; --include-at-chance keeps them)" if runs.at_chance.any() else "")
            )
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
    comparison = (compare(ok, columns, compared, args.baseline, metric, args.rope, args.decide) if args.baseline
                  else pd.DataFrame())
    roots = [p for p in paths if (p / "runs").is_dir()]
    if args.stage == "final" and args.decide == "test":  # a sequential study's own decisions, where it made them
        comparison = summary_tune.sequential_verdicts(comparison, summary_tune.read_sequential(roots))
    axis = axis or next((a for a in AXES if a in columns), None)
    ranks, info = rank(ok, columns, metric, axis, args.task.split(",")) if axis else (pd.DataFrame(), {})
    table = overview(summary, shown, metric, references)
    trials = summary_tune.read_trials([p for p in paths if (p / "runs").is_dir()])
    studies = {s for v in runs.get("study", pd.Series(dtype=object)).dropna() for s in str(v).split(";")}
    spaces = summary_tune.read_spaces([p for p in paths if (p / "runs").is_dir()])
    chosen, sensitivity = (summary_tune.tuning(trials, studies, spaces, runs[runs.status == "ok"]) if studies
                           else (pd.DataFrame(), pd.DataFrame()))
    curves = summary_tune.best_so_far(trials[trials.study.isin(studies)]) if not chosen.empty else None
    speed = summary_tune.time_to_target(ok, epochs, args.target) if args.target is not None else pd.DataFrame()
    extra = tuning_lines(chosen, sensitivity, speed)
    images = [] if args.no_plots else summary_plots.draw(ok, epochs, comparison, info, metric, args.rope, out / "plots",
                                                         curves, summary)
    records.write_csv(out / "summary.csv", summary)
    poi_table = info.get("poi_table", pd.DataFrame()) if info else pd.DataFrame()
    for name, frame in (("comparison", comparison), ("ranks", ranks), ("probability_of_improvement", poi_table),
                        ("tuning", chosen), ("sensitivity", sensitivity), ("time_to_target", speed)):
        if frame.empty:
            (out / f"{name}.csv").unlink(missing_ok=True)
        else:
            records.write_csv(out / f"{name}.csv", frame)
    if comparison.empty:  # an earlier summary's comparison in this format, of other runs, would read as this one's
        (out / f"comparison.{args.format}").unlink(missing_ok=True)
    header = provenance(every, ok, args)[2:-1]  # the facts, without the heading and the summary's own time
    if args.format == "tex":
        rundir.write_text(out / "methods.tex", tex_comment(header)
                           + latex_methods(summary, shown[:3], comparison, args.baseline, metric))
        if not comparison.empty:
            rundir.write_text(out / "comparison.tex", tex_comment(header)
                               + latex_comparison(comparison, metric, args.baseline))
    elif not comparison.empty and args.format != "csv":
        rundir.write_text(out / f"comparison.{args.format}", "\n".join(header) + "\n\n"
                           + export(comparison[comparison.metric == metric], args.format))
    made = provenance(every, ok, args, (time.process_time() - clock[0], time.perf_counter() - clock[1]))
    text = report(runs, ok, table, comparison, ranks, info, images, args, metric, extra, stage_note, chosen, made)
    rundir.write_text(out / "report.md", text)
    rundir.write_text(out / "report.html", render_html(text, out))

    if stage_note:
        console.print(stage_note, highlight=False)
    console.print(answer(comparison, metric, args.baseline, args.decide), highlight=False)
    for line in summary_tune.opening(chosen):
        console.print(f"tuning {line}", highlight=False)
    t = Table(title=f"{len(ok)} runs in {ok.group.nunique()} groups, by {metric} (mean [95 % t-interval])")
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
    console.print(
        f"wrote {out / 'summary.csv'}, {out / 'report.md'}, {out / 'report.html'}"
        + (f" and {len(images)} plots in {out / 'plots'}" if images else "")
    )
    return 0
