"""Experiment tracking beside the tables (``logger=tensorboard|mlflow``): optional, and never part of a run.

A tracker gets the run's config (as text and flattened parameters), each epoch's metrics by epoch and the
final metrics, under the run id. The run folder and runs.csv stay the record: a tracker that fails says so
once and the run goes on. A resumed run continues its tracker run (MLflow: the run tagged with its id).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from runner.progress import error


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """No tracking (``logger=none``); the others override what they record."""

    def epoch(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, record: Mapping[str, Any]) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, cfg: DictConfig, run_id: str, label: str) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: needs the tensorboard package (tracking extras)

        folder = Path(cfg.logger.dir or Path(cfg.results_dir) / "tensorboard") / run_id
        self.writer = SummaryWriter(log_dir=str(folder))
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                       for k, v in _flat(OmegaConf.to_container(cfg, resolve=True)).items() if v is not None}
        self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "\n```")
        self.writer.add_text("label", label)

    def epoch(self, row: Mapping[str, Any]) -> None:
        for k, v in _numbers(row).items():
            if k != "epoch":
                self.writer.add_scalar(k, v, int(row["epoch"]))
        self.writer.flush()

    def finish(self, record: Mapping[str, Any]) -> None:
        final = {f"final/{k}": v for k, v in _numbers(record.get("metrics") or {}).items()}
        self.writer.add_hparams(self.params, final, run_name=".")  # the config beside the final metrics
        self.writer.close()


class MLflow(Tracker):
    def __init__(self, cfg: DictConfig, run_id: str, label: str) -> None:
        import mlflow  # here: needs mlflow (tracking extras)

        self.mlflow = mlflow
        uri = cfg.logger.uri or f"sqlite:///{(Path(cfg.results_dir) / 'mlflow.db').resolve()}"
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(cfg.logger.experiment)
        experiment = found.experiment_id if found else self.client.create_experiment(cfg.logger.experiment)
        earlier = self.client.search_runs([experiment], filter_string=f"tags.runner_run_id = '{run_id}'", max_results=1)
        if earlier:  # a resumed (or forced) run continues its MLflow run
            self.run = earlier[0].info.run_id
            self.client.update_run(self.run, status="RUNNING")
        else:
            self.run = self.client.create_run(experiment, run_name=run_id,
                                              tags={"runner_run_id": run_id, "label": label}).info.run_id
            params = _flat(OmegaConf.to_container(cfg, resolve=True))
            self.client.log_batch(self.run, params=[mlflow.entities.Param(k, str(v)[:500]) for k, v in params.items()
                                                    if v is not None])

    def epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row["epoch"])
        metrics = [self.mlflow.entities.Metric(k, v, 0, step) for k, v in _numbers(row).items() if k != "epoch"]
        self.client.log_batch(self.run, metrics=metrics)

    def finish(self, record: Mapping[str, Any]) -> None:
        final = [self.mlflow.entities.Metric(k, v, 0, int(record.get("epochs_done") or 0))
                 for k, v in _numbers(record.get("metrics") or {}).items()]
        self.client.log_batch(self.run, metrics=final)
        status = {"ok": "FINISHED", "interrupted": "KILLED"}.get(record.get("status"), "FAILED")
        self.client.set_terminated(self.run, status=status)


KINDS = {"none": Tracker, "tensorboard": TensorBoard, "mlflow": MLflow}


class Safe(Tracker):
    """A tracker whose failures are reported once and never stop the run."""

    def __init__(self, inner: Tracker, kind: str) -> None:
        self.inner, self.kind, self.broken = inner, kind, False

    def _call(self, method: str, arg: Mapping[str, Any]) -> None:
        if self.broken:
            return
        try:
            getattr(self.inner, method)(arg)
        except Exception as e:  # tracking is a convenience; the run folder and the tables are the record
            self.broken = True
            error(
                f"logger={self.kind}: {type(e).__name__}: {' '.join(str(e).split())[:300]}; tracking stops, the run "
                f"goes on"
            )

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._call("epoch", row)

    def finish(self, record: Mapping[str, Any]) -> None:
        self._call("finish", record)


def open_tracker(cfg: DictConfig, run_id: str, label: str) -> Tracker:
    kind = cfg.logger.kind
    if kind == "none":
        return Tracker()
    try:
        return Safe(KINDS[kind](cfg, run_id, label), kind)
    except Exception as e:
        error(
            f"logger={kind}: could not start ({type(e).__name__}: {' '.join(str(e).split())[:300]}); the run goes on "
            f"untracked"
        )
        return Tracker()
