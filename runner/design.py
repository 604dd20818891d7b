"""A comparison's design before it runs: which methods a grid compares against its baseline, on how many paired
seeds, and whether the summary's rule can decide with them at all (runner/stats.py).

The rule's smallest p-value with n paired seeds is 2/2^n, and Holm compares the smallest of m with α/m, so a
grid with fewer seeds than ``stats.pairs_needed(α, m)`` cannot decide, whatever its runs show. That is known from
the grid alone; the runner says it before training, and ``runner.tune`` refuses such finals unless the study is
marked exploratory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from runner import stats
from runner.schema import NOT_IDENTITY, ConfigError, override_key

SKIP = {"seed", "baseline"} | set(NOT_IDENTITY)


def _value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _counts(key: str) -> bool:
    return key not in SKIP and key.split(".")[0] not in ("hydra", "launcher", "tune", "trial")


@dataclass(frozen=True)
class Design:
    baseline: str  # axis=value
    comparisons: tuple[tuple[str, str, int], ...]  # (task, method, paired seeds)
    guessed: bool = False  # the baseline was not given: the grid's first value of its one varying axis
    pairs: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = ()  # (method's key, baseline's key), as method_key

    @property
    def needed(self) -> int:
        return stats.pairs_needed(stats.ALPHA, max(1, len(self.comparisons)))

    @property
    def fewest(self) -> int:
        return min((n for *_, n in self.comparisons), default=0)

    @property
    def decides(self) -> bool:
        return self.fewest >= self.needed

    def sentence(self) -> str:
        m = len(self.comparisons)
        against = self.baseline + (" (the grid's first; baseline=axis=value names another)" if self.guessed else "")
        head = (f"plan: {m} comparison{'s' if m != 1 else ''} against {against} on {self.fewest} paired "
                f"seed{'s' if self.fewest != 1 else ''}")
        if self.decides:
            return f"{head}: enough for the summary's rule to decide at α = {stats.ALPHA:g} (it needs {self.needed})"
        return (f"{head}: too few to decide. The rule's smallest p with n seeds is 2/2^n, compared with "
                f"{stats.ALPHA:g}/{m} under Holm, so it needs {self.needed} paired seeds; with {self.fewest} the "
                f"summary can describe but never decide (e.g. seed={','.join(map(str, range(self.needed)))})")


def method_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """A cell's overrides that make its method (the settings of the comparison, less seed and bookkeeping)."""
    return tuple(o for o in overrides if "=" in o and _counts(override_key(o)))


def design(cells: Sequence[tuple[Sequence[str], int]], baseline: str | None) -> Design | None:
    """The comparisons of a grid's ``cells`` (each its overrides and its seed) against ``baseline`` (axis=value);
    None when there is nothing to compare. Without a baseline, the one axis that varies is compared against its
    first value; where several vary, every method against the first. A ConfigError for a baseline the grid lacks."""
    methods: dict[tuple[str, ...], set[int]] = {}
    for overrides, seed in cells:
        key = method_key(overrides)
        methods.setdefault(key, set()).add(int(seed))
    if len(methods) < 2:
        return None
    values: dict[str, list[str]] = {}
    for key in methods:
        for o in key:
            values.setdefault(override_key(o), [])
            if _value(o) not in values[override_key(o)]:
                values[override_key(o)].append(_value(o))
    keys_of = [{override_key(o) for o in m} for m in methods]
    varying = [k for k, v in values.items() if len(v) > 1 or any(k not in keys for keys in keys_of)]
    guessed = baseline is None
    if baseline is None:
        if len(varying) != 1:  # several axes: every method against the first, in one family
            first, *rest = methods
            label = " ".join(first) or "default"
            return Design(label, tuple(("", " ".join(m), len(methods[first] & methods[m])) for m in rest), True,
                          tuple((m, first) for m in rest))
        baseline = f"{varying[0]}={values[varying[0]][0]}"
    axis, eq, value = baseline.partition("=")
    if not eq or axis not in values or value not in values[axis]:
        shown = ", ".join(f"{k}={v}" for k in varying for v in values[k]) or "none: the grid varies nothing"
        raise ConfigError(f"baseline={baseline}: not a value of this grid; allowed: {shown}.")
    family = [k for k in values if k == axis or k.startswith(axis + ".")]
    tasks: dict[tuple[str, ...], dict[tuple[str, ...], tuple[str, ...]]] = {}
    for key in methods:
        task = tuple(o for o in key if override_key(o) not in family)
        tasks.setdefault(task, {})[tuple(o for o in key if override_key(o) in family)] = key
    out, pairs = [], []
    for task, group in tasks.items():
        base = [m for m in group if f"{axis}={value}" in m]
        if not base:
            continue
        for m, key in group.items():
            if m != base[0]:
                out.append((" ".join(task), " ".join(m), len(methods[key] & methods[group[base[0]]])))
                pairs.append((key, group[base[0]]))
    return Design(baseline, tuple(out), guessed, tuple(pairs)) if out else None
