"""Experiment tracking beside the tables (``logger=tensorboard|mlflow``): optional, and never part of a run.

A tracker gets the run's config (as text and flattened parameters), each epoch's metrics by epoch and the
final metrics, under the run id. The run folder and runs.csv stay the record: a tracker that fails says so
once and the run goes on. A resumed run continues its tracker run (MLflow: the run tagged with its id).
"""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf, open_dict

from runner.progress import error
from runner.schema import AXES


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_axes(choices: Mapping[str, Any], seed: Any, run_id: str, commit: str | None, stage: str) -> dict[str, Any]:
    """What a tracker gets to filter runs by: the run's option in each group, its seed, id, commit and stage."""
    return {a: choices.get(a) for a in AXES} | {"seed": seed, "run_id": run_id, "git_commit": commit, "stage": stage}


def _axes(axes: Mapping[str, Any]) -> dict[str, Any]:
    """The axes a user filters and groups runs by (``pooling=softpool``, the seed, the run id, the stage), beside
    the flattened config whose keys hold only class paths and settings (``pooling._target_``)."""
    return {k: v for k, v in axes.items() if v is not None}


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """No tracking (``logger=none``); the others override what they record. ``known``: the tracker already holds
    this run, finished (a replay of the records then sends nothing)."""

    known = False

    def epoch(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, record: Mapping[str, Any]) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, cfg: DictConfig, run_id: str, label: str, axes: Mapping[str, Any], replay: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: needs the tensorboard package (tracking extras)

        folder = Path(cfg.logger.dir or Path(cfg.results_dir) / "tensorboard") / run_id
        self.known = replay and any(folder.glob("events.out.tfevents.*"))
        if self.known:
            return
        self.writer = SummaryWriter(log_dir=str(folder))
        flat = _flat(OmegaConf.to_container(cfg, resolve=True)) | _axes(axes)
        self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat.items()
                       if v is not None}
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


class Unreachable(Exception):
    """A tracking server that did not answer the probe: the command goes on untracked, said once."""


_probed: dict[str, bool] = {}


def _probe(uri: str, timeout: float = 2.0) -> None:
    """One short TCP connect to an http(s) tracking server per process, instead of MLflow's minutes of retries for
    every call of every run; an Unreachable the first time it fails, and for every later run of the process."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    if uri not in _probed:
        try:
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            _probed[uri] = True
        except OSError:
            _probed[uri] = False
    if not _probed[uri]:
        raise Unreachable(f"the tracking server {uri} did not answer within {timeout:g} s")


class MLflow(Tracker):
    """The default store is SQLite in results_dir: its URI is built by SQLAlchemy (a ``?`` or ``#`` in the path stays
    part of the path), and every call on it is made under a file lock beside it, so that runs which start together
    create and migrate the store once and never write it at the same moment (SQLite's own locking makes parallel
    first starts fail half-migrated)."""

    def __init__(self, cfg: DictConfig, run_id: str, label: str, axes: Mapping[str, Any], replay: bool = False) -> None:
        import mlflow  # here: needs mlflow (tracking extras)
        from sqlalchemy.engine import URL

        self.mlflow = mlflow
        db = (Path(cfg.results_dir) / "mlflow.db").resolve()
        uri = cfg.logger.uri or URL.create("sqlite", database=str(db)).render_as_string(hide_password=False)
        _probe(uri)
        self.lock = FileLock(f"{db}.lock") if not cfg.logger.uri else contextlib.nullcontext()
        # MLflow makes the parent folder of the URI's path before decoding it: for a results_dir with '?' or '#' in
        # its path, empty folders named with the escapes. Every opening removes them once its store is open (rmdir:
        # only while empty), so that runs opening the store together leave none, whichever of them made them (a run
        # that removed only a folder it had seen missing left the one a run beside it made again).
        stray = None if cfg.logger.uri else Path(uri.removeprefix("sqlite:///")).parent
        # Opening the store checks its schema (about 1 s of CPU): only the first opening, which creates and migrates
        # it, needs the lock; later ones run side by side, so that 32 runs starting together do not queue for 32 s.
        ready = Path(f"{db}.ready")
        if cfg.logger.uri or (ready.exists() and db.exists()):
            self.client = mlflow.MlflowClient(tracking_uri=uri)
        with self.lock:
            if not hasattr(self, "client"):
                self.client = mlflow.MlflowClient(tracking_uri=uri)
                ready.touch()
            found = self.client.get_experiment_by_name(cfg.logger.experiment)
            experiment = found.experiment_id if found else self.client.create_experiment(
                cfg.logger.experiment, artifact_location=None if cfg.logger.uri else str(db.parent / "mlruns"))
            earlier = self.client.search_runs([experiment], filter_string=f"tags.runner_run_id = '{run_id}'",
                                              max_results=1)
            if earlier and replay:  # sent before: a replay of the records adds nothing
                self.known = True
            elif earlier:  # a resumed (or forced) run continues its MLflow run
                self.run = earlier[0].info.run_id
                self.client.update_run(self.run, status="RUNNING")
            else:
                self.run = self.client.create_run(experiment, run_name=run_id, tags={
                    "runner_run_id": run_id, "label": label} | {k: str(v) for k, v in _axes(axes).items()}).info.run_id
                params = _flat(OmegaConf.to_container(cfg, resolve=True)) | _axes(axes)
                self.client.log_batch(self.run, params=[mlflow.entities.Param(k, str(v)[:500])
                                                        for k, v in params.items() if v is not None])
        if stray is not None:
            _remove_escaped(stray, db.parent)

    def epoch(self, row: Mapping[str, Any]) -> None:
        step = int(row["epoch"])
        metrics = [self.mlflow.entities.Metric(k, v, 0, step) for k, v in _numbers(row).items() if k != "epoch"]
        with self.lock:
            self.client.log_batch(self.run, metrics=metrics)

    def finish(self, record: Mapping[str, Any]) -> None:
        final = [self.mlflow.entities.Metric(k, v, 0, int(record.get("epochs_done") or 0))
                 for k, v in _numbers(record.get("metrics") or {}).items()]
        status = {"ok": "FINISHED", "interrupted": "KILLED"}.get(record.get("status"), "FAILED")
        with self.lock:
            self.client.log_batch(self.run, metrics=final)
            self.client.set_terminated(self.run, status=status)


def _remove_escaped(escaped: Path, real: Path) -> None:
    """The empty folders of ``escaped`` (a path as MLflow made it, escapes undecoded) that are not folders of
    ``real``, from the deepest up; a folder with anything in it stays, and so do those above it."""
    for made, meant in zip([escaped, *escaped.parents], [real, *real.parents]):
        if made == meant:
            return
        try:
            made.rmdir()
        except FileNotFoundError:  # a run beside this one removed it
            continue
        except OSError:
            return


def send_finished(runs: Sequence[tuple[Mapping[str, Any], str, Any]], root: Path, kind: str, uri: str | None = None,
                  experiment: str = "runner") -> tuple[int, int]:
    """``python -m runner.records log``: finished runs sent to a tracker from their records, each given as (record,
    stage, epochs frame or None): the config, the axes, each epoch's metrics and the final metrics, without
    training. A run the tracker holds already is left as it is, so a second call adds nothing. Returns (sent,
    already there)."""
    sent = known = 0
    for record, stage, epochs in runs:
        cfg = OmegaConf.create(dict(record["config"]))
        with open_dict(cfg):
            cfg.results_dir = str(root)
            cfg.logger = {"kind": kind, "uri": uri, "experiment": experiment, "dir": None}
        axes = run_axes(record.get("choices") or {}, cfg.get("seed"), record["run_id"], record.get("git_commit"), stage)
        tracker = open_tracker(cfg, record["run_id"], record["run_id"], axes, replay=True)
        if type(tracker) is Tracker:  # could not start (said by open_tracker): the caller says nothing was sent
            raise ConnectionError(f"logger={kind} could not start, so nothing more was sent")
        if tracker.known:
            known += 1
            continue
        for row in ([] if epochs is None else epochs.to_dict("records")):
            tracker.epoch(row)
        tracker.finish(record)
        sent += 1
    return sent, known


KINDS = {"none": Tracker, "tensorboard": TensorBoard, "mlflow": MLflow}
_said: set[str] = set()


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

    @property
    def known(self) -> bool:  # type: ignore[override]
        return self.inner.known

    def epoch(self, row: Mapping[str, Any]) -> None:
        self._call("epoch", row)

    def finish(self, record: Mapping[str, Any]) -> None:
        self._call("finish", record)


def open_tracker(cfg: DictConfig, run_id: str, label: str, axes: Mapping[str, Any] | None = None,
                 replay: bool = False) -> Tracker:
    """The run's tracker; ``axes``: its options by group (``pooling: softpool``), seed, run_id, git_commit, stage;
    ``replay``: a finished run sent from its records (``known`` when the tracker has it already)."""
    kind = cfg.logger.kind
    if kind == "none":
        return Tracker()
    try:
        return Safe(KINDS[kind](cfg, run_id, label, axes or {}, replay), kind)
    except Unreachable as e:  # said once per process: every later run of a grid is untracked without a wait
        if str(e) not in _said:
            _said.add(str(e))
            error(f"logger={kind}: {e}; the runs of this command go on untracked")
        return Tracker()
    except Exception as e:
        error(
            f"logger={kind}: could not start ({type(e).__name__}: {' '.join(str(e).split())[:300]}); the run goes on "
            f"untracked"
        )
        return Tracker()
