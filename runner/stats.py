"""The summary's statistics: pure functions, arrays in and numbers out (the style of rliable's ``metrics.py``).

Within one task (a dataset × model), methods are compared to a baseline on the differences paired by
seed: Student's t-interval of the mean difference over seeds (scipy), and beside it the interval that also
counts the test set's sampling, from the per-image predictions; a verdict rule that says better or worse only
when the exact sign test (most seeds agree) and the t-test of the mean both reject, Holm's correction over the
comparisons of one report (statsmodels), the effect size d_z, and a power advisor for that rule.
Beside them, the Bayesian correlated t-test with a region of practical equivalence (Benavoli et al., JMLR 2017).
Across tasks: runner/across.py; the rule looked at as seeds are added: runner/looks.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
SEED = 0  # bootstrap and permutation resampling are seeded: a report is reproducible


# ---------------------------------------------------------------- one task: paired differences

def sign_test_p(d: np.ndarray) -> np.ndarray | float:
    """Two-sided p-value of the exact sign test of median(d) = 0: zeros are dropped and the smaller count of
    positive or negative signs is referred to Binomial(n, 1/2), its tail doubled (scipy.stats.binomtest's two-sided
    p for p = 1/2, written on scipy.stats.binom so that it runs over the last axis of many simulated studies at
    once). Exact for any continuous distribution of the differences, skewed or heavy-tailed: its null is the
    claim the verdict makes ("more seeds favour one than the other"). nan for fewer than 2 pairs."""
    d = np.asarray(d, dtype=float)
    pos, neg = (d > 0).sum(-1), (d < 0).sum(-1)
    p = np.minimum(1.0, 2 * stats.binom.cdf(np.minimum(pos, neg), pos + neg, 0.5))
    p = np.where(pos + neg == 0, 1.0, p)
    p = np.where(d.shape[-1] < 2, math.nan, p)
    return float(p) if p.ndim == 0 else p


def smallest_p(n: int) -> float:
    """The smallest two-sided p-value the exact sign test can give with n pairs (all of one sign): 2 / 2^n."""
    return 1.0 if n == 0 else min(1.0, 2.0 / 2 ** n)


def pairs_needed(alpha: float = ALPHA, comparisons: int = 1) -> int:
    """The fewest pairs with which the sign test can reach ``alpha`` after Holm over ``comparisons`` (the
    smallest p is compared with alpha / comparisons): 6 for one comparison at 0.05, 7 for two, 9 for eight."""
    return next(n for n in range(1, 64) if smallest_p(n) < alpha / comparisons)


def var_from_test_set(x: np.ndarray) -> np.ndarray | float:
    """The test set's share of the variance of a mean paired difference, from the per-image differences ``x``
    (seeds × images, the same images in the same order for every seed; leading axes are independent studies).

    The mean difference of n seeds on N fixed test images is the grand mean of a seeds × images table. Taking
    both as random (Bouthillier et al., "Accounting for variance in machine learning benchmarks", MLSys 2021:
    the test set is a sample too), its variance is σ²_seed/n + σ²_image/N + σ²_res/(nN), estimated without bias
    from the two-way ANOVA mean squares as (MS_seed + MS_image − MS_res)/(nN) (e.g. Searle, Casella & McCulloch,
    "Variance Components", 1992, ch. 4). MS_seed/(nN) is the seed-only term s²/n the t-interval already uses;
    this returns the rest, (MS_image − MS_res)/(nN) ≥ 0, the test set's sampling variance σ²_image/N. It does
    not shrink with more seeds. Written by hand: no library gives this term of a crossed design directly (a
    mixed model on n·N rows is the same estimate, slower). nan with fewer than 2 seeds or 2 images."""
    x = np.asarray(x, dtype=float)
    n, big_n = x.shape[-2], x.shape[-1]
    if n < 2 or big_n < 2:
        return math.nan
    d, e = x.mean(-1), x.mean(-2)  # per seed, per image
    grand = d.mean(-1)
    ss_res = (x ** 2).sum((-2, -1)) - big_n * (d ** 2).sum(-1) - n * (e ** 2).sum(-1) + n * big_n * grand ** 2
    ms_res = np.maximum(ss_res, 0.0) / ((n - 1) * (big_n - 1))
    ms_image = n * e.var(-1, ddof=1)
    out = np.maximum(ms_image - ms_res, 0.0) / (n * big_n)
    return float(out) if np.ndim(out) == 0 else out


def t_interval(d: np.ndarray, confidence: float = 0.95, extra_var: float = 0.0) -> tuple[float, float]:
    """Student's t-interval of the mean of ``d``: mean ± t_(1+c)/2, n−1 · √(s²/n + extra_var) (scipy.stats.t); (nan,
    nan) for fewer than 2 values, the value itself when all are equal and there is no extra variance.

    ``extra_var`` adds a variance term estimated from far more data than the n seeds (the test set's, from
    ``var_from_test_set``); keeping n − 1 degrees of freedom for the sum errs on the wide side. Exact for normal seed
    noise at every n; a bootstrap percentile or BCa interval covers only 70 % (n = 3) to 90 % (n = 10) there, so
    it is not used over seeds (tests/test_stats.py measures the coverage of both by simulation)."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2 or not np.isfinite(extra_var):
        return math.nan, math.nan
    if np.all(d == d[0]) and extra_var == 0:  # no spread (np.mean of equal floats can miss the value by an ulp)
        return float(d[0]), float(d[0])
    mean = float(np.mean(d))
    se = math.sqrt(float(np.var(d, ddof=1)) / len(d) + extra_var)
    lo, hi = stats.t.interval(confidence, df=len(d) - 1, loc=mean, scale=se)
    return float(lo), float(hi)


def decide_p(d: np.ndarray, extra_var: np.ndarray | float = 0.0) -> np.ndarray | float:
    """The p-value of the verdict's rule on paired differences ``d`` (last axis; leading axes are studies).

    A method is called better (or worse) only when both (a) most seeds favour it: the exact sign test, and (b) its
    mean difference is away from 0: the two-sided t-test with variance s²/n + ``extra_var`` (the test set's, when
    the per-image predictions give it). The rule's p-value is the larger of the two (an intersection–union test:
    Berger, Technometrics 1982; its level is each part's level, with no correction), and 1 when the majority of
    seeds and the mean point opposite ways. So the verdict claims a median and a mean of one sign, each tested
    by what holds for it: the sign test for the median under any shape of seed noise, the t-test for the mean
    against the test set's sampling (tests/test_stats.py measures the false verdict rate of the whole rule on
    normal, heavy-tailed and skewed nulls and on a fixed test set)."""
    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    if n < 2:
        return math.nan
    mean = d.mean(-1)
    se = np.sqrt(d.var(-1, ddof=1) / n + extra_var)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_mean = np.where(se > 0, 2 * stats.t.sf(np.abs(mean) / se, n - 1), np.where(mean == 0, 1.0, 0.0))
    majority = np.sign((d > 0).sum(-1) - (d < 0).sum(-1))
    p = np.where(majority == np.sign(mean), np.maximum(sign_test_p(d), p_mean), 1.0)
    p = np.where(np.isfinite(extra_var), p, math.nan)
    return float(p) if p.ndim == 0 else p


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


def rule_power(n: int, difference: float, sd: float, extra_var: float = 0.0, alpha: float = ALPHA,
               studies: int = 4000, seed: int = SEED) -> float:
    """The share of ``studies`` simulated studies of n seeds (normal seed noise of ``sd`` around ``difference``,
    plus one shared test-set error of variance ``extra_var`` per study) in which ``decide_p`` reaches ``alpha``."""
    rng = np.random.default_rng(seed)
    d = difference + sd * rng.standard_normal((studies, n)) + math.sqrt(extra_var) * rng.standard_normal((studies, 1))
    return float(np.mean(decide_p(d, extra_var) < alpha))


def power_curve(difference: float, sd: float, extra_var: float = 0.0, alpha: float = ALPHA, most: int = 100,
                studies: int = 4000, seed: int = SEED) -> np.ndarray:
    """``rule_power`` for every n from 1 to ``most`` at once (index n − 1), on one set of simulated studies whose
    first n seeds make the study of n: running sums give every n's counts, mean and variance, so the whole curve
    costs about what one n does."""
    from scipy.special import stdtr  # Student's t CDF as a plain ufunc: scipy.stats.t.sf's checks cost 10×

    rng = np.random.default_rng(seed)
    shared = math.sqrt(extra_var) * rng.standard_normal((studies, 1))
    d = difference + sd * rng.standard_normal((studies, most)) + shared
    n = np.arange(1, most + 1)
    pos, neg = np.cumsum(d > 0, axis=1), np.cumsum(d < 0, axis=1)
    total, squares = np.cumsum(d, axis=1), np.cumsum(d * d, axis=1)
    mean = total / n
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.maximum(squares - n * mean ** 2, 0.0) / (n - 1)
        se = np.sqrt(var / n + extra_var)
        p_mean = np.where(se > 0, 2 * stdtr(np.maximum(n - 1, 1), -np.abs(mean) / se), (mean == 0) * 1.0)
    k = np.arange(most + 1)  # the sign test's p for every (smaller count, nonzero count): one table, then look-ups
    table = np.minimum(1.0, 2 * stats.binom.cdf(k[:, None], k[None, :], 0.5))
    table[:, 0] = 1.0
    p_sign = table[np.minimum(pos, neg), pos + neg]
    p = np.where(np.sign(pos - neg) == np.sign(mean), np.maximum(p_sign, p_mean), 1.0)
    p[:, 0] = 1.0  # one seed: no test
    return np.mean(p < alpha, axis=0)


def seeds_for(difference: float, sd: float, extra_var: float = 0.0, alpha: float = ALPHA, power: float = POWER,
              comparisons: int = 1, most: int = 100) -> int | None:
    """The fewest paired seeds with which the verdict's own rule (``decide_p`` at alpha / comparisons, Holm's
    first step) detects a mean difference ``difference`` with ``power``, given the SD of the seed differences and
    the test set's variance; found by simulation (``power_curve``: 4000 studies), since the sign test's power has
    no closed form under normal noise and a t-test formula over-promises (at d_z = 1.5 it advises 6 seeds, where
    this rule has 66 % power). None when undefined or beyond ``most`` seeds."""
    if not (np.isfinite(sd) and sd >= 0 and np.isfinite(difference) and difference != 0 and np.isfinite(extra_var)):
        return None
    if sd == 0 and extra_var == 0:
        return pairs_needed(alpha, comparisons)
    curve = power_curve(difference, sd, extra_var, alpha / comparisons, most)
    enough = np.flatnonzero(curve[pairs_needed(alpha, comparisons) - 1:] >= power)
    return int(enough[0]) + pairs_needed(alpha, comparisons) if len(enough) else None


@dataclass(frozen=True)
class Paired:
    n: int
    mean: float
    ci_low: float  # the t-interval over seeds: this test set
    ci_high: float
    p_sign: float
    p: float  # the rule's p-value (decide_p) with the test set's variance where it is known
    effect: float
    sd: float
    favour: int  # seeds on which the method is above the baseline (its metric larger)
    against: int
    test_var: float = math.nan  # the test set's variance of the mean difference; nan where unknown
    ci_low_test: float = math.nan  # the t-interval with the test set's sampling too
    ci_high_test: float = math.nan


def paired(d: np.ndarray, test_var: float = math.nan) -> Paired:
    """The paired comparison of one method with its baseline from the differences ``d`` (method − baseline), and
    the test set's variance of their mean where the per-image predictions give it."""
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    lo, hi = t_interval(d)
    lo_t, hi_t = t_interval(d, extra_var=test_var) if np.isfinite(test_var) else (math.nan, math.nan)
    sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
    return Paired(len(d), float(np.mean(d)) if len(d) else math.nan, lo, hi, sign_test_p(d),
                  decide_p(d, test_var if np.isfinite(test_var) else 0.0), effect_size(d), sd,
                  int((d > 0).sum()), int((d < 0).sum()), test_var, lo_t, hi_t)


def verdict(result: Paired, p_holm: float, higher_is_better: bool | None, comparisons: int, alpha: float = ALPHA,
            scale: float = 1.0, unit: str = "", advise: bool = True) -> str:
    """Better or worse only when the corrected rule reaches ``alpha``; otherwise what this n can and cannot say,
    and (with ``advise``: a simulation, so the summary asks it for its main metric) how many seeds the rule itself
    would need to detect the observed difference with 80 % power."""
    def amount(x: float) -> str:
        return f"{abs(x) * scale:.2g}{unit}"

    if result.n < 2:  # no spread, no test: a row that says so, not a verdict
        return f"not comparable ({result.n} shared seed{'' if result.n == 1 else 's'})"
    here = "" if np.isfinite(result.test_var) else " on this test set"
    extra = result.test_var if np.isfinite(result.test_var) else 0.0
    need = pairs_needed(alpha, comparisons)
    advice = seeds_for(result.mean, result.sd, extra, alpha, comparisons=comparisons) if advise else None
    if not advise:
        more = ""
    elif advice:
        more = f"; about {advice} seeds would detect a difference of {amount(result.mean)} with 80 % power"
    elif extra > 0 and result.mean != 0 and seeds_for(result.mean, 0.0, extra, alpha, comparisons=comparisons) is None:
        more = (f"; no number of seeds gives 80 % power for a difference of {amount(result.mean)} on this test set: "
                f"its own sampling error (sd {amount(math.sqrt(extra))}) stays however many seeds run; a larger "
                "test set is needed")
    elif result.mean != 0 and np.isfinite(result.sd) and result.sd > 0:
        more = f"; more than 100 seeds would be needed to detect a difference of {amount(result.mean)} with 80 % power"
    else:
        more = ""
    if result.n < need:  # no data could give a verdict at this n: not a finding about the methods
        return (
            f"too few seeds to decide: with {result.n} seeds this test cannot go below p = {smallest_p(result.n):.3g}"
            + (f" over {comparisons} comparisons" if comparisons > 1 else "")
            + f" at α = {alpha:g}; {need} are needed{more}"
        )
    if higher_is_better is None or not p_holm < alpha:
        return f"no detectable difference{here} (p = {p_holm:.2g}){more}"
    return ("better" if (result.mean > 0) == higher_is_better else "worse") + f"{here} (p = {p_holm:.2g})"


def at_chance(acc: float, classes: int, n: int) -> bool:
    """Whether an accuracy is within 3 standard errors of guessing (1/K on n test images): such a run has not
    learned, and a comparison including it says nothing about the methods."""
    chance = 1.0 / classes
    return bool(acc < chance + 3 * math.sqrt(chance * (1 - chance) / max(n, 1)))


# ---------------------------------------------------------------- Bayesian comparison with a ROPE

def bayes_correlated_t(d: np.ndarray, rope: float, rho: float = 0.0,
                       extra_var: float = 0.0) -> tuple[float, float, float]:
    """(P(d < −rope), P(|d| <= rope), P(d > rope)) under the posterior of the mean difference of the Bayesian
    correlated t-test (Benavoli et al. 2017, eq. 7): Student t with n − 1 degrees of freedom, location mean(d)
    and scale² = (1/n + rho/(1 − rho)) · var(d) (+ ``extra_var``, the test set's variance where it is known).
    rho = 0 for runs on independent seeds; baycomp's ``CorrelatedTTest`` fixes rho = 1/folds for
    cross-validation, so it is written here with rho a parameter."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean, var = float(np.mean(d)), float(np.var(d, ddof=1))
    scale2 = (1 / n + rho / (1 - rho)) * var + (extra_var if np.isfinite(extra_var) else 0.0)
    if scale2 == 0:
        return float(mean < -rope), float(abs(mean) <= rope), float(mean > rope)
    post = stats.t(df=n - 1, loc=mean, scale=math.sqrt(scale2))
    left, right = float(post.cdf(-rope)), float(post.sf(rope))
    return left, max(0.0, 1.0 - left - right), right


BAYES_DECIDES = 0.95  # the posterior probability at which the Bayesian rule decides (Benavoli et al. 2017, §4)


def rope_verdict(p_better: float, p_equivalent: float, p_worse: float, rope: float, scale: float = 1.0,
                 unit: str = "") -> str:
    """The verdict of the Bayesian rule (``--decide rope``): better, worse or equivalent within the region of
    practical equivalence when its posterior probability reaches 0.95, otherwise undecided."""
    if not np.isfinite(p_better):
        return "not comparable (fewer than 2 shared seeds)"
    where = f"ROPE ±{rope * scale:.2g}{unit}"
    for name, p in (("better", p_better), ("worse", p_worse), ("equivalent", p_equivalent)):
        if p >= BAYES_DECIDES:
            return f"{name} (P({name}) = {p:.2f} ≥ {BAYES_DECIDES:g}, {where})"
    return (f"undecided (P(better) = {p_better:.2f}, P(equivalent) = {p_equivalent:.2f}, P(worse) = {p_worse:.2f}; "
            f"none reaches {BAYES_DECIDES:g}, {where})")
