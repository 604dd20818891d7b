"""python -m runner.tune: equal budgets, choices made on validation data, finals at the chosen setting, resumable
studies, guard rails and the summary of a tuned comparison. Tiny model and data (conftest's IDX files)."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats as sps
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import ROOT, TINY
from test_contracts import DISTILLATION
from runner import rundir, tune
from runner.methods import prepare
from runner.journal import storage as journal_storage
from runner.compose import CONF_DIR, option_yaml

GRID = ["-m", "pooling=max,avg", *TINY, "tune.trials=3", "seed=0,1", "tune.exploratory=true"]  # 2 seeds: no verdict


def studies(res: Path) -> dict[str, optuna.Study]:
    storage = journal_storage(res / "tune" / "journal.log")
    return {n: optuna.load_study(study_name=n, storage=storage) for n in optuna.get_all_study_names(storage)}


def run_tune(args: list[str], monkeypatch, cwd: Path) -> int:
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("RUNNER_COMMAND", raising=False)  # tune.main sets it for its runs: restored after the test
    return tune.main(args)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, data_dir) -> Path:
    """A tuned comparison of two pooling options: 3 trials each on seed 100, then seeds 0 and 1."""
    place = tmp_path_factory.mktemp("tuned")
    res = place / "res"
    mp = pytest.MonkeyPatch()
    try:
        assert run_tune([*GRID, f"data_dir={data_dir}", f"results_dir={res}"], mp, place) == 0
    finally:
        mp.undo()
    return res


def test_every_method_gets_the_same_budget_and_its_best_validation_trial(tuned):
    runs = pd.read_csv(tuned / "runs.csv")
    assert runs.run_id.is_unique
    found = studies(tuned)
    assert len(found) == 2  # one study per method of the grid
    for name, study in found.items():
        trials = study.get_trials()
        assert [t.number for t in trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in trials)
        rows = runs[(runs.study == name) & runs.stage.str.contains("tune")]
        assert sorted(rows.trial.astype(int)) == [0, 1, 2] and set(rows.seed) == {100}
        for t in trials:  # a trial's score is its run's validation accuracy, as runs.csv has it
            assert t.value == pytest.approx(float(rows[rows.trial.astype(int) == t.number].val_acc.iloc[0]))
        best = rows.sort_values(["val_acc", "trial"], ascending=[False, True]).iloc[0]  # ties: the earliest trial
        finals = runs[(runs.study == name) & runs.stage.str.contains("final")]
        assert sorted(finals.seed) == [0, 1]
        assert (finals.lr == best.lr).all() and (finals.weight_decay == best.weight_decay).all()
        assert set(finals.trial.astype(str)) == {str(best.trial)}
        assert set(finals.tuned) == {"lr,weight_decay"}
        # the tuner reads validation only: a trial's run has no test pass, and its row says so; a final run has one
        assert rows.skip_test.eq(True).all() and rows.test_acc.isna().all() and rows.val_acc.notna().all()
        assert finals.skip_test.isna().all() and finals.test_acc.notna().all()
    epochs = pd.read_csv(tuned / "epochs.csv")
    trial_ids = set(runs[runs.stage == "tune"].run_id)
    assert epochs[epochs.run_id.isin(trial_ids)].test_acc.isna().all()
    assert epochs[~epochs.run_id.isin(trial_ids)].test_acc.notna().all()


def test_trials_csv_marks_the_chosen_trial(tuned):
    trials = pd.read_csv(tuned / "tune" / "trials.csv")
    assert len(trials) == 6 and (trials.state == "complete").all() and (trials.budget == 3).all()
    for _, t in trials.groupby("study"):
        assert t.chosen.sum() == 1
        assert t[t.chosen].value.iloc[0] == t.value.max()


def test_the_same_command_again_runs_nothing(tuned, data_dir, monkeypatch, capsys):
    before = sorted(p.name for p in (tuned / "runs").iterdir())
    journal = (tuned / "tune" / "journal.log").read_bytes()
    assert run_tune([*GRID, f"data_dir={data_dir}", f"results_dir={tuned}"], monkeypatch, tuned.parent) == 0
    assert sorted(p.name for p in (tuned / "runs").iterdir()) == before
    assert "epoch 1/1" not in capsys.readouterr().out
    stored = studies(tuned)
    assert all(len(s.trials) == 3 for s in stored.values())
    assert (tuned / "tune" / "journal.log").read_bytes().startswith(journal)


def test_summary_compares_the_final_runs_and_reports_the_tuning(tuned):
    from runner.summary import cli as summary

    out = tuned.parent / "summary"
    assert summary.main([str(tuned), "--out", str(out), "--baseline", "pooling=max", "--target", "0.05",
                         "--include-at-chance"]) == 0
    table = pd.read_csv(out / "summary.csv")
    assert set(table[table.metric == "test_acc"].n) == {2}  # the two final seeds, not the trials
    assert set(table.group) == {"pooling=max", "pooling=avg"}  # the tuned lr is each method's own, not a task
    chosen = pd.read_csv(out / "tuning.csv")
    trials = pd.read_csv(tuned / "tune" / "trials.csv")
    for r in chosen.itertuples():
        pick = trials[(trials.study == r.study) & trials.chosen]
        assert r.chosen_trial == pick.trial.iloc[0] and r.lr == pytest.approx(pick.lr.iloc[0])
        assert r.budget == 3 and r.complete == 3
    report = (out / "report.md").read_text()
    assert "## Tuning" in report and "tuning_curves.png" in report and (out / "plots" / "tuning_curves.png").exists()
    speed = pd.read_csv(out / "time_to_target.csv")
    assert set(speed.runs) == {2} and (speed.median_epochs == 1).all()  # tiny data: above 5 % after one epoch
    epochs = pd.read_csv(tuned / "epochs.csv")  # one epoch each: the median of the finals' first-epoch CPU seconds
    finals = pd.read_csv(tuned / "runs.csv").query("stage.str.contains('final')", engine="python")
    for r in speed.itertuples():
        runs = finals[finals.pooling == r.group.split("=")[1]].run_id
        first = epochs[epochs.run_id.isin(runs) & (epochs.epoch == 1)].train_cpu_s
        assert r.median_train_cpu_s == pytest.approx(first.median()) and r.median_train_cpu_s > 0
    assert summary.main([str(tuned), "--out", str(out), "--stage", "all", "--no-plots",
                         "--include-at-chance"]) == 0
    table = pd.read_csv(out / "summary.csv")
    assert table.group.nunique() == 6  # each trial's setting is a group; the finals join their chosen trial's
    assert sorted(table[table.metric == "val_acc"].n) == [1, 1, 1, 1, 3, 3]
    assert sorted(table[table.metric == "test_acc"].n) == [0, 0, 0, 0, 2, 2]  # trials have no test pass


# ---------------------------------------------------------------- kill and resume

def test_a_killed_study_continues_without_losing_or_repeating_a_trial(tmp_path, data_dir):
    res = tmp_path / "res"
    args = [sys.executable, "-m", "runner.tune", "pooling=max", *TINY, "epochs=2", "tune.trials=3",
            f"data_dir={data_dir}", f"results_dir={res}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # kill it while its second trial trains, its settings written
            if (res / "tune" / "journal.log").exists():  # (a kill before them: the test after the guard rails)
                trials = next(iter(studies(res).values()), None)
                if trials is not None and len(trials.trials) >= 2 and trials.trials[1].params.keys() >= {
                        "lr", "weight_decay"}:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the study never reached its second trial")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    (study,) = studies(res).values()
    cut = {t.number: t.params for t in study.trials}
    assert any(t.state == TrialState.RUNNING for t in study.trials) or len(cut) >= 2
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (study,) = studies(res).values()
    assert [t.number for t in study.trials] == [0, 1, 2] and all(t.state == TrialState.COMPLETE for t in study.trials)
    for n, params in cut.items():  # the trial that was cut off ran at the setting it had, not a new one
        assert study.trials[n].params == params
    runs = pd.read_csv(res / "runs.csv")
    assert runs.run_id.is_unique
    assert sorted(runs[runs.stage.str.contains("tune")].trial.astype(int)) == [0, 1, 2]


# ---------------------------------------------------------------- guard rails

GUARDS = [
    (
        "a key the method lacks",
        ["loss=ce", "+tune.space.loss.gamma.low=1", "+tune.space.loss.gamma.high=3"],
        "has no setting loss.gamma",
    ),
    ("the seed", ["+tune.space.seed.low=0", "+tune.space.seed.high=3"], "the seed is not a setting to tune"),
    (
        "the data",
        ["+tune.space.dataset.val_fraction.low=0.1", "+tune.space.dataset.val_fraction.high=0.2"],
        "same dataset",
    ),
    (
        "a key outside the identity",
        ["+tune.space.threads.low=1", "+tune.space.threads.high=2"],
        "not part of the run's identity",
    ),
    ("a whole option", ["+tune.space.pooling.choices=[max,avg]"], "chosen by its config group"),
    ("a key the command fixes", ["lr=0.1"], "lr=0.1 on the command line fixes it"),
    ("low above high", ["tune.space.lr.high=0.001"], "tune.space.lr="),
    ("a log range through zero", ["tune.space.weight_decay.low=0"], "tune.space.weight_decay="),
    (
        "a bound the method refuses",
        ["loss=focal", "tune.space.lr=null", "tune.space.weight_decay=null", "+tune.space.loss.gamma.low=-1"],
        "at loss.gamma=-1.0",
    ),
    (
        "an integer key given a fraction",
        ["global_pool=ggem", "+tune.space.global_pool.groups.low=1", "+tune.space.global_pool.groups.high=2.5"],
        "integer setting",
    ),
    ("an infinite bound", ["tune.space.lr.high=inf"], "low, high and step must be finite numbers"),
    ("a step that is a list", ["+tune.space.lr.step=[1]"], "low, high and step must be finite numbers"),
    ("a distribution Optuna's ranges lack", ["+tune.space.lr.dist=normal"],
     "tune.space.lr.dist: not a key of a search space"),
    ("a sequential study without a maximum", ["tune.finals=sequential"], "nothing to compare"),
    ("an unknown finals", ["tune.finals=adaptive"], "allowed: fixed, sequential"),
    ("a decision on a validation metric", ["tune.decide_on=val_acc"], "tune.decide_on=val_acc: allowed: a test"),
    ("a test metric", ["tune.metric=test_acc"], "leak"),
    ("no trials", ["tune.trials=0"], "tune.trials"),
    ("an unknown sampler", ["tune.sampler=grid"], "allowed: tpe, random"),
    ("an unknown tune key", ["+tune.trails=3"], "tune.trails"),
    ("an empty space", ["tune.space=null"], "nothing to tune"),
    ("tune=null", ["tune=null"], "needs tune settings"),
    ("force", ["force=true"], "force=true"),
]


@pytest.mark.parametrize("name,extra,expected", GUARDS, ids=[g[0] for g in GUARDS])
def test_a_bad_search_space_exits_2_before_any_trial(tmp_path, data_dir, monkeypatch, capsys, name, extra, expected):
    res = tmp_path / "res"
    code = run_tune(["pooling=max", *TINY, f"data_dir={data_dir}", f"results_dir={res}", *extra], monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and expected in err, err
    assert not res.exists()  # nothing written: no study, no run


def test_a_plain_run_refuses_tune_settings(tmp_path, monkeypatch, capsys):
    import runner.__main__ as entry

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["runner", "tune.trials=3", f"results_dir={tmp_path / 'res'}"])
    assert entry.main() == 2
    assert "python -m runner.tune" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


def test_a_study_run_with_another_space_is_refused_with_the_difference(tmp_path, data_dir, monkeypatch, capsys):
    res = tmp_path / "res"
    base = ["pooling=max", *TINY, "tune.trials=1", f"data_dir={data_dir}", f"results_dir={res}"]
    assert run_tune(base, monkeypatch, tmp_path) == 0
    journal = (res / "tune" / "journal.log").read_bytes()
    capsys.readouterr()
    assert run_tune([*base, "tune.space.lr.high=1.0"], monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    assert "tune.space.lr: stored" in err and '"high": 0.5' in err and '"high": 1.0' in err
    assert (res / "tune" / "journal.log").read_bytes() == journal
    assert run_tune([*base, "tune.trials=2"], monkeypatch, tmp_path) == 0  # a larger budget continues the study
    (study,) = studies(res).values()
    assert len(study.trials) == 2
    from filelock import FileLock

    (lock_path,) = [p for p in (res / "tune").glob("*.lock") if not p.name.startswith(".")]  # a study's lock
    with FileLock(str(lock_path)):
        capsys.readouterr()
        assert run_tune([*base, "tune.trials=3"], monkeypatch, tmp_path) == 2
    assert "another python -m runner.tune is tuning it" in capsys.readouterr().err
    assert len(studies(res)[study.study_name].trials) == 2


def test_a_final_seed_that_is_a_tuning_seed_exits_2_before_any_run(tmp_path, data_dir, monkeypatch, capsys):
    # the final run at seed 0 would be the very trial run (seed 0) that chose the setting: refused, nothing written
    res = tmp_path / "res"
    args = ["pooling=max", *TINY, "tune.trials=2", "tune.seeds=[0,7]", "seed=0,1", f"data_dir={data_dir}",
            f"results_dir={res}"]
    assert run_tune(["-m", *args], monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    assert "seed=0: a final seed of pooling=max" in err and "tune.seeds=[0, 7]" in err
    assert not res.exists()


# ---------------------------------------------------------------- pruning

def test_the_median_pruner_stops_a_trial_below_the_median_and_counts_it(tmp_path, data_dir, monkeypatch):
    res = tmp_path / "res"
    args = ["pooling=max", *TINY, "epochs=2", "tune.trials=5", "tune.pruner=median", "tune.sampler=random",
            "tune.space.lr.low=1e-5", f"data_dir={data_dir}", f"results_dir={res}"]
    assert run_tune(args, monkeypatch, tmp_path) == 0
    (study,) = studies(res).values()
    trials = study.trials
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    startup = json.loads(json.dumps(study.user_attrs["settings"]))["startup_trials"]
    for t in trials:  # Optuna's median rule, by hand: below the median of earlier completed trials at an epoch
        earlier = [e for e in trials[:t.number] if e.state == TrialState.COMPLETE]
        stopped_at = None
        if len(earlier) >= startup:
            for step in (1, 2):  # Optuna compares the trial's best value so far with the median at this epoch
                median = statistics.median(e.intermediate_values[step] for e in earlier)
                if max(t.intermediate_values[s] for s in range(1, step + 1)) < median:
                    stopped_at = step
                    break
        assert (t.state == TrialState.PRUNED) == (stopped_at is not None), (t.number, t.intermediate_values)
        if stopped_at is not None:
            assert max(t.intermediate_values) == stopped_at
    runs = pd.read_csv(res / "runs.csv")
    pruned = [t.number for t in trials if t.state == TrialState.PRUNED]
    assert set(runs[runs.status == "pruned"].trial.astype(int)) == set(pruned)


# ---------------------------------------------------------------- spaces follow conf/

def _declaring() -> list[tuple[str, str]]:
    return [(g.name, y.stem) for g in sorted(CONF_DIR.iterdir()) if g.is_dir()
            for y in sorted(g.glob("*.yaml")) if "tune" in option_yaml(g.name, y.stem)]


@pytest.mark.parametrize("group,option", _declaring())
def test_every_declared_space_is_valid_for_its_option(group, option, data_dir, tmp_path):
    extra = {("norm", "fixup"): ["model=resnet20"]}.get((group, option), [])
    if group == "loss" and option in DISTILLATION:  # what the loss's class declares, not what its YAML says
        extra.append("teacher=resnet20")
    methods, _, _ = prepare([f"{group}={option}", *extra, *TINY, f"data_dir={data_dir}",
                               f"results_dir={tmp_path}"], False, {})
    declared = option_yaml(group, option)["tune"]
    keys = set(declared.get("space", {})) if group == "optim" else {f"{group}.{k}" for k in declared}
    assert keys <= set(methods[0].space)


def test_an_experiment_file_and_the_shell_change_the_space(tmp_path, data_dir):
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "wide.yaml").write_text("# @package _global_\ntune:\n  space:\n    lr: {high: 0.9}\n"
                                       "    warmup_epochs: {low: 0.0, high: 1.0}\n")
    base = ["pooling=max", *TINY, f"data_dir={data_dir}", f"results_dir={tmp_path / 'res'}"]
    (m,), _, _ = prepare([*base, "experiment=wide"], False, {"config_dir": str(tmp_path / "presets")})
    assert (m.space["lr"].low, m.space["lr"].high, m.space["lr"].log) == (0.005, 0.9, True)  # one bound moved
    assert (m.space["warmup_epochs"].low, m.space["warmup_epochs"].high) == (0.0, 1.0)  # a key added
    (m,), _, _ = prepare([*base, "loss=focal", "tune.space.weight_decay=null", "+tune.space.loss.gamma.high=8"],
                           False, {})
    assert set(m.space) == {"lr", "loss.gamma"}  # weight decay dropped; focal declares gamma
    assert (m.space["loss.gamma"].low, m.space["loss.gamma"].high) == (1.0, 8.0)  # conf/loss/focal.yaml's low


@pytest.mark.slow
def test_launcher_local_runs_the_trials_of_a_round_in_parallel(tmp_path, data_dir):
    res = tmp_path / "res"
    args = [sys.executable, "-m", "runner.tune", "-m", "pooling=max,avg", *TINY, "epochs=2", "tune.trials=1",
            "tune.exploratory=true", "launcher=local", "hydra.launcher.n_jobs=2", f"data_dir={data_dir}",
            f"results_dir={res}"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = pd.read_csv(res / "runs.csv")
    trials = runs[runs.stage == "tune"]
    assert len(trials) == 2 and len(runs[runs.stage == "final"]) == 2
    first, second = sorted(zip(trials.started_at, trials.finished_at))
    assert second[0] <= first[1]  # the two methods' trials overlapped (the times have whole seconds)
    cores = max(1, len(os.sched_getaffinity(0)) // 2)  # as two jobs of the joblib launcher share the machine
    assert {rundir.read_result(res / "runs" / r)["config"]["threads"] for r in trials.run_id} == {cores}


def test_a_choice_at_the_bound_of_its_range_is_flagged():
    from runner.summary import tuning as summary_tune

    # lr on [0.005, 0.5], log: 0.45 is at 97.7 % of the log range (ln 0.45 − ln 0.005 over ln 100), past 95 %
    assert summary_tune.at_edge(0.45, 0.005, 0.5, True) == "high"
    assert summary_tune.at_edge(0.05, 0.005, 0.5, True) is None  # 50 % of the log range
    assert summary_tune.at_edge(0.006, 0.005, 0.5, True) == "low"  # 4.0 %
    assert summary_tune.at_edge(0.03, 0.0, 1.0, False) == "low" and summary_tune.at_edge(0.5, 0.0, 1.0, False) is None
    trials = pd.DataFrame({"study": "s", "method": "m", "trial": [0, 1], "state": "complete", "value": [0.5, 0.9],
                           "metric": "val_acc", "direction": "maximize", "budget": 2, "in_budget": True,
                           "chosen": [False, True], "epochs_reported": 0, "started": "", "finished": "",
                           "duration_s": 1.0, "lr": [0.05, 0.45], "weight_decay": [1e-4, 1e-4]})
    spaces = pd.DataFrame({"study": "s", "setting": ["lr", "weight_decay"], "low": [0.005, 1e-6], "high": [0.5, 1e-2],
                           "log": [True, True]})
    chosen, _ = summary_tune.tuning(trials, ["s"], spaces)
    assert chosen.at_range_edge.iloc[0] == "lr (high)"  # weight decay at 1e-4 is mid-range on the log scale


def test_a_new_metric_is_a_tuning_target_without_a_list_to_edit(monkeypatch):
    # a metric that classification_metrics writes and METRIC_KINDS gives a direction is a target at once;
    # one without a direction is not (there is nothing to maximize)
    from runner import metrics
    from runner.study import tune_settings, tuning_targets

    written = metrics.classification_metrics
    monkeypatch.setattr(metrics, "classification_metrics", lambda *a, **k: written(*a, **k) | {"top5": 1.0, "odd": 0.0})
    monkeypatch.setitem(metrics.METRIC_KINDS, "top5", metrics.Kind(True, True))
    metrics.metric_names.cache_clear()
    try:
        assert "val_top5" in tuning_targets() and "best_val_top5" in tuning_targets()
        assert "val_odd" not in tuning_targets()
        assert tune_settings({"metric": "val_top5"}).direction == "maximize"
    finally:
        metrics.metric_names.cache_clear()


def test_the_report_says_when_a_search_had_not_converged_and_where_its_trend_points():
    import itertools

    from runner.summary import tuning as summary_tune

    # focal's gamma on [1, 5] over 6 trials: each trial lower and better than the one before, the best the last
    # (trial 5 of 0–5). Chosen gamma 2 is 25 % into its range, not at an edge; but ρ = −1 with the best at the lowest
    # gamma explored: the trend points past the low end. Exact p of |ρ| = 1 with 6 trials: 2/6! = 2/720.
    values = [0.80, 0.81, 0.82, 0.83, 0.84, 0.85]
    trials = pd.DataFrame({"study": "s", "method": "loss=focal", "trial": range(6), "state": "complete",
                           "value": values, "metric": "val_acc", "direction": "maximize", "budget": 6,
                           "in_budget": True, "chosen": [False] * 5 + [True], "epochs_reported": 0, "started": "",
                           "finished": "", "duration_s": 1.0, "loss.gamma": [4.5, 4.0, 3.5, 3.0, 2.5, 2.0]})
    spaces = pd.DataFrame({"study": "s", "setting": ["loss.gamma"], "low": [1.0], "high": [5.0], "log": [False]})
    finals = pd.DataFrame({"study": ["s", "s;other", "other"], "stage": "final", "val_acc": [0.83, 0.84, 0.5]})
    chosen, sens = summary_tune.tuning(trials, ["s"], spaces, finals)
    row = chosen.iloc[0]
    assert not row.converged and row.last_improvement == 5
    assert row.selection_optimism == pytest.approx(0.85 - 0.835) and row.final_seeds == 2
    assert sens.iloc[0].spearman_rho == pytest.approx(-1.0) and sens.iloc[0].p_exact == pytest.approx(2 / 720)
    assert row.at_range_edge == "loss.gamma (trend past low: ρ = -1.00, p = 0.0028)"
    line = summary_tune.opening(chosen)[0]
    assert line.startswith("loss=focal: not converged: the best came at trial 5 of trials 0–5 (the last fifth of the "
                           "budget); raise tune.trials; selection optimism +1.5 points")
    # the best in the first trials: converged, and no trend flag when the best is not at the end it points to
    early = trials.assign(value=[0.85, 0.80, 0.81, 0.82, 0.83, 0.84], chosen=[True] + [False] * 5)
    chosen, _ = summary_tune.tuning(early, ["s"], spaces, finals)
    assert chosen.iloc[0].converged and chosen.iloc[0].at_range_edge == ""
    # the exact p against every pairing counted by hand (5 trials, one tie)
    x, y = np.array([1.0, 2.0, 2.0, 4.0, 5.0]), np.array([0.3, 0.1, 0.4, 0.2, 0.5])
    rho, p = summary_tune.spearman_exact(x, y)
    ref = sps.spearmanr(x, y).statistic
    perms = [sps.spearmanr(x, np.array(q)).statistic for q in itertools.permutations(y)]
    assert rho == pytest.approx(ref) and p == pytest.approx(np.mean(np.abs(perms) >= abs(ref) - 1e-12))


# ---------------------------------------------------------------- planning the final seeds

def test_finals_too_few_to_decide_are_refused_before_any_trial(tmp_path, data_dir, monkeypatch, capsys):
    res = tmp_path / "res"
    args = ["-m", "pooling=max,avg,softpool", *TINY, "tune.trials=1", "seed=0,1,2,3,4", f"data_dir={data_dir}",
            f"results_dir={res}"]
    assert run_tune(args, monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    # 2 comparisons: Holm needs 2/2^n < 0.025, so 7 seeds; 5 can never decide, whatever the runs show
    assert "plan: 2 comparisons against pooling=max (the grid's first" in err and "on 5 paired seeds" in err
    assert "it needs 7 paired seeds" in err and "tune.finals=sequential" in err and "tune.exploratory=true" in err
    assert not res.exists()
    assert run_tune([*args, "tune.finals=sequential", "tune.max_seeds=6"], monkeypatch, tmp_path) == 2
    assert "tune.max_seeds=6: sequential finals over 2 comparison(s) need at least 7 seeds" in capsys.readouterr().err


def test_sequential_finals_add_seeds_until_decided_and_replay_after_a_kill(tmp_path, data_dir, monkeypatch):
    # one comparison: looks at 6 and 7 seeds (step 1, at most 7), tuning seed 3 skipped: final seeds 0,1,2,4,5,6,7
    res = tmp_path / "res"
    args = ["-m", "pooling=max,avg", *TINY, "tune.trials=1", "tune.seeds=[3]", "tune.finals=sequential",
            "tune.max_seeds=7", "tune.step=1", "baseline=pooling=max", f"data_dir={data_dir}", f"results_dir={res}"]
    assert run_tune(args, monkeypatch, tmp_path) in (0, 1)
    saved = json.loads((res / "sequential.json").read_text())
    assert saved["looks"] == [6, 7] and saved["comparisons"] == 1 and saved["metric"] == "test_acc"
    (row,) = saved["rows"]
    assert row["method"] == "pooling=avg" and row["baseline"] == "pooling=max"
    assert (row["decision"], row["seeds"]) in {("better", 6), ("worse", 6), ("better", 7), ("worse", 7),
                                               ("undecided", 7)}
    runs = pd.read_csv(res / "runs.csv")
    finals = runs[runs.stage == "final"]
    n = 6 if row["decision"] != "undecided" and row["seeds"] == 6 else 7
    for pooling in ("max", "avg"):
        assert sorted(finals[finals.pooling == pooling].seed) == [0, 1, 2, 4, 5, 6, 7][:n]
    # killed after its runs: the same command replays the looks on the runs it has and decides the same
    before = len(runs)
    assert run_tune(args, monkeypatch, tmp_path) in (0, 1)
    assert json.loads((res / "sequential.json").read_text()) == saved
    assert len(pd.read_csv(res / "runs.csv")) == before
    # the summary reports the sequential decision, not a fixed-n verdict its stopping would invalidate
    from runner.summary.cli import main as summary_main

    assert summary_main([str(res), "--baseline", "pooling=max", "--no-plots"]) == 0
    c = pd.read_csv(res / "comparison.csv").query("metric == 'test_acc'").iloc[0]
    assert c.verdict.startswith(f"{row['decision']} at {row['seeds']} seeds") and "(sequential: looks at 6, 7" in \
        c.verdict


# ---------------------------------------------------------------- the journal under kills and edits

def _one(res, data_dir, trials):
    return ["pooling=max", *TINY, f"tune.trials={trials}", f"data_dir={data_dir}", f"results_dir={res}"]


def test_a_journal_cut_mid_entry_is_repaired_and_the_study_goes_on(tmp_path, data_dir, monkeypatch, capsys):
    res = tmp_path / "res"
    assert run_tune(_one(res, data_dir, 1), monkeypatch, tmp_path) == 0
    path = res / "tune" / "journal.log"
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a kill (or a full disk) in the middle of the next append
        f.write(b'{"op_code":5,"worker_id":"x","trial_id":1,"par')
    assert run_tune(_one(res, data_dir, 2), monkeypatch, tmp_path) == 0
    assert "its last entry was cut off" in capsys.readouterr().out
    (cut,) = (res / "tune").glob("journal.log.cut-*")
    assert cut.read_bytes() == b'{"op_code":5,"worker_id":"x","trial_id":1,"par'
    assert path.read_bytes().startswith(whole)  # nothing recorded before the cut is lost
    assert len(list(studies(res).values())[0].trials) == 2
    # a foreign line before the end is not guessed at: exit 2, the line named, the file left as it is
    text = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(text[:2] + [b"# a note"] + text[2:]))
    assert run_tune(_one(res, data_dir, 2), monkeypatch, tmp_path) == 2
    assert "journal.log: line 3 is not an entry of Optuna's journal" in capsys.readouterr().err


def test_a_trial_cut_off_before_its_settings_is_set_aside_never_run_at_defaults(tmp_path, data_dir, monkeypatch,
                                                                              capsys):
    res = tmp_path / "res"
    assert run_tune(_one(res, data_dir, 1), monkeypatch, tmp_path) == 0
    (study,) = studies(res).values()
    study.ask()  # created, then killed before the sampler recorded lr and weight_decay
    assert run_tune(_one(res, data_dir, 2), monkeypatch, tmp_path) == 0
    assert "trial 1 was cut off before its settings were recorded; it is set aside" in capsys.readouterr().out
    trials = pd.read_csv(res / "tune" / "trials.csv")
    counted = trials[trials.in_budget]
    assert counted.trial.tolist() == [0, 2] and (counted.state == "complete").all()
    assert counted.lr.notna().all() and not trials[trials.trial == 1].in_budget.iloc[0]
    runs = pd.read_csv(res / "runs.csv")  # every run at a tuned trial's setting: none at the default lr
    assert set(runs.lr.round(12)) <= set(counted.lr.round(12)) and 0.05 not in set(runs.lr)


def test_a_journal_setting_outside_the_space_never_becomes_an_override(tmp_path, data_dir, monkeypatch, capsys):
    from optuna.distributions import FloatDistribution

    res = tmp_path / "res"
    assert run_tune(_one(res, data_dir, 1), monkeypatch, tmp_path) == 0
    (study,) = studies(res).values()
    # an edited entry: lr = 15, far outside its declared range [0.005, 0.5]
    study.ask({"lr": FloatDistribution(10.0, 20.0, log=True), "weight_decay": FloatDistribution(1e-6, 1e-2, log=True)})
    before = len(pd.read_csv(res / "runs.csv"))
    assert run_tune(_one(res, data_dir, 2), monkeypatch, tmp_path) == 2
    err = capsys.readouterr().err
    assert "trial 1 of study" in err and "has settings outside its space (lr=" in err
    assert len(pd.read_csv(res / "runs.csv")) == before  # nothing ran


def test_a_trials_cost_is_its_own_runs_summed_from_their_records(tuned):
    # Optuna's start and end of a trial span its whole round; a trial's cost is what its own runs recorded
    own: dict[tuple[str, int], list[float]] = {}
    for folder in (tuned / "runs").iterdir():
        record = json.loads((folder / "result.json").read_text())
        assert record["cpu_seconds"] > 0 and record["wall_seconds"] >= record["train_seconds"] > 0
        for e in json.loads((folder / "tune.json").read_text()):
            if e["stage"] == "tune":
                own.setdefault((e["study"], e["trial"]), []).append(record["wall_seconds"])
    trials = pd.read_csv(tuned / "tune" / "trials.csv")
    assert len(trials) == len(own) and (trials.runs == 1).all()  # tune.seeds: one run per trial
    for t in trials.itertuples():
        assert t.duration_s == pytest.approx(sum(own[(t.study, t.trial)]))
    assert trials.duration_s.sum() == pytest.approx(sum(map(sum, own.values())))
    assert (trials.cpu_s > 0).all()


def test_hydras_record_of_a_tuning_command_keeps_its_tune_settings(tuned):
    (launched,) = (tuned / "tune" / "launch").glob("**/multirun.yaml")
    task = OmegaConf.load(launched).hydra.overrides.task
    assert "tune.trials=3" in task and "tune.exploratory=true" in task
