"""``python -m runner`` as a user runs it: through its entry point in this process (``main_cli``), and in a real
subprocess (``cli``) where only a process shows it: a signal, parallel processes, what gets imported, one config
error and one grid end to end."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, TINY, cli, write_cifar, write_mnist_like


def test_help_lists_groups_and_options_under_the_apps_header(main_cli):
    out = main_cli("--help").stdout
    assert out.startswith("runner: train and evaluate")
    for group in ("pooling", "dataset", "norm", "loss"):  # each group with its options, as conf/ has them
        assert f"{group}: {options(group).replace(',', ', ')}" in out


def test_cfg_job_prints_the_resolved_config(main_cli):
    out = main_cli("--cfg", "job", "pooling=avg", "seed=3").stdout
    assert "_target_: models.pooling.AvgPool" in out and "seed: 3" in out


def test_multirun_with_cfg_hydra_is_a_usage_error_not_a_traceback(main_cli):
    res = main_cli("-m", "pooling=max,avg", "--cfg", "hydra")  # -m --cfg job is the grid's preview
    assert res.returncode == 2 and res.stderr == "error: --multirun and --cfg cannot be combined; give one of them.\n"


def test_config_error_exits_2_with_one_paragraph_and_writes_nothing(tmp_path, main_cli):
    for run, args in (
        (cli, ["pooling=maxx"]),
        (main_cli, ["-m", "pooling=max,avgg", "seed=0,1"]),
        (main_cli, ["epochs=abc"]),
    ):
        res = run(*args, f"results_dir={tmp_path / 'out'}", cwd=tmp_path)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert list(tmp_path.iterdir()) == []  # no results folder, no Hydra outputs


def test_grid_records_every_cell_then_skips_them_and_force_reruns(data_dir, tmp_path, main_cli):
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

    second = main_cli(*args, env=env)  # the first ran as a real process; these take the same entry point
    assert second.returncode == 0 and second.stdout.count("already completed") == 6
    assert pd.read_csv(tmp_path / "runs.csv")["started_at"].tolist() == runs["started_at"].tolist()

    forced = main_cli(*args[:3], *TINY, f"results_dir={tmp_path}", "force=true", "pooling=max", env=env)
    assert forced.returncode == 0 and "already completed" not in forced.stdout
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 6


def test_a_failed_cell_is_recorded_and_the_grid_goes_on(tmp_path, main_cli):
    # Hand-made CIFAR files fail torchvision's md5 check (verify_checksums defaults to true): an error
    # inside the run, after the pre-flight found the files, so the cell fails and the grid goes on.
    data = tmp_path / "data"
    write_cifar(data, 10, n_train=100, n_test=20)
    write_mnist_like(data / "MNIST" / "raw", n_train=200, n_test=50)
    res = main_cli("-m", "dataset=cifar10,mnist", *TINY[:-1], f"data_dir={data}", f"results_dir={tmp_path / 'out'}")
    assert res.returncode == 1
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index("dataset")
    assert runs.loc["cifar10", "status"] == "failed" and "corrupted" in runs.loc["cifar10", "error"]
    assert runs.loc["mnist", "status"] == "ok"
    assert "grid of 2 runs: 1 failed, 1 ok" in res.stdout


def test_ctrl_c_leaves_no_partial_files_and_the_same_command_resumes(data_dir, tmp_path, main_cli):
    args = [sys.executable, "-m", "runner", *TINY, "epochs=10", f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) inherits SIGINT ignored,
    # and Python then keeps ignoring it; the child restores the default so that Ctrl-C is what is tested
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 2/"):
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert pd.read_csv(tmp_path / "runs.csv").loc[0, "status"] == "interrupted"
    again = main_cli(*args[3:])  # the same command
    assert again.returncode == 0 and "already completed" not in again.stdout
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "status"] == "ok" and runs.loc[0, "epochs_done"] == 10


def test_concurrent_processes_on_one_results_root(data_dir, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "runner", *TINY, f"seed={s}", f"data_dir={data_dir}",
                               f"results_dir={tmp_path}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for s in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1] and runs["run_id"].is_unique


@pytest.mark.slow
def test_processes_sharing_one_grid_all_exit_0_when_every_cell_succeeded(data_dir, tmp_path):
    # three shells (or a SLURM array) start the same 4-cell grid at once: each cell is trained once, and a process
    # that meets a cell another is training waits for it and reports its outcome, instead of "1 running", exit 1
    args = [sys.executable, "-m", "runner", "-m", "seed=0,1,2,3", *TINY, "epochs=2", f"data_dir={data_dir}",
            f"results_dir={tmp_path}"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all("grid of 4 runs: 4 ok" in out for out in outs), outs
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["seed"]) == [0, 1, 2, 3] and runs["run_id"].is_unique


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


def options(group: str) -> str:
    """A group's options as a sweep value, read from its conf/ folder."""
    return ",".join(sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml")))


POOLINGS = options("pooling")


@pytest.mark.parametrize("preview", [False, True])
def test_a_grid_with_a_value_out_of_range_is_refused_before_planning(main_cli, tmp_path, monkeypatch, preview):
    # the last of 200 cells is bad: refused with planning's own words, without planning (or importing torch for it)
    import runner.plan

    monkeypatch.setattr(runner.plan, "make_plans", lambda *a, **k: pytest.fail("planned a grid it should refuse"))
    monkeypatch.setattr(runner.plan, "Planner", lambda *a, **k: pytest.fail("planned a grid it should refuse"))
    extra = ["--cfg", "job"] if preview else []
    res = main_cli("-m", "seed=" + ",".join(map(str, range(199))) + ",-1", f"results_dir={tmp_path}", *extra)
    assert res.returncode == 2 and "error: seed=-1: out of range; allowed: >= 0." in res.stderr
    res = main_cli("-m", "lr=0.1,0", f"results_dir={tmp_path}", *extra)  # as the typed config holds it: 0.0
    assert res.returncode == 2 and "error: lr=0.0: out of range; allowed: > 0." in res.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_every_pooling_option_trains(data_dir, tmp_path, main_cli):
    # the tests' MNIST files (IDX, 270 training images with a class signal): every option, the real code path
    res = main_cli(
        "-m", f"pooling={POOLINGS}", *TINY, "epochs=3", f"data_dir={data_dir}", f"results_dir={tmp_path}"
    )
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["pooling"]) == sorted(POOLINGS.split(",")) and set(runs["status"]) == {"ok"}
    assert (runs["test_acc"] > 0.3).all(), runs[["pooling", "test_acc"]]  # three epochs learn something: chance is 0.1


# VGG-11's five stages and five poolings (to 1×1 at 32 px) at an eighth of its widths: its structure, a fiftieth of the
# compute (test_pooling.py and test_contracts.py build the full one)
NARROW_VGG11 = "+model.stages=[[8],[16],[32,32],[64,64],[64,64]]"


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=resnet20", "model.downsample=pool"], ["model=vgg11", NARROW_VGG11]])
def test_every_pooling_option_trains_in_the_cifar_models(model, data_dir, tmp_path, main_cli):
    res = main_cli("-m", f"pooling={POOLINGS}", *model, *TINY, "dataset=cifar10", "dataset.verify_checksums=false",
                   f"data_dir={data_dir}", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["pooling"]) == sorted(POOLINGS.split(",")) and set(runs["status"]) == {"ok"}
    assert set(runs["model"]) == {model[0].split("=")[1]} and runs["test_acc"].between(0, 1).all()


@pytest.mark.slow
def test_every_loss_trains_and_distillation_trains_its_teacher_once(data_dir, tmp_path, main_cli):
    from test_contracts import DISTILLATION

    tiny = [*TINY, "epochs=3", f"data_dir={data_dir}", f"results_dir={tmp_path}"]  # the tests' MNIST files
    losses = ",".join(o for o in options("loss").split(",") if o not in DISTILLATION)
    res = main_cli("-m", f"loss={losses}", *tiny)
    assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["loss"]) == sorted(losses.split(",")) and set(runs["status"]) == {"ok"}
    assert (runs["test_acc"] > 0.2).all(), runs[["loss", "test_acc"]]  # chance is 0.1

    shorter = "teacher.overrides=['model=simple_cnn','model.widths=[64,128]','epochs=4']"  # the preset's, shorter
    res = main_cli("-m", f"loss={','.join(DISTILLATION)}", "teacher=simple_cnn_wide", shorter, *tiny)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("training it first") == 1
    runs = pd.read_csv(tmp_path / "runs.csv")
    students = runs[runs["loss"].isin(DISTILLATION)]
    assert (
        len(students) == len(DISTILLATION)
        and set(students["status"]) == {"ok"}
        and students["teacher_run_id"].nunique() == 1
    )
    teacher = runs[runs["run_id"] == students["teacher_run_id"].iloc[0]].iloc[0]
    assert teacher["model.widths"] == "[64, 128]" and teacher["epochs"] == 4
    assert (students["teacher_test_acc"] == teacher["test_acc"]).all()


NORMS = ",".join(o for o in options("norm").split(",") if o != "fixup")  # fixup needs residual blocks: below
# simple_cnn at half its widths, a quarter of its convolutions' compute: the norms' test asserts that each trains and
# that batch norm learns (0.88 here, against 0.5), not how far the others get in three epochs
HALF_CNN = "model.widths=[16,32]"


@pytest.mark.slow
def test_every_norm_trains_and_fixup_in_the_resnet(data_dir, tmp_path, main_cli):
    tiny = [*TINY, "epochs=3", f"data_dir={data_dir}", f"results_dir={tmp_path}"]  # the tests' MNIST files
    res = main_cli("-m", f"norm={NORMS}", HALF_CNN, *tiny)
    assert res.returncode == 0, res.stderr
    for extra in (["model=resnet20", "norm=fixup"], ["norm=weight_norm", "norm@norm.block=batch"]):
        res = main_cli(*extra, *tiny)
        assert res.returncode == 0, res.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs["norm"]) == sorted(NORMS.split(",") + ["fixup", "weight_norm"]) and set(runs["status"]) == {"ok"}
    assert runs["test_acc"].between(0, 1).all() and (runs.loc[runs["norm"] == "batch", "test_acc"] > 0.5).all()
    assert sorted(runs["norm.block"].dropna()) == [
        "batch",
        "none",
        "none",
    ]  # weight_norm+batch, weight_norm, spectral_norm
    cols = list(runs.columns)  # the norm's settings sit beside the learning rate and weight decay
    assert cols.index("weight_decay") + 1 == cols.index("norm.alpha_bkw") and "norm.groups" in cols


# ---------------------------------------------------------------- one plan per run (issue 13)

def test_an_int_and_a_float_are_one_run_and_the_grid_reports_every_cell(data_dir, tmp_path, main_cli):
    res = main_cli("-m", "pooling=lp", "pooling.p=3,4", *TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}")
    assert res.returncode == 0, res.stderr
    assert "grid of 2 runs: 2 ok" in res.stdout
    again = main_cli("pooling=lp", "pooling.p=3.0", *TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}")
    assert again.returncode == 0 and "already completed" in again.stdout
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2


@pytest.mark.parametrize("mistake", [
    ["optim.momentum=-1"], ["optim=adamw", "optim.betas=[0.9]"], ["+optim.foo=1"], ["dataset.split_seed=-1"],
    ["norm.momentum=5"], ["norm=group", "norm.groups=0"], ["loss=focal_adaptive", "loss.threshold=2"], ["norm=null"],
    ["-m", "seed=interval(0,3)"], ["pooling._target_=runner.train.subprocess.call"], ["epochs=${epochs}"],
    ["loss=uskd", "model.widths=[32]", "model.downsample_at=[0]"], ["loss=uskd", "+loss.num_classes=10"],
    ["--config-dir", "/nonexistent/presets"], ["-m", "pooling=max,maxx"], ["lr=inf"], ["weight_decay=inf"],
    ["-m", "pooling=max,avg", "baseline=pooling=maxx"], ["+dataset.foo=1"], ["+dataset._target_=os.system"],
    ["pooling.kernel_size=100"], ["model.widths=[0,0]"],
])
def test_a_config_mistake_exits_2_before_any_data_with_nothing_written(mistake, tmp_path, main_cli):
    res = main_cli(*mistake, f"results_dir={tmp_path / 'out'}", f"data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_null_for_an_optional_group_is_its_default(main_cli):
    a = main_cli("--cfg", "job", "teacher=null", "launcher=null", "experiment=null")
    assert a.returncode == 0 and "teacher: null" in a.stdout


def test_a_teacher_named_by_settings_is_the_run_trained_from_the_shell(data_dir, tmp_path, main_cli):
    common = [*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    # the teacher's settings, as teacher.overrides names them, run from the shell on the student's data first
    shell = main_cli("model=simple_cnn", "model.widths=[64,128]", "epochs=2", "dataset=mnist", "threads=1", *common[4:])
    assert shell.returncode == 0, shell.stderr
    student = main_cli(
        "loss=kd",
        "teacher=simple_cnn_wide",
        "teacher.overrides=['model=simple_cnn','model.widths=[64,128]','epochs=2']",
        *common,
    )
    assert student.returncode == 0, student.stderr
    assert "training it first" not in student.stdout
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 2 and runs.loc[runs["loss"] == "kd", "teacher_run_id"].iloc[0] in set(runs["run_id"])


def test_presets_and_options_from_a_users_config_dir(data_dir, tmp_path, main_cli):
    mine = tmp_path / "presets"
    (mine / "experiment").mkdir(parents=True)
    (mine / "pooling").mkdir()
    (mine / "experiment" / "quick.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /pooling: avg3\nepochs: 1\nbatch_size: 16\n")
    (mine / "pooling" / "avg3.yaml").write_text(
        "_target_: models.pooling.AvgPool\n_partial_: true\nkernel_size: 3\nstride: 2\n"
    )
    (mine / "experiment" / "grid.yaml").write_text(
        "# @package _global_\nepochs: 1\nhydra:\n  sweeper:\n    params:\n      pooling: max,avg3\n      seed: 0,1\n")
    where = [
        "--config-dir",
        str(mine),
        "dataset=mnist",
        "threads=1",
        f"data_dir={data_dir}",
        f"results_dir={tmp_path / 'r'}",
    ]
    res = main_cli(*where, "experiment=quick")
    assert res.returncode == 0, res.stderr
    res = main_cli("-m", *where, "experiment=grid", "batch_size=16")
    assert res.returncode == 0, res.stderr
    assert "grid of 4 runs: 4 ok" in res.stdout
    assert res.stdout.count("already completed") == 1  # avg3, seed 0, 1 epoch, batch 16: the preset's run
    runs = pd.read_csv(tmp_path / "r" / "runs.csv")
    assert sorted(runs["pooling"]) == ["avg3", "avg3", "max", "max"] and set(runs["pooling.kernel_size"]) == {2, 3}
    bad = main_cli(
        "-m", *where, "experiment=grid", "pooling.kernel_size=0"
    )  # every cell of a config-file sweep is planned
    assert bad.returncode == 2 and "kernel_size must be >= 1" in bad.stderr


def test_cfg_job_builds_nothing_and_imports_neither_torch_nor_timm():
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", "--cfg", "job", "norm=evonorm_b0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "_target_: models.norm.EvoNormB0" in res.stdout
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "timm" not in imported


def test_a_grid_preview_imports_no_torch_once_the_code_was_read_and_a_rerun_neither_pandas_nor_dynamo(tmp_path):
    # The imports a grid command would pay before anything trains: pandas (0.3 s) only when a table is written,
    # dynamo (1 s) only when an optimizer steps; a preview, torch (1.5 s) only where what it reads of the option
    # classes and the machine is not yet recorded (runner/facts.py), and then it says the same.
    from runner import records, rundir
    from runner.plan import make_plans

    grid = ["-m", "pooling=max,avg", "seed=0,1", f"results_dir={tmp_path / 'res'}"]
    env = os.environ | {"RUNNER_CACHE_DIR": str(tmp_path / "cache")}

    def imported(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
        res = subprocess.run([sys.executable, "-X", "importtime", "-m", "runner", *args], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
        return res, {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}

    first, names = imported(*grid, "--dry-run")
    assert first.returncode == 0 and "grid of 4 cells: 4 would run" in first.stdout, first.stderr
    assert "torch" in names and not names & {"pandas", "torch._dynamo"}
    again, names = imported(*grid, "--dry-run")
    assert again.stdout == first.stdout and not names & {"torch", "pandas"}, again.stderr
    for p in make_plans(grid[1:], multirun=True):  # the grid, finished: records and rows
        rundir.write_json(p.folder / "result.json", {"run_id": p.run_id, "status": "ok", "choices": p.choices,
                                                     "config": {}, "metrics": {}})
    records.rebuild_tables(tmp_path / "res")
    res, names = imported(*grid)
    assert res.returncode == 0 and res.stdout.count("already completed") == 4, res.stderr
    assert not names & {"pandas", "torch._dynamo"}


def test_timm_is_imported_only_for_an_evonorm():
    code = ("import sys; from runner.plan import make_plan; make_plan(['norm=batch']); a = 'timm' in sys.modules; "
            "make_plan(['norm=evonorm_s0']); print(a, 'timm' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.stdout.split() == ["False", "True"], res.stderr


@pytest.mark.parametrize("content, message", [
    (b"a: [1\n", "a config file is not valid YAML: while parsing a flow sequence in"),
    (b"a: 1\na: 2\n", "found duplicate key a in"),
    (b"a: \xe9t\xe9\n", "a config file is not UTF-8 text (byte 3"),
    # "billion laughs": 10 levels of ten aliases each would be 10^10 values for OmegaConf to copy
    (b"l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"l%d: &l%d [" % (i, i) + b", ".join([b"*l%d" % (i - 1)] * 10) + b"]\n" for i in range(1, 10)),
     "its aliases (*name) expand to more than 100,000 values"),
])
def test_a_preset_that_is_not_valid_yaml_is_one_line_and_exit_2(content, message, tmp_path, main_cli):
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "mine.yaml").write_bytes(content)
    res = main_cli("--config-dir", str(tmp_path / "presets"), "experiment=mine", f"results_dir={tmp_path / 'out'}")
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_ascii_terminal_gets_the_whole_summary(tmp_path):
    # α, ±, ρ and – in the sentences: an ASCII locale once ended the summary, after its work, in a traceback
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "LC_ALL": "C"}
    done = subprocess.run([sys.executable, "-m", "runner.summary", str(ROOT / "docs/examples/norm_mnist5k/runs.csv"),
                           "--baseline", "norm=batch", "--no-plots", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    assert b"Traceback" not in done.stderr and (tmp_path / "report.md").exists()


def test_hydra_searchpath_does_what_config_dir_does(tmp_path, main_cli):
    presets = tmp_path / "presets" / "experiment"
    presets.mkdir(parents=True)
    (presets / "quick.yaml").write_text("# @package _global_\nepochs: 2\nlr: 0.07\n")
    shown = [main_cli(*how, "experiment=quick", "--cfg", "job").stdout
             for how in (["--config-dir", str(tmp_path / "presets")],
                         [f"hydra.searchpath=[file://{tmp_path / 'presets'}]"])]
    assert shown[0] == shown[1] and "epochs: 2" in shown[0] and "lr: 0.07" in shown[0]
    res = main_cli(f"hydra.searchpath=[{tmp_path / 'presets'}]", "experiment=quick", f"results_dir={tmp_path}/o")
    assert res.returncode == 2 and "each entry is file://<folder> or pkg://<package>" in res.stderr
    assert "--config-dir" in res.stderr and not (tmp_path / "o").exists()


def test_a_grid_preview_lists_every_cell_with_its_id_and_fate_and_runs_nothing(data_dir, tmp_path, main_cli):
    args = [*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    assert main_cli(*args, "pooling=max").returncode == 0
    (done,) = [p.name for p in (tmp_path / "runs").iterdir()]
    shown = main_cli("-m", "pooling=max,avg", *args, "--cfg", "job")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("grid of 2 cells: 1 would run, 1 completed (skipped)")
    assert any(line.split()[:3] == ["skip", "(ok)", done] for line in lines[1:])
    assert sum(line.split()[0] == "run" for line in lines[1:]) == 1
    # each cell is named by what varies in the grid (and its seed), not by the settings every cell shares
    def label(line):
        return re.split(r" [0-9a-f]{10}  ", line)[1]

    assert sorted(map(label, lines[1:])) == ["pooling=avg", "pooling=max"]
    assert main_cli("-m", "--dry-run", "pooling=max,avg", *args).stdout == shown.stdout  # the other spelling
    one = main_cli("--dry-run", "pooling=avg", *args)  # without -m: the one run the command would train
    assert one.returncode == 0 and one.stdout.splitlines()[0].startswith("1 run: 1 would run, 0 completed")
    assert [line.split()[0] for line in one.stdout.splitlines()[1:]] == ["run"]
    mixed = main_cli("--dry-run", "--cfg", "hydra", *args)
    assert mixed.returncode == 2 and "--dry-run and --cfg cannot be combined" in mixed.stderr
    seeds = main_cli("-m", "pooling=max", *args, "seed=3,4", "--cfg", "job").stdout.splitlines()[1:]
    assert list(map(label, seeds)) == ["seed=3", "seed=4"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [done]  # nothing trained, nothing written
    # data that download=true would fetch is not fetched by a preview (an offline machine: the download would fail)
    fetch = [*TINY, "pooling=avg", "download=true", f"data_dir={tmp_path / 'nodata' / 'd'}", f"results_dir={tmp_path}"]
    fetching = main_cli("--dry-run", *fetch)
    assert fetching.returncode == 0 and fetching.stdout.startswith("1 run: 1 would run"), fetching.stderr
    assert not (tmp_path / "nodata").exists()
    offline = main_cli(*fetch)  # the run itself fetches, before anything trains
    assert offline.returncode == 2 and "download=true could not fetch" in offline.stderr
    bad = main_cli("-m", "pooling=max,maxx", *args, "--cfg", "job")
    assert bad.returncode == 2 and "'maxx' is not an option" in bad.stderr


def test_runs_under_an_earlier_versions_ids_are_named_when_a_command_cannot_find_them(data_dir, tmp_path, main_cli):
    args = [*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    assert main_cli(*args, "pooling=max").returncode == 0
    second = main_cli(*args, "pooling=avg")  # a run of this version beside it: nothing to say
    assert second.returncode == 0 and "earlier version" not in second.stdout
    (rid,) = [d.name for d in (tmp_path / "runs").iterdir() if json.loads((d / "result.json").read_text())
              ["choices"]["pooling"] == "max"]
    # what a run recorded when ids were computed otherwise looks like: the same record under another id
    record = json.loads((tmp_path / "runs" / rid / "result.json").read_text()) | {"run_id": "0123456789"}
    (tmp_path / "runs" / rid).rename(tmp_path / "runs" / "0123456789")
    (tmp_path / "runs" / "0123456789" / "result.json").write_text(json.dumps(record))
    preview = main_cli("-m", *args, "pooling=max,avg", "--cfg", "job")
    assert "earlier version's run ids (0123456789)" in preview.stdout, preview.stdout
    again = main_cli(*args, "pooling=max")
    assert again.returncode == 0 and "earlier version's run ids (0123456789)" in again.stdout
    assert (tmp_path / "runs" / rid / "result.json").exists()  # trained again under today's id, beside the old one
