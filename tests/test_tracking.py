"""logger=mlflow and logger=tensorboard, read back with the real libraries; the logger is not part of a run."""
from __future__ import annotations

import pandas as pd
import pytest
from conftest import TINY

from runner.plan import make_plan
from runner.run import run


def test_the_logger_does_not_change_the_run(data_dir, tmp_path):
    ids = {make_plan([*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}", f"logger={k}"]).run_id
           for k in ("none", "tensorboard", "mlflow")}
    assert len(ids) == 1


def test_mlflow_holds_the_config_every_epoch_and_the_final_metrics(data_dir, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    record = run(make_plan([*TINY, "epochs=2", f"data_dir={data_dir}", f"results_dir={tmp_path}", "logger=mlflow"]))
    assert record["status"] == "ok"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["runner"])
    assert len(runs) == 1 and runs["tags.mlflow.runName"].iloc[0] == record["run_id"]
    table = pd.read_csv(tmp_path / "runs.csv")
    for metric in ("test_acc", "test_nll", "test_ece_ts", "val_acc"):
        assert runs[f"metrics.{metric}"].iloc[0] == pytest.approx(table[metric].iloc[0])
    assert runs["params.loss._target_"].iloc[0] == "runner.losses.CrossEntropy" and runs["params.epochs"].iloc[0] == "2"
    history = client.get_metric_history(runs["run_id"].iloc[0], "train_loss")
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert [(h.step, pytest.approx(h.value)) for h in history] == list(zip(epochs.epoch, epochs.train_loss))
    assert runs["status"].iloc[0] == "FINISHED"
    # the axes a user filters by, as MLflow's own query finds them
    found = mlflow.search_runs(experiment_names=["runner"], filter_string="params.pooling = 'max' and "
                               "params.norm = 'batch' and tags.loss = 'ce' and params.stage = 'run'")
    assert len(found) == 1 and found["params.run_id"].iloc[0] == record["run_id"]
    assert found["params.seed"].iloc[0] == "0" and found["params.git_commit"].iloc[0] == str(record["git_commit"])
    assert mlflow.search_runs(experiment_names=["runner"], filter_string="params.pooling = 'avg'").empty


def test_tensorboard_event_files_hold_every_epoch(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = run(make_plan([*TINY, "epochs=2", f"data_dir={data_dir}", f"results_dir={tmp_path}",
                            "logger=tensorboard"]))
    events = EventAccumulator(str(tmp_path / "tensorboard" / record["run_id"]))
    events.Reload()
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    for metric in ("val_acc", "test_nll", "train_loss"):
        scalars = events.Scalars(metric)
        assert [s.step for s in scalars] == list(epochs.epoch)
        assert [s.value for s in scalars] == pytest.approx(list(epochs[metric]), rel=1e-6)  # stored as float32
    assert any("config" in tag for tag in events.Tags()["tensors"])  # the config, as text
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = EventAccumulator(str(tmp_path / "tensorboard" / record["run_id"]))
    start.Reload()
    content = start.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["pooling"].string_value == "max" and hparams["run_id"].string_value == record["run_id"]
    assert hparams["seed"].number_value == 0 and hparams["stage"].string_value == "run"


@pytest.mark.slow
def test_an_unreachable_tracking_server_costs_one_probe_said_once(data_dir, tmp_path, capsys):
    pytest.importorskip("mlflow")
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for seed in (0, 1):
        record = run(make_plan([*TINY, f"seed={seed}", f"data_dir={data_dir}", f"results_dir={tmp_path}",
                                "logger=mlflow", f"logger.uri=http://127.0.0.1:{port}"]))
        assert record["status"] == "ok"
    err = capsys.readouterr().err
    assert err.count(f"the tracking server http://127.0.0.1:{port} did not answer") == 1
    assert "go on untracked" in err


def test_finished_runs_reach_a_tracker_from_their_records_once(data_dir, tmp_path, main_cli, capsys):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from runner.records import main as records_main

    assert main_cli("-m", "pooling=max,avg", *TINY, "epochs=2", f"data_dir={data_dir}",
                    f"results_dir={tmp_path}").returncode == 0  # trained without a tracker
    for kind in ("mlflow", "tensorboard"):
        assert records_main(["log", str(tmp_path), "--to", kind]) == 0
        assert f"sent 2 finished run(s) to {kind}; 0 were there already" in capsys.readouterr().out
        assert records_main(["log", str(tmp_path), "--to", kind]) == 0  # again: nothing new
        assert f"sent 0 finished run(s) to {kind}; 2 were there already" in capsys.readouterr().out
    epochs, table = pd.read_csv(tmp_path / "epochs.csv"), pd.read_csv(tmp_path / "runs.csv")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["runner"], filter_string="params.pooling = 'avg'")
    rid = table[table.pooling == "avg"].run_id.iloc[0]
    assert len(found) == 1 and found["params.run_id"].iloc[0] == rid and found["status"].iloc[0] == "FINISHED"
    assert found["metrics.test_acc"].iloc[0] == pytest.approx(table[table.pooling == "avg"].test_acc.iloc[0])
    history = mlflow.MlflowClient().get_metric_history(found["run_id"].iloc[0], "train_loss")
    mine = epochs[epochs.run_id == rid]
    assert [(h.step, pytest.approx(h.value)) for h in history] == list(zip(mine.epoch, mine.train_loss))  # once
    events = EventAccumulator(str(tmp_path / "tensorboard" / rid))
    events.Reload()
    assert [s.value for s in events.Scalars("val_acc")] == pytest.approx(list(mine.val_acc), rel=1e-6)
    # a tracker that cannot start: said, exit 1, nothing claimed as sent
    assert records_main(["log", str(tmp_path), "--to", "mlflow", "--uri", "http://127.0.0.1:9"]) == 1
    said = capsys.readouterr()
    assert "could not start, so nothing more was sent" in said.err and "sent 0" not in said.out
