"""The summary's statistics across tasks (a dataset × model each): pure functions, arrays in and numbers out.

The interquartile mean and the probability of improvement with stratified bootstrap CIs (Agarwal et al., "Deep RL
at the edge of the statistical precipice", NeurIPS 2021), rliable's score distribution, the Friedman test with
Wilcoxon–Holm post-hoc tests (Demšar, JMLR 2006; the rule autorank uses), average ranks, and the expected scores
of a Swiss-system contest (Liu et al. 2025). Comparisons within one task are runner/stats.py's.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats

from runner.stats import SEED, holm


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50 % of the scores (scipy's trim_mean, 25 % cut each side)."""
    return float(stats.trim_mean(np.asarray(scores, dtype=float).ravel(), 0.25))


def probability_of_improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> float:
    """P(X > Y) averaged over tasks: per task, the share of run pairs (x_i, y_j) with x_i > y_j, ties counted
    half (the Mann–Whitney U statistic over n·m), as defined by Agarwal et al. 2021."""
    per_task = []
    for a, b in zip(x, y):
        a, b = np.asarray(a, dtype=float)[:, None], np.asarray(b, dtype=float)[None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def score_distribution(tasks: Sequence[np.ndarray], taus: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """rliable's score distribution (performance profile): at each threshold τ, the share of runs scoring above τ
    (below, where lower is better) in each task, averaged over tasks, so that every task weighs the same."""
    taus = np.asarray(taus, dtype=float)[None, :]
    shares = [np.mean(np.asarray(t, dtype=float)[:, None] > taus if higher_is_better
                      else np.asarray(t, dtype=float)[:, None] < taus, axis=0) for t in tasks]
    return np.mean(shares, axis=0)


def stratified_bootstrap_ci(tasks: Sequence[Sequence[np.ndarray]], statistic: Callable[..., float],
                            confidence: float = 0.95, n_resamples: int = 2000) -> tuple[float, float]:
    """Percentile CI of ``statistic(*samples)`` where each sample is a list of per-task score arrays and the
    runs are resampled with replacement within each task (the stratified bootstrap of rliable). Written here
    because scipy's bootstrap has no strata."""
    rng = np.random.default_rng(SEED)
    values = []
    for _ in range(n_resamples):
        resampled = [[np.asarray(t, dtype=float)[rng.integers(0, len(t), len(t))] for t in sample] for sample in tasks]
        values.append(statistic(*resampled))
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def friedman_p(matrix: np.ndarray) -> float:
    """Friedman test over a tasks × methods matrix (scipy); nan with fewer than 3 methods or 2 tasks."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 3 or matrix.shape[0] < 2:
        return math.nan
    if np.all(matrix == matrix[:, :1]):
        return 1.0
    return float(stats.friedmanchisquare(*matrix.T).pvalue)


def wilcoxon_holm(matrix: np.ndarray) -> np.ndarray:
    """Methods × methods Holm-adjusted p-values of two-sided Wilcoxon signed-rank tests over tasks (scipy):
    the post-hoc test drawn in the critical-difference diagram (Benavoli et al. 2016's advice over Nemenyi)."""
    matrix = np.asarray(matrix, dtype=float)
    k = matrix.shape[1]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    raw = []
    for i, j in pairs:
        d = matrix[:, i] - matrix[:, j]
        raw.append(1.0 if np.all(d == 0) else float(stats.wilcoxon(matrix[:, i], matrix[:, j]).pvalue))
    adjusted = holm(raw)
    out = np.ones((k, k))
    for (i, j), p in zip(pairs, adjusted):
        out[i, j] = out[j, i] = p
    return out


def average_ranks(matrix: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Each method's rank averaged over tasks (1 = best, ties averaged)."""
    matrix = np.asarray(matrix, dtype=float)
    ranks = stats.rankdata(-matrix if higher_is_better else matrix, axis=1)
    return ranks.mean(axis=0)


def swiss_expected_scores(matrix: np.ndarray, n_sims: int = 20000, seed: int = 0,
                          elimination: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Expected win scores of a Swiss-system contest over the tasks (Liu et al. 2025, "LLM Swiss Round",
    Competitive Swiss-System Dynamics), by Monte Carlo: (mean score, its Monte Carlo standard error) per method.

    ``matrix`` is tasks × methods, higher is better. Each task is one round, in the given order: the methods
    still in the contest are sorted by their score so far (ties in random order) and paired neighbour with
    neighbour; the winner of a pair gets 1 (a tie ½ each); an odd one out, the lowest of the order, gets a bye
    worth 1, as in chess. ``elimination`` > 0 drops that many of the lowest-scoring methods after each round
    (the paper's T_k; its ties broken at random). Written by hand because no library simulates it.
    """
    tasks, m = matrix.shape
    rng = np.random.default_rng(seed)
    totals = np.zeros((n_sims, m))
    for sim in range(n_sims):
        score = np.zeros(m)
        active = np.arange(m)
        for k in range(tasks):
            order = active[np.lexsort((rng.random(len(active)), -score[active]))]  # by score, ties at random
            for a, b in zip(order[0:-1:2], order[1::2]):
                diff = matrix[k, a] - matrix[k, b]
                score[a] += 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0
                score[b] += 1.0 if diff < 0 else 0.5 if diff == 0 else 0.0
            if len(order) % 2:
                score[order[-1]] += 1.0
            if elimination and len(active) > elimination:
                ranked = active[np.lexsort((rng.random(len(active)), score[active]))]
                active = np.sort(ranked[elimination:])
        totals[sim] = score
    return totals.mean(0), totals.std(0, ddof=1) / math.sqrt(n_sims)
