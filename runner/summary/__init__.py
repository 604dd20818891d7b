"""``python -m runner.summary RESULTS``: what a sweep found, and whether it is real.

The package's modules, each with one job: ``load`` reads and chooses runs, ``compare`` computes the paired
comparisons and ranks (with runner/stats.py), ``provenance`` says how the runs were made, ``report`` writes
the words and tables, ``html`` the page to send, ``export`` the tables as LaTeX and markdown, ``plots`` one
function per figure, ``tuning`` runner.tune's studies, and ``cli`` the command that runs them in order
(``from runner.summary.cli import main``).

Loads the runs (``load``), keeps the ones asked for (``--where``, at-chance runs out unless
``--include-at-chance``), groups them by every setting except the seed (typed columns, a distillation
run by its teacher's run id however the teacher was named), and writes into ``--out`` (default: the
results root it reads):

- ``summary.csv``: per group and metric, n, mean, sd and a t-interval over seeds;
- ``comparison.csv`` (with ``--baseline axis=value``): each other method of that axis against the
  baseline within each task, paired by seed: seeds favouring each side, mean difference, t-intervals
  over seeds and over seeds and the test set, the rule's p-value (sign test and t-test), Holm over the
  report's comparisons, effect size d_z, the verdict (runner/stats.py) and, with ``--rope``, the
  Bayesian probabilities of better / equivalent / worse;
- ``ranks.csv`` (with at least 2 tasks): ranks per task over common seeds, mean rank, Borda count, IQM and
  probability of improvement with stratified bootstrap CIs (``probability_of_improvement.csv``), the Friedman test and
  Wilcoxon–Holm post-hoc p-values;
- ``plots/`` (PNG and PDF): paired differences, mean and IQM per method with their intervals, probability of
  improvement with its intervals and performance profiles (across tasks), critical-difference diagram (only
  when Friedman rejects), learning curves, reliability diagrams with bin counts and ECE;
- ``report.md``: how the runs were made (provenance), a paragraph that answers in words, then the tables and
  plots; ``report.html``: the same as one self-contained page; ``--format tex``: methods.tex, comparison.tex.
"""
