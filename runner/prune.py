"""Pruning a trial of ``python -m runner.tune`` from inside its run: Optuna's median pruner, per epoch.

The tuner gives a trial it may prune the setting ``trial`` (not part of the run's identity): the journal file,
the study, the trial number, the metric and the step offset of this seed. After each epoch the run reports
its validation metric to the study and stops when the pruner says so. This works in any process that can
open the journal (a local worker, a SLURM job), because the study lives in that file, not in the tuner.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping


class Pruned(Exception):
    """The pruner stopped this trial: its runs record status ``pruned`` (a tuning result, not a finished run)."""


def median_pruner(startup_trials: int) -> Any:
    import optuna  # here, as in reporter: a run imports this module for Pruned, and only a pruned trial needs Optuna

    # Prunes a trial whose value at a step is worse than the median of earlier trials' values at that step,
    # once `startup_trials` trials have finished (Optuna's MedianPruner).
    return optuna.pruners.MedianPruner(n_startup_trials=startup_trials)


def trial_setting(journal: str, study: str, number: int, metric: str, offset: int, startup_trials: int) -> str:
    """The value of the run setting ``trial`` for one seed of a trial."""
    return json.dumps({"journal": journal, "study": study, "number": number, "metric": metric, "offset": offset,
                       "startup": startup_trials}, sort_keys=True)


def reporter(setting: str) -> Callable[[Mapping[str, Any]], None]:
    """``report(epoch_row)``: report the row's metric at this seed's step; raise Pruned when the trial should stop."""
    import optuna

    from runner.journal import storage as journal_storage

    info = json.loads(setting)
    storage = journal_storage(Path(info["journal"]))
    study = optuna.load_study(study_name=info["study"], storage=storage, pruner=median_pruner(int(info["startup"])))
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, int(info["number"]))
    trial = optuna.trial.Trial(study, trial_id)
    metric = str(info["metric"]).removeprefix("best_")  # per epoch, the best so far is judged by the epoch's value

    def report(row: Mapping[str, Any]) -> None:
        trial.report(float(row[metric]), int(info["offset"]) + int(row["epoch"]))
        if trial.should_prune():
            raise Pruned(f"pruned after epoch {row['epoch']}: {metric} {row[metric]:.4f} is below the median of "
                         "earlier trials at this epoch")

    return report
