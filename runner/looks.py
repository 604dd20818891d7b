"""The group-sequential rule: a comparison looked at as seeds are added, stopping at the first look that decides,
its false better/worse rate kept within α however many looks are taken (the sign test's exact bounds under
Lan–DeMets α spending, beside the t-test of the mean). The rule at one look is runner/stats.py's ``decide_p``."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from scipy import stats

from runner.stats import ALPHA


def spending(t: np.ndarray | float, alpha: float = ALPHA) -> np.ndarray | float:
    """The α spent by information fraction t (seeds so far / the most seeds): Lan & DeMets' Pocock-type function
    α·ln(1 + (e − 1)·t) (Lan & DeMets, "Discrete sequential boundaries for clinical trials", Biometrika 1983). It
    spends more early than O'Brien–Fleming's, so a clear difference stops at the first looks."""
    return alpha * np.log1p((math.e - 1) * np.minimum(np.asarray(t, dtype=float), 1.0))


def looks(first: int, most: int, step: int) -> list[int]:
    """The seed counts at which a sequential comparison looks: ``first``, then every ``step`` seeds, and ``most``."""
    return sorted({*range(first, most, step), most}) if most >= first else []


@functools.lru_cache(maxsize=64)
def _bounds(at: tuple[int, ...], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    return sign_bounds(at, alpha)


def sign_bounds(at: Sequence[int], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Group-sequential bounds of the sign test at the looks ``at`` (seed counts): reject at look k when
    |favour − against| >= bound[k]; and the α each look spends (its increment of ``spending``). Exact: under the
    null each seed favours either side with probability ½, so the count is a binomial random walk, and the
    chance of crossing a bound at or before each look is computed over every path (a dynamic programme over the
    counts, as Armitage, McPherson & Rowe's recursion for a binomial sequence). Each bound is the smallest whose
    total crossing probability stays within the α spent so far; inf where no count could reach it. The second
    array is the mean's t-test level at each look: the look's α increment, carried over from the first looks
    where no count could reach a bound. Its levels sum to at most α (a union bound over the looks)."""
    at = [int(n) for n in at]
    spent = spending(np.array(at, dtype=float) / at[-1], alpha)
    bounds = np.full(len(at), np.inf)
    dist, n_prev, used = np.array([1.0]), 0, 0.0
    for k, n in enumerate(at):
        step = stats.binom.pmf(np.arange(n - n_prev + 1), n - n_prev, 0.5)
        dist, n_prev = np.convolve(dist, step), n
        gap = np.abs(2 * np.arange(n + 1) - n)  # |favour − against| for each count
        for c in sorted(set(gap.tolist())):  # the smallest bound whose crossing fits the α spent by this look
            if used + dist[gap >= c].sum() <= spent[k] + 1e-12:
                bounds[k] = c
                used += dist[gap >= c].sum()
                dist = np.where(gap >= c, 0.0, dist)
                break
    inc = np.diff(np.r_[0.0, spent])
    # the mean's share of each look: its increment, plus the increments of earlier looks at which the sign test
    # could not reject at all (the rule cannot reject there, so their α is still unused); fixed before any data
    level = np.array([inc[k] + sum(inc[j] for j in range(k) if np.isinf(bounds[j])
                                   and all(np.isinf(bounds[i]) for i in range(j, k))) for k in range(len(at))])
    return bounds, level


def look(d: np.ndarray, at: Sequence[int], k: int, alpha: float = ALPHA, extra_var: float = 0.0,
         rope: float | None = None) -> str | None:
    """The verdict at look ``k`` of a group-sequential comparison on the paired differences ``d`` of its first
    ``at[k]`` seeds (method − baseline; fewer where runs failed, which only makes it harder to reject): better,
    worse or equivalent, or None to go on.

    The rule of ``decide_p`` with spent α: the sign test against the exact bounds of ``sign_bounds`` and the t-test
    of the mean (with ``extra_var``) at the look's level; both must reject in one direction. With ``rope``, the
    comparison also stops as equivalent when the mean's interval at that level lies within ±rope (two one-sided
    tests). The false better/worse rate under the null stays within ``alpha`` however many looks are taken
    (tests/test_stats.py simulates it); for m comparisons give alpha / m (Bonferroni)."""
    bounds, level = _bounds(tuple(int(n) for n in at), float(alpha))
    x = np.asarray(d, dtype=float)[: at[k]]
    n = len(x)
    if n < 2:
        return None
    favour, against = int((x > 0).sum()), int((x < 0).sum())
    gap = abs(favour - against) - (n - favour - against)  # a tie counts against whichever side leads
    mean = float(x.mean())
    se = math.sqrt(float(x.var(ddof=1)) / n + extra_var)
    p_mean = 2 * stats.t.sf(abs(mean) / se, n - 1) if se > 0 else float(mean == 0)
    if gap >= bounds[k] and p_mean < level[k] and np.sign(favour - against) == np.sign(mean):
        return "better" if mean > 0 else "worse"
    if rope is not None and se > 0:
        half = stats.t.ppf(1 - level[k], n - 1) * se
        if -rope < mean - half and mean + half < rope:
            return "equivalent"
    return None


def sequential(d: np.ndarray, at: Sequence[int], alpha: float = ALPHA, extra_var: float = 0.0,
               rope: float | None = None) -> tuple[str, int]:
    """``look`` at every look the seeds in ``d`` reach, in order: (the first verdict, the seeds it took), or
    ("undecided", the seeds looked at)."""
    seen = 0
    for k, n in enumerate(at):
        if n > len(d):
            break
        seen = n
        verdict = look(d, at, k, alpha, extra_var, rope)
        if verdict:
            return verdict, n
    return "undecided", seen
