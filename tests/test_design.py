"""The comparison's design before any run (runner/design.py): how many comparisons a grid makes against its baseline,
on how many paired seeds, and whether the summary's rule can decide with them; said on the command line a user runs."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from runner import launch
from runner.design import design
from runner.schema import ConfigError


def cells(grid: dict[str, list[str]], seeds) -> list[tuple[tuple[str, ...], int]]:
    import itertools

    keys = list(grid)
    return [(tuple(f"{k}={v}" for k, v in zip(keys, values)) + (f"seed={s}",), s)
            for values in itertools.product(*grid.values()) for s in seeds]


def test_the_comparisons_of_a_grid_and_the_seeds_they_need():
    # 3 poolings × 2 datasets against max: 2 comparisons per dataset, 4 in all; Holm over 4 needs 2/2^n < 0.0125: n = 8
    grid = cells({"pooling": ["max", "avg", "softpool"], "dataset": ["mnist5k", "fashion_mnist"]}, range(5))
    d = design(grid, "pooling=max")
    assert len(d.comparisons) == 4 and d.fewest == 5 and d.needed == 8 and not d.decides
    assert d.sentence().startswith("plan: 4 comparisons against pooling=max on 5 paired seeds: too few to decide")
    assert "it needs 8 paired seeds" in d.sentence()
    # one comparison needs 6 (2/2^6 < 0.05 < 2/2^5); seeds the baseline lacks do not pair
    two = cells({"pooling": ["max"]}, range(6)) + cells({"pooling": ["avg"]}, range(2, 9))
    d = design(two, "pooling=max")
    assert d.comparisons == (("", "pooling=avg", 4),) and d.needed == 6
    assert design(cells({"pooling": ["max", "avg"]}, range(6)), "pooling=max").decides
    # no baseline: the one axis that varies, against its first value, said so
    d = design(cells({"loss": ["ce", "focal", "dual_focal"]}, range(5)), None)
    assert d.baseline == "loss=ce" and d.guessed and d.needed == 7 and len(d.comparisons) == 2
    assert design(cells({"pooling": ["max"]}, range(3)), None) is None  # nothing to compare
    with pytest.raises(ConfigError, match=r"baseline=pooling=maxx: not a value of this grid; allowed: "
                                          r"pooling=max, pooling=avg"):
        design(cells({"pooling": ["max", "avg"]}, range(3)), "pooling=maxx")


def test_a_grid_says_before_training_that_its_seeds_cannot_decide(main_cli, monkeypatch, tmp_path, data_dir):
    handed = []
    monkeypatch.setattr(launch, "hand_off", lambda plans, pending, argv, exact=False: handed.append(len(pending)))
    common = ["-m", "pooling=max,avg,softpool", "seed=0,1,2", "epochs=1", f"data_dir={data_dir}",
              f"results_dir={tmp_path / 'res'}"]
    done = main_cli(*common, "baseline=pooling=max")
    assert handed == [9]  # planned and handed to the launcher (a stand-in here, so no run finishes: exit 1)
    assert ("plan: 2 comparisons against pooling=max on 3 paired seeds: too few to decide" in done.stdout
            and "it needs 7 paired seeds" in done.stdout)
    # a baseline the grid does not have: exit 2 before anything runs, the values it has
    common[-1] = f"results_dir={tmp_path / 'res2'}"
    done = main_cli(*common, "baseline=pooling=maxx")
    assert done.returncode == 2 and handed == [9]  # not handed off
    assert "baseline=pooling=maxx: not a value of this grid; allowed: pooling=max, pooling=avg, pooling=softpool" \
        in done.stderr
    assert not (tmp_path / "res2").exists()


def test_a_grid_adds_seeds_until_decided_and_the_summary_reports_it(main_cli, tmp_path, data_dir):
    # one comparison: looks at 6 and 7 seeds; the grid gives seeds 0 and 1, the rounds add 2..6
    args = ["-m", "pooling=max,avg", "seed=0,1", "epochs=1", "batch_size=16", "threads=1", "dataset=mnist",
            "baseline=pooling=max", "sequential.max_seeds=7", "sequential.step=1", f"data_dir={data_dir}",
            f"results_dir={tmp_path}"]
    done = main_cli(*args)
    assert done.returncode in (0, 1), done.stderr
    assert "plan: 1 comparison(s) against pooling=max, decided on test_acc by adding seeds: looks at 6, 7" \
        in done.stdout

    saved = json.loads((tmp_path / "sequential.json").read_text())
    (row,) = saved["rows"]
    assert saved["looks"] == [6, 7] and row["method"] == "pooling=avg" and row["seeds"] in (6, 7)
    runs = pd.read_csv(tmp_path / "runs.csv")
    n = row["seeds"]
    assert sorted(runs[runs.pooling == "avg"].seed) == list(range(n))
    # the same command again: the looks replayed on the runs there are, nothing trained, the same decisions
    again = main_cli(*args)
    assert json.loads((tmp_path / "sequential.json").read_text()) == saved and len(pd.read_csv(tmp_path / "runs.csv")) \
        == len(runs)
    assert "run " not in again.stdout.replace("python -m runner.summary", "")
    from runner.summary.cli import main as summary_main

    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    verdict = pd.read_csv(tmp_path / "comparison.csv").query("metric == 'test_acc'").verdict.iloc[0]
    assert verdict.startswith(f"{row['decision']} at {n} seeds") and "(sequential: looks at 6, 7 seeds" in verdict
    # without a baseline there is nothing to decide: exit 2, nothing written
    done = main_cli(*[a for a in args if not a.startswith("baseline=")][:-1], f"results_dir={tmp_path / 'other'}")
    assert done.returncode == 2 and "sequential.max_seeds: seeds are added until" in done.stderr
    assert not (tmp_path / "other").exists()
