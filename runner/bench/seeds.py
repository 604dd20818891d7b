"""Section ``seeds``: the sequential rule's power and seeds against a fixed design's."""
from __future__ import annotations


def seeds_section(rounds: int) -> dict[str, float]:
    import numpy as np

    from runner import looks, stats

    at, out = looks.looks(6, 20, 2), {}
    for effect in (0.75, 1.0, 1.5, 2.0):
        d = np.random.default_rng(0).normal(effect, 1.0, (2000, 20))
        runs = [looks.sequential(x, at) for x in d]
        power = float(np.mean([v == "better" for v, _ in runs]))
        used = float(np.mean([n for _, n in runs]))
        fixed = next((n for n in range(6, 41) if stats.rule_power(n, effect, 1.0) >= power), 41)
        print(f"seeds, effect {effect} sd: sequential power {power:.3f} with {used:.1f} seeds on average; "
              f"a fixed design needs {fixed} for that power ({used / fixed:.2f} of it)")
        out |= {f"seeds_dz{effect}_sequential_power": power, f"seeds_dz{effect}_sequential_mean": used,
                f"seeds_dz{effect}_fixed_equal_power": fixed}
    return out
