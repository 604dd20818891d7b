"""The tables in the formats a paper or a spreadsheet takes: LaTeX that compiles, markdown, CSV.

``--format tex`` writes two booktabs tables a paper can \\input: one row per method (``methods.tex``) and the
paired comparisons against the baseline (``comparison.tex``). Both are ASCII: the few symbols the summary's
words use are written in math mode, and the cells' text is escaped for LaTeX.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from runner.metrics import higher_is_better, is_rate

# LaTeX's special characters and the non-ASCII symbols of the summary's sentences. pandas escapes only inside its
# Styler (no public function), so the dozen characters are mapped here.
TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "≥": r"$\geq$",
       "≤": r"$\leq$", "α": r"$\alpha$", "ρ": r"$\rho$", "×": r"$\times$", "–": "--", "—": "---", "−": "-",
       "…": r"\ldots{}", "→": r"$\to$", "·": r"$\cdot$"}
_TEX = re.compile("|".join(map(re.escape, TEX)))


def tex_text(text: str) -> str:
    """``text`` as LaTeX source in ASCII: specials escaped, the summary's symbols in math mode, anything else '?'."""
    return _TEX.sub(lambda m: TEX[m.group()], str(text)).encode("ascii", "replace").decode()


def tex_comment(lines: list[str]) -> str:
    """``lines`` as LaTeX comments, in ASCII (markdown's backticks dropped)."""
    return "".join("% " + line.replace("`", "").encode("ascii", "replace").decode() + "\n" for line in lines)


def _decimals(half: float, rate: bool) -> int:
    """Decimals that show the interval's half-width to two significant digits (rates in points: two)."""
    if rate:
        return 2
    if not np.isfinite(half) or half <= 0:
        return 4
    return int(min(6, max(1, 1 - np.floor(np.log10(half)))))


def _table(frame: pd.DataFrame, caption: str, label: str, align: str) -> str:
    body = frame.style.hide(axis="index").to_latex(
        column_format=align, hrules=True, caption=caption, label=label, position="t", position_float="centering")
    body = body.replace("\\centering\n", "\\centering\n\\small\n\\setlength{\\tabcolsep}{4pt}\n", 1)
    return ("% booktabs table from python -m runner.summary; needs \\usepackage{booktabs}. It fits the text width of\n"
            "% a one-column page; in a two-column paper use table* (and \\end{table*}) instead of table.\n" + body)


def verdict_word(verdict: str) -> str:
    """A verdict's decision in a word or two: better, worse, equivalent, undecided, too few seeds, not comparable."""
    v = str(verdict)
    for word in ("better", "worse", "equivalent", "too few seeds", "not comparable"):
        if v.startswith(word):
            return word
    return "undecided"


def latex_methods(summary: pd.DataFrame, metrics: list[str], comparison: pd.DataFrame, baseline: str | None,
                  decided_on: str) -> str:
    """One row per method, one column per metric: mean ± the half-width of its 95 % t-interval over seeds. The best
    mean of each column is bold; a method decided better (worse) than the baseline on that metric is marked."""
    groups = list(dict.fromkeys(summary.group))
    groups = [g for g in groups if g == baseline] + [g for g in groups if g != baseline]
    verdicts = {} if comparison.empty else {(r.method, r.metric): str(r.verdict) for r in comparison.itertuples()}
    cells: dict[str, list[str]] = {"Method": [tex_text(g) + (" (baseline)" if g == baseline else "") for g in groups]}
    seeds = sorted({int(n) for n in summary[summary.metric.isin(metrics)].n})
    for metric in metrics:
        rows = summary[summary.metric == metric].set_index("group").reindex(groups)
        rate, up = is_rate(metric.removeprefix("best_")), higher_is_better(metric.removeprefix("best_"))
        best = None
        if up is not None and rows["mean"].notna().any():
            best = rows["mean"].idxmax() if up else rows["mean"].idxmin()
        column = []
        for g, r in rows.iterrows():
            if not np.isfinite(r["mean"]):
                column.append("--")
                continue
            half = (r.ci_high - r.ci_low) / 2
            scale, d = (100 if rate else 1), _decimals(half, rate)
            cell = f"{r['mean'] * scale:.{d}f}" + (rf" $\pm$ {half * scale:.{d}f}" if np.isfinite(half) else "")
            if g == best:
                cell = rf"\textbf{{{cell}}}"
            verdict = verdicts.get((g, metric), "")
            cell += r"$^{+}$" if verdict.startswith("better") else r"$^{-}$" if verdict.startswith("worse") else ""
            column.append(cell)
        arrow = "" if up is None else r" $\uparrow$" if up else r" $\downarrow$"
        cells[tex_text(metric) + (r" (\%)" if rate else "") + arrow] = column
    marks = (r" $^{+}$/$^{-}$: better/worse than the baseline by the paired rule on that metric (sign test and "
             r"t-test both at $\alpha$ = 0.05, Holm-adjusted)." if verdicts else "")
    caption = (rf"Mean $\pm$ half-width of the 95\% t-interval over {'/'.join(map(str, seeds))} seeds per method; "
               rf"bold: the best mean of each column.{marks} Decided on {tex_text(decided_on)}.")
    return _table(pd.DataFrame(cells), caption, "tab:methods", "l" + "r" * len(metrics))


def latex_comparison(comparison: pd.DataFrame, metric: str, baseline: str) -> str:
    """The paired comparisons of ``metric`` against the baseline: seeds for and against, the mean difference with
    its interval, the rule's p-values and the verdict's first words."""
    c = comparison[comparison.metric == metric]
    rate = is_rate(metric.removeprefix("best_"))
    scale, unit = (100, " (points)") if rate else (1, "")
    test_set = np.isfinite(c.diff_ci_low_test)
    low = np.where(test_set, c.diff_ci_low_test, c.diff_ci_low) * scale
    high = np.where(test_set, c.diff_ci_high_test, c.diff_ci_high) * scale
    frame = pd.DataFrame({
        "Method": [tex_text(m) + ("" if t == "all runs" else f" ({tex_text(t)})") for m, t in zip(c.method, c.task)],
        "$n$": c.n_pairs.astype(int).astype(str).tolist(),
        "For/against": [f"{int(a)}/{int(b)}" for a, b in zip(c.seeds_favour_method, c.seeds_favour_baseline)],
        rf"$\Delta${unit} [95\% CI]": [
            f"{d * scale:+.2f} [{lo:+.2f}, {hi:+.2f}]" if np.isfinite(lo) else f"{d * scale:+.2f}"
            for d, lo, hi in zip(c.diff_mean, low, high)],
        r"$p_\mathrm{Holm}$": [f"{p:.2g}" if np.isfinite(p) else "--" for p in c.p_holm],
        "Verdict": [verdict_word(v) for v in c.verdict],
    })
    caption = (rf"Paired comparisons against {tex_text(baseline)} on {tex_text(metric)}. For/against: seeds whose "
               r"run beats (loses to) the baseline's run of the same seed. $\Delta$: the mean difference; its "
               r"interval covers the sampling of seeds and of the test set where per-image predictions were saved, "
               r"of seeds alone otherwise. A verdict needs the exact sign test and the t-test to agree at "
               r"$\alpha$ = 0.05 (intersection-union: the larger p counts), Holm-adjusted over the comparisons.")
    return _table(frame, caption, "tab:comparison", "lrrrrl")


def export(table: pd.DataFrame, fmt: str) -> str:
    if fmt == "md":
        return table.to_markdown(index=False, floatfmt=".4g")
    return table.to_csv(index=False)
