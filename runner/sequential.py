"""Final seeds added in rounds until each comparison is decided (``runner.tune`` with ``tune.finals=sequential``, and
a plain grid with ``sequential.max_seeds``): the loop around ``looks.look``, independent of how runs are planned
and launched. Each look runs the seeds up to it for the comparisons still open (and their baselines), then decides
each on its paired differences, counting the test set's variance where the saved logits give it. A killed study
replays the same looks on the runs it has (a decision depends only on the seeds up to its look), so the same
command continues where it stopped. The decisions go to ``<results>/sequential.json``, which the summary reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from runner import looks, records, rundir, stats
from runner.design import Design
from runner.metrics import higher_is_better
from runner.paired import PerImage
from runner.plan import RunPlan
from runner.progress import say
from runner.schema import ConfigError

FILE = "sequential.json"


@dataclass(frozen=True)
class Rounds:
    max_seeds: int
    step: int
    decide_on: str
    rope: float | None
    first: tuple[int, ...]  # the seeds the command gave, first in the pool
    skip: tuple[int, ...] = ()  # seeds never used for a final run (a tuner's)
    where: str = "sequential.max_seeds"  # the key that sets the maximum, for messages


def pool(r: Rounds) -> list[int]:
    """The final seeds in the order they are added: the command's, then the next integers, less ``r.skip``."""
    out = [s for s in dict.fromkeys(r.first) if s not in r.skip]
    n = max(r.first, default=-1) + 1
    while len(out) < r.max_seeds:
        if n not in r.skip and n not in out:
            out.append(n)
        n += 1
    return out[:r.max_seeds]


def check(planned: Design | None, r: Rounds) -> list[int]:
    """The looks of a sequential design, after its checks (a ConfigError when nothing is compared or the maximum
    cannot decide anything); says the plan in one line."""
    if planned is None:
        raise ConfigError(f"{r.where}: there is nothing to compare; give two methods or more "
                          "(e.g. -m pooling=max,avg).")
    if r.max_seeds < planned.needed:
        raise ConfigError(f"{r.where}={r.max_seeds}: sequential finals over {len(planned.comparisons)} comparison(s) "
                          f"need at least {planned.needed} seeds to decide any; give e.g. {r.where}="
                          f"{max(20, 2 * planned.needed)}.")
    if higher_is_better(r.decide_on) is None or not r.decide_on.startswith("test_"):
        raise ConfigError(f"{r.decide_on}: allowed: a test metric with a direction, e.g. test_acc or test_nll.")
    at = looks.looks(planned.needed, r.max_seeds, r.step)
    say(f"plan: {len(planned.comparisons)} comparison(s) against {planned.baseline}, decided on {r.decide_on} by "
        f"adding seeds: looks at {', '.join(map(str, at))} seeds (the sign test's exact bounds with Lan–DeMets "
        f"Pocock-type α-spending, Bonferroni over the comparisons)"
        + (f"; tuning seeds {sorted(r.skip)} are never final seeds" if r.skip else ""))
    return at


def run_rounds(planned: Design, r: Rounds, plans_for: Callable[[Sequence[tuple[str, ...]], Sequence[int]],
                                                               dict[tuple[tuple[str, ...], int], RunPlan]],
               launch: Callable[[list[RunPlan]], None], root: Path) -> int:
    """Run the looks; ``plans_for(keys, seeds)`` plans each method (a ``design.method_key``) on each seed and
    ``launch`` runs the plans not yet complete. The exit status: 1 when a run did not finish."""
    seeds, at = pool(r), looks.looks(planned.needed, r.max_seeds, r.step)
    alpha = stats.ALPHA / len(planned.pairs)
    sign = 1 if higher_is_better(r.decide_on) else -1
    decided: dict[int, tuple[str, int]] = {}
    status = 0
    for k, n in enumerate(at):
        open_ = [i for i in range(len(planned.pairs)) if i not in decided]
        if not open_:
            break
        keys = list(dict.fromkeys(key for i in open_ for key in planned.pairs[i]))
        plans = plans_for(keys, seeds[:n])
        launch(list(plans.values()))
        for i in open_:
            method, base = planned.pairs[i]
            pairs = [(plans[(method, s)], plans[(base, s)]) for s in seeds[:n]]
            rows = {p.run_id: (rundir.read_result(p.folder) or {}) for pair in pairs for p in pair}
            value = {rid: records.row(rec).get(r.decide_on) for rid, rec in rows.items() if rec.get("status") == "ok"}
            ok = [(a, b) for a, b in pairs if all(isinstance(value.get(p.run_id), (int, float)) for p in (a, b))]
            if len(ok) < len(pairs):
                status = 1  # a failed or diverged run: the look goes on without that seed (harder to reject)
            d = np.array([value[a.run_id] - value[b.run_id] for a, b in ok], dtype=float) * sign
            table = pd.DataFrame([{"run_id": p.run_id, "folder": str(p.folder), r.decide_on: value[p.run_id]}
                                  for pair in ok for p in pair]).drop_duplicates("run_id")
            x = (PerImage(table).differences([a.run_id for a, _ in ok], [b.run_id for _, b in ok], r.decide_on)
                 if len(ok) > 1 else None)
            verdict = looks.look(d, at, k, alpha, stats.var_from_test_set(x) if x is not None else 0.0, r.rope)
            label = f"{planned.comparisons[i][1]} vs {planned.baseline}"
            if verdict:
                decided[i] = (verdict, n)
                say(f"sequential look {k + 1}/{len(at)} at {n} seeds: {label}: {verdict} on {r.decide_on}; it stops")
            elif k == len(at) - 1:
                say(f"sequential: {label}: undecided at {n} seeds, the most ({r.where}={r.max_seeds})")
    rows = [{"task": planned.comparisons[i][0], "method": planned.comparisons[i][1], "baseline": planned.baseline,
             "decision": decided.get(i, ("undecided", at[-1]))[0], "seeds": decided.get(i, ("", at[-1]))[1]}
            for i in range(len(planned.pairs))]
    rundir.write_json(root / FILE, {"metric": r.decide_on, "alpha": stats.ALPHA, "comparisons": len(planned.pairs),
                                     "looks": at, "max_seeds": r.max_seeds, "rope": r.rope, "rows": rows})
    say("sequential: " + "; ".join(f"{row['method']} vs {row['baseline']}: {row['decision']} at {row['seeds']} seeds"
                                   for row in rows)
        + f"  (python -m runner.summary {root} --baseline {planned.baseline})")
    return status
