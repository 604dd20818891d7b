"""The summary's statistics: pure functions, arrays in and numbers out (the style of rliable's ``metrics.py``).

Within one task (a dataset × model), methods are compared to a baseline on the differences paired by
seed: Student's t-interval of the mean difference (scipy), an exact sign-flip permutation p-value (scipy),
Holm's correction over the comparisons of one report (statsmodels), the effect size d_z, and a verdict
that never says better or worse where the test cannot reach α at this n, with a power advisor.
Across tasks: the interquartile mean and the probability of improvement with stratified bootstrap CIs
(Agarwal et al., "Deep RL at the edge of the statistical precipice", NeurIPS 2021), the Friedman test
with Wilcoxon–Holm post-hoc tests (Demšar, JMLR 2006; the rule autorank uses), and the Bayesian
correlated t-test with a region of practical equivalence (Benavoli et al., JMLR 2017).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
SEED = 0  # bootstrap and permutation resampling are seeded: a report is reproducible


# ---------------------------------------------------------------- one task: paired differences

def t_interval(d: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student's t-interval of the mean of ``d``: mean ± t_(1+c)/2, n−1 · sd/√n (scipy.stats.t); (nan, nan) for fewer
    than 2 values, the value itself when all are equal. Exact for normal seed noise at every n; a bootstrap
    percentile or BCa interval covers only 70 % (n = 3) to 90 % (n = 10) there, so it is not used over seeds
    (tests/test_stats.py measures both coverages by simulation)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):  # no spread (np.mean of equal floats can miss the value by an ulp)
        return float(d[0]), float(d[0])
    mean, sem = float(np.mean(d)), float(np.std(d, ddof=1)) / math.sqrt(len(d))
    lo, hi = stats.t.interval(confidence, df=len(d) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p-value of the exact sign-flip permutation test of mean(d) = 0 (all 2^n sign patterns for
    n <= 12, 9999 random ones above); nan for fewer than 2 pairs (one pair has no other sign pattern to compare)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    exact = len(d) <= 12
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                 n_resamples=np.inf if exact else 9999, rng=np.random.default_rng(SEED))
    return float(res.pvalue)


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value the exact sign-flip test can give with n pairs: 2 / 2^n."""
    return 1.0 if n == 0 else min(1.0, 2.0 / 2 ** n)


def pairs_needed(alpha: float = ALPHA, comparisons: int = 1) -> int:
    """The fewest pairs with which the sign-flip test can reach ``alpha`` after Holm over ``comparisons``
    (the smallest p is compared with alpha / comparisons): 6 for one comparison at 0.05, 9 for eight."""
    return next(n for n in range(1, 64) if smallest_p(n) < alpha / comparisons)


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (statsmodels); nan stays nan and is not counted."""
    from statsmodels.stats.multitest import (
        multipletests,
    )  # here: statsmodels takes a second to import, a run never needs it

    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def effect_size(d: np.ndarray) -> float:
    """Cohen's d_z of paired differences: mean(d) / sd(d) (sd with n − 1); nan when undefined."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    return math.nan if sd == 0 else float(np.mean(d)) / sd


def seeds_for(
    difference: float, sd: float, alpha: float = ALPHA, power: float = POWER, comparisons: int = 1
) -> int | None:
    """About how many paired seeds detect a mean difference ``difference`` given the SD of the differences,
    with ``power`` at ``alpha`` / ``comparisons`` (a paired t-test's power, statsmodels), and never fewer than
    the sign-flip test needs. None when the SD is unknown or zero or the difference is zero."""
    from statsmodels.stats.power import TTestPower  # here: as holm's

    if not (np.isfinite(sd) and sd > 0 and np.isfinite(difference) and difference != 0):
        return None
    with warnings.catch_warnings(record=True):  # record: statsmodels' solver resets the filters and warns anyway
        warnings.simplefilter("ignore")
        n = TTestPower().solve_power(effect_size=abs(difference) / sd, alpha=alpha / comparisons, power=power,
                                     alternative="two-sided")
    if not np.isfinite(n):  # the solver fails for effects so large that the fewest pairs the test allows suffice
        return pairs_needed(alpha, comparisons) if abs(difference) / sd > 1 else None
    return max(int(math.ceil(n)), pairs_needed(alpha, comparisons))


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p: float
    effect: float
    sd: float


def paired(d: np.ndarray) -> Paired:
    """The paired comparison of one method with its baseline from the differences ``d`` (method − baseline)."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    lo, hi = t_interval(d)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    return Paired(len(d), float(np.mean(d)) if len(d) else math.nan, lo, hi, sign_flip_p(d), effect_size(d), sd)


def verdict(result: Paired, p_holm: float, higher_is_better: bool | None, comparisons: int, alpha: float = ALPHA,
            scale: float = 1.0, unit: str = "") -> str:
    """Better or worse only when the corrected test reaches ``alpha``; otherwise what this n can and cannot
    say, and about how many seeds would detect the observed difference with 80 % power."""
    def amount(x: float) -> str:
        return f"{abs(x) * scale:.2g}{unit}"

    if result.n < 2:  # no spread, no test: a row that says so, not a verdict
        return f"not comparable ({result.n} shared seed{'' if result.n == 1 else 's'})"
    need = pairs_needed(alpha, comparisons)
    advice = seeds_for(result.mean, result.sd, alpha, comparisons=comparisons)
    more = (
        f"; about {advice} seeds would detect a difference of {amount(result.mean)} with 80 % power" if advice else ""
    )
    if result.n < need:  # no data could give a verdict at this n: not a finding about the methods
        return (
            f"too few seeds to decide: with {result.n} seeds this test cannot go below p = {smallest_p(result.n):.3g}"
            + (f" over {comparisons} comparisons" if comparisons > 1 else "")
            + f" at α = {alpha:g}; {need} are needed{more}"
        )
    if higher_is_better is None or not p_holm < alpha:
        return f"no detectable difference (p = {p_holm:.2g}){more}"
    return "better" if (result.mean > 0) == higher_is_better else "worse"


def at_chance(acc: float, classes: int, n: int) -> bool:
    """Whether an accuracy is within 3 standard errors of guessing (1/K on n test images): such a run has not
    learned, and a comparison including it says nothing about the methods."""
    chance = 1.0 / classes
    return bool(acc < chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1)))


# ---------------------------------------------------------------- across tasks (rliable's aggregates)

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


# ---------------------------------------------------------------- Bayesian comparison with a ROPE

def bayes_correlated_t(d: np.ndarray, rope: float, rho: float = 0.0) -> tuple[float, float, float]:
    """(P(d < −rope), P(|d| <= rope), P(d > rope)) under the posterior of the mean difference of the Bayesian
    correlated t-test (Benavoli et al. 2017, eq. 7): Student t with n − 1 degrees of freedom, location mean(d)
    and scale² = (1/n + rho/(1 − rho)) · var(d). rho = 0 for runs on independent seeds; baycomp's
    ``CorrelatedTTest`` fixes rho = 1/folds for cross-validation, so it is written here with rho a parameter."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean, var = float(np.mean(d)), float(np.var(d, ddof=1))
    if var == 0:
        return float(mean < -rope), float(abs(mean) <= rope), float(mean > rope)
    post = stats.t(df=n - 1, loc=mean, scale=math.sqrt((1 / n + rho / (1 - rho)) * var))
    left, right = float(post.cdf(-rope)), float(post.sf(rope))
    return left, max(0.0, 1.0 - left - right), right


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
