"""``python -m runner`` as a user runs it, in a subprocess."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, TINY, cli, write_cifar, write_mnist_like


def test_help_lists_groups_and_options_under_the_apps_header():
    out = cli("--help").stdout
    assert out.startswith("runner: train and evaluate")
    assert "pooling: adapool, avg, gated, lp, max, mixed, softpool, stochastic, tree" in out and "dataset: cifar10, cifar100, fashion_mnist, mnist, mnist5k" in out


def test_cfg_job_prints_the_resolved_config():
    out = cli("--cfg", "job", "pooling=avg", "seed=3").stdout
    assert "_target_: models.pooling.AvgPool" in out and "seed: 3" in out


def test_multirun_with_cfg_is_a_usage_error_not_a_traceback():
    res = cli("-m", "pooling=max,avg", "--cfg", "job")
    assert res.returncode == 2 and res.stderr == "error: --multirun and --cfg cannot be combined; give one of them.\n"


def test_config_error_exits_2_with_one_paragraph_and_writes_nothing(tmp_path):
    for args in (["pooling=maxx"], ["-m", "pooling=max,avgg", "seed=0,1"], ["epochs=abc"]):
        res = cli(*args, f"results_dir={tmp_path / 'out'}", cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert list(tmp_path.iterdir()) == []  # no results folder, no Hydra outputs


def test_grid_records_every_cell_then_skips_them_and_force_reruns(data_dir, tmp_path):
    args = ["-m", "pooling=max,avg", "seed=0,1,2", *TINY, f"results_dir={tmp_path}"]
    env = {"DATA_DIR": str(data_dir)}  # the data folder from the environment
    first = cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 6 and set(runs["status"]) == {"ok"} and runs["run_id"].is_unique
    assert sorted(zip(runs["pooling"], runs["seed"])) == [(p, s) for p in ("avg", "max") for s in (0, 1, 2)]
    assert runs["test_acc"].between(0, 1).all() and (runs["dataset"] == "mnist").all()
    assert len(pd.read_csv(tmp_path / "epochs.csv")) == 6
    assert "grid of 6 runs: 6 ok" in first.stdout

    second = cli(*args, env=env)
    assert second.returncode == 0 and second.stdout.count("already completed") == 6
    assert pd.read_csv(tmp_path / "runs.csv")["started_at"].tolist() == runs["started_at"].tolist()

    forced = cli(*args[:3], *TINY, f"results_dir={tmp_path}", "force=true", "pooling=max", env=env)
    assert forced.returncode == 0 and "already completed" not in forced.stdout
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 6


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    # Hand-made CIFAR files fail torchvision's md5 check (verify_checksums defaults to true): an error
    # inside the run, after the pre-flight found the files, so the cell fails and the grid goes on.
    data = tmp_path / "data"
    write_cifar(data, 10, n_train=100, n_test=20)
    write_mnist_like(data / "MNIST" / "raw", n_train=200, n_test=50)
    res = cli("-m", "dataset=cifar10,mnist", *TINY[:-1], f"data_dir={data}", f"results_dir={tmp_path / 'out'}")
    assert res.returncode == 1
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("dataset")
    assert runs.loc["cifar10", "status"] == "failed" and "corrupted" in runs.loc["cifar10", "error"]
    assert runs.loc["mnist", "status"] == "ok"
    assert "grid of 2 runs: 1 failed, 1 ok" in res.stdout


def test_ctrl_c_leaves_no_partial_files_and_the_same_command_resumes(data_dir, tmp_path):
    args = [sys.executable, "-m", "runner", *TINY, "epochs=10", f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert pd.read_csv(tmp_path / "runs.csv").loc[0, "status"] == "interrupted"
    again = cli(*args[3:])  # the same command
    assert again.returncode == 0 and "already completed" not in again.stdout
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "status"] == "ok" and runs.loc[0, "epochs_done"] == 10


def test_concurrent_processes_on_one_results_root(data_dir, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "runner", *TINY, f"seed={s}", f"data_dir={data_dir}",
                               f"results_dir={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for s in range(3)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2] and runs["run_id"].is_unique


@pytest.mark.slow
def test_default_run_reaches_097_on_mnist5k(tmp_path):
    """The README's `make run`: the default config on the embedded digits."""
    start = time.perf_counter()
    res = cli(f"results_dir={tmp_path}", timeout=600)
    assert res.returncode == 0, res.stderr
    row = pd.read_csv(tmp_path / "runs.csv").iloc[0]
    assert row["dataset"] == "mnist5k" and row["status"] == "ok"
    assert row["test_acc"] >= 0.97
    print(f"default run: test_acc {row['test_acc']:.4f} in {time.perf_counter() - start:.1f}s wall")


POOLINGS = "max,avg,softpool,mixed,gated,tree,lp,stochastic,adapool"


@pytest.mark.slow
def test_every_pooling_option_trains_on_mnist5k(tmp_path):
    res = cli("-m", f"pooling={POOLINGS}", "epochs=1", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["pooling"]) == sorted(POOLINGS.split(",")) and set(runs["status"]) == {"ok"}
    assert (runs["test_acc"] > 0.3).all(), runs[["pooling", "test_acc"]]  # one epoch learns something: chance is 0.1


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=resnet20", "model.downsample=pool"], ["model=vgg11"]])
def test_every_pooling_option_trains_in_the_cifar_models(model, data_dir, tmp_path):
    res = cli("-m", f"pooling={POOLINGS}", *model, *TINY, "dataset=cifar10", "dataset.verify_checksums=false",
              f"data_dir={data_dir}", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["pooling"]) == sorted(POOLINGS.split(",")) and set(runs["status"]) == {"ok"}
    assert set(runs["model"]) == {model[0].split("=")[1]} and runs["test_acc"].between(0, 1).all()


@pytest.mark.slow
def test_every_loss_trains_on_mnist5k_and_distillation_trains_its_teacher_once(tmp_path):
    losses = "ce,zloss,focal,focal_adaptive,dual_focal,dice,jaccard,dice_sa,ce_zreg"
    res = cli("-m", f"loss={losses}", "epochs=1", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["loss"]) == sorted(losses.split(",")) and set(runs["status"]) == {"ok"}
    assert (runs["test_acc"] > 0.2).all(), runs[["loss", "test_acc"]]  # chance is 0.1

    res = cli("-m", "loss=kd,pld,ttm", "teacher=simple_cnn_wide", "epochs=1", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("training it first") == 1
    runs = pd.read_csv(tmp_path / "runs.csv")
    students = runs[runs["loss"].isin(["kd", "pld", "ttm"])]
    assert len(students) == 3 and set(students["status"]) == {"ok"} and students["teacher_run_id"].nunique() == 1
    teacher = runs[runs["run_id"] == students["teacher_run_id"].iloc[0]].iloc[0]
    assert teacher["model.widths"] == "[64, 128]" and teacher["epochs"] == 12
    assert (students["teacher_test_acc"] == teacher["test_acc"]).all()


NORMS = "batch,none,group,layer,instance,weight_norm,spectral_norm,evonorm_b0,evonorm_s0,selu,online_norm,powernorm"


@pytest.mark.slow
def test_every_norm_trains_on_mnist5k_and_fixup_in_the_resnet(tmp_path):
    res = cli("-m", f"norm={NORMS}", "epochs=1", f"results_dir={tmp_path}", timeout=900)
    assert res.returncode == 0, res.stderr
    for extra in (["model=resnet20", "norm=fixup"], ["norm=weight_norm", "norm@norm.block=batch"]):
        res = cli(*extra, "epochs=1", f"results_dir={tmp_path}")
        assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["norm"]) == sorted(NORMS.split(",") + ["fixup", "weight_norm"]) and set(runs["status"]) == {"ok"}
    assert runs["test_acc"].between(0, 1).all() and (runs.loc[runs["norm"] == "batch", "test_acc"] > 0.5).all()
    assert sorted(runs["norm.block"].dropna()) == ["batch", "none", "none"]  # weight_norm+batch, weight_norm, spectral_norm
    cols = list(runs.columns)  # the norm's settings sit beside the learning rate and weight decay
    assert cols.index("weight_decay") + 1 == cols.index("norm.alpha_bkw") and "norm.groups" in cols
