"""Bad inputs and attacks, as a careless or hostile user (or a colleague's files) would give them.

Each case runs the real command line in a fresh folder and asserts the exit status, a one-paragraph
error without a traceback, that nothing was written outside the folders the runner may write, and
that no payload ran: every payload would create the file MARKER if any code it names were executed.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, cli, option_needs
from hydra.core.global_hydra import GlobalHydra

from runner.compose import CONF_DIR
from runner.plan import make_plan
from runner.schema import ConfigError

MARKER = "PAYLOAD-RAN"
FAMILIES = ("model", "pooling", "global_pool", "norm", "loss", "optim")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def place(tmp_path):
    """A clean folder: the command's cwd, its results_dir and data_dir, and where a payload would leave MARKER."""
    fake_git = write(tmp_path / "bin" / "git", f"#!/bin/sh\ntouch {tmp_path / MARKER}\n")
    fake_git.chmod(0o755)
    return tmp_path


def files(root: Path) -> set[str]:
    """Everything under ``root`` except a data_dir named ``data`` (fetching and caching data may write there)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.relative_to(root).parts[0] != "data"}


def evil_yaml(place: Path) -> str:
    return f"_target_: os.system\ncommand: touch {place / MARKER}\n"


# (name, extra args (with {p} for the folder), files to write first {relative path: text}, expected in stderr)
CASES = [
    (
        "target outside the project",
        ["pooling._target_=os.system", "+pooling.command=touch {p}/" + MARKER],
        {},
        "not allowed",
    ),
    (
        "target that walks into a library",
        ["loss._target_=runner.train.subprocess.call", "+loss.args=[touch,{p}/" + MARKER + "]"],
        {},
        "not allowed",
    ),
    (
        "target of another group's package",
        ["loss._target_=runner.rundir.write_text", "+loss.path={p}/" + MARKER, "+loss.text=x"],
        {},
        "not allowed",
    ),
    ("a builtin", ["optim._target_=builtins.exec"], {}, "not allowed"),
    ("a module, not a class", ["pooling._target_=models.pooling"], {}, "not allowed"),
    ("nested target", ["norm=weight_norm", "norm.block._target_=os.system"], {}, "not allowed"),
    ("_args_", ["+pooling._args_=[1]"], {}, "_args_: not allowed"),
    ("_recursive_", ["+loss._recursive_=false"], {}, "not allowed"),
    ("target in a nested value", ["+model.extra={_target_:os.system}"], {}, "not a setting of model"),
    ("hydra callbacks from the shell", ["+hydra.callbacks.x._target_=os.system"], {}, "does not let a command change"),
    ("hydra env_set from the shell", ["hydra.job.env_set.PATH={p}/bin"], {}, "does not let a command change"),
    ("hydra chdir", ["hydra.job.chdir=true"], {}, "does not let a command change"),
    ("hydra sweeper swap", ["-m", "hydra/sweeper=basic", "seed=0,1"], {}, "does not let a command change"),
    ("hydra's optuna sweeper", ["-m", "hydra/sweeper=optuna", "seed=0,1"], {}, "run python -m runner.tune with the "
     "same overrides"),
    ("hydra launcher target", ["hydra.launcher._target_=os.system"], {}, "does not let a command change"),
    ("hydra n_jobs 0", ["-m", "launcher=local", "hydra.launcher.n_jobs=0", "seed=0,1"], {}, "hydra.launcher.n_jobs=0"),
    (
        "callbacks in a config-dir preset",
        ["--config-dir", "{p}/conf", "experiment=evil"],
        {"conf/experiment/evil.yaml": "# @package _global_\nhydra:\n  callbacks:\n    x:\n      _target_: os.system\n"},
        "hydra.callbacks",
    ),
    (
        "env_set in a config-dir preset",
        ["--config-dir", "{p}/conf", "experiment=env"],
        {"conf/experiment/env.yaml": "# @package _global_\nhydra:\n  job:\n    env_set:\n      PATH: {p}/bin\n"},
        "hydra.job.env_set",
    ),
    (
        "logging factory in a config-dir preset",
        ["--config-dir", "{p}/conf", "experiment=log"],
        {
            "conf/experiment/log.yaml": "# @package _global_\nhydra:\n  job_logging:\n    version: 1\n    handlers:\n"
            "      h:\n        (): os.system\n"
        },
        "logging factory",
    ),
    (
        "job-script shell lines in a config-dir preset",
        ["-m", "--config-dir", "{p}/conf", "experiment=setup", "launcher=slurm"],
        {
            "conf/experiment/setup.yaml": "# @package _global_\nhydra:\n  launcher:\n"
                                          "    setup: [touch {p}/PAYLOAD-RAN]\n"
        },
        "hydra.launcher.setup: set by a config file",
    ),
    (
        "evil option in a config-dir",
        ["--config-dir", "{p}/conf", "pooling=evil"],
        {"conf/pooling/evil.yaml": "EVIL"},
        "not allowed",
    ),
    (
        "evil option in a config-dir sweep",
        ["-m", "--config-dir", "{p}/conf", "pooling=max,evil"],
        {"conf/pooling/evil.yaml": "EVIL"},
        "not allowed",
    ),
    (
        "evil primary config via --config-path",
        ["--config-path", "{p}/primary", "--config-name", "config"],
        {"primary/config.yaml": None},
        "not allowed",
    ),
    ("missing --config-name", ["--config-name", "nope"], {}, "--config-name=nope"),
    ("missing --config-dir", ["--config-dir", "{p}/nowhere"], {}, "--config-dir"),
    (
        "evil teacher overrides",
        ["loss=kd", "teacher=simple_cnn_wide", "teacher.overrides=['pooling._target_=os.system']"],
        {},
        "not allowed",
    ),
    ("teacher run id with a path", ["loss=kd", "teacher=run", "teacher.run_id=../../etc"], {}, "not a run id"),
    (
        "teacher checkpoint missing",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/none.pt"],
        {},
        "no checkpoint",
    ),
    (
        "teacher checkpoint truncated",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/cut.pt"],
        {"cut.pt": "PK\x03\x04"},
        "not a checkpoint this runner can read",
    ),
    (
        "teacher checkpoint with a pickled payload",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/pickle.pt"],
        {"pickle.pt": "PICKLE"},
        "not a checkpoint this runner can read",
    ),
    (
        "teacher checkpoint with a config payload",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/config.pt"],
        {"config.pt": "CONFIG"},
        "not allowed",
    ),
    (
        "teacher checkpoint without a config",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/bare.pt"],
        {"bare.pt": "BARE"},
        "not a checkpoint written by this runner",
    ),
    (
        "teacher checkpoint whose weights do not fit its own config",
        ["loss=kd", "teacher=checkpoint", "teacher.checkpoint={p}/weights.pt"],
        {"weights.pt": "WEIGHTS"},
        "its weights do not fit the model its own config builds",
    ),
    ("results_dir is a file", ["results_dir={p}/afile"], {"afile": "x"}, "is a file"),
    ("results_dir not creatable", ["results_dir=/proc/runner-results"], {}, "cannot create folders"),
    ("unset environment variable", ["results_dir=${{oc.env:RUNNER_UNSET_VARIABLE_X}}"], {}, "cannot be resolved"),
    ("self reference", ["epochs=${{epochs}}"], {}, "cannot be resolved"),
    ("download offline", ["dataset=mnist", "download=true", "data_dir={p}/data"], {}, "download=true could not fetch"),
    ("interval sweep", ["-m", "lr=interval(0.01,0.1)"], {}, "interval sweep"),
    ("sweep without -m", ["seed=0,1"], {}, "add -m"),
    ("norm null", ["norm=null"], {}, "norm=none"),
    ("unknown key", ["+epoch=3"], {}, "not a config key"),
    ("a string for an integer", ["epochs=ten"], {}, "epochs=ten"),
    ("a range violated", ["batch_size=0"], {}, "batch_size=0: out of range"),
    ("OmegaConf's missing value", ["epochs=???"], {}, "epochs=???: no value given"),
    ("a missing value in a dataset", ["dataset.val_fraction=???"], {}, "dataset.val_fraction=???: no value given"),
    ("a missing value in a method", ["pooling.kernel_size=???"], {}, "pooling.kernel_size=???: no value given"),
    ("a missing value in a grid's later cell", ["-m", "seed=0,1", "epochs=1,???"], {}, "epochs=???: no value given"),
    ("bad dataset option", ["dataset=imagenet"], {}, "not an option of config group 'dataset'"),
]


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {os.environ['RUNNER_TEST_PLACE']}/{MARKER}",)


def _materialize(place: Path, name: str, text: str | None) -> None:
    path = place / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if text == "EVIL":
        path.write_text(evil_yaml(place))
    elif text is None:  # a primary config whose pooling names foreign code
        shutil_text = (CONF_DIR / "config.yaml").read_text()
        path.write_text(shutil_text)
        for group in (p.name for p in CONF_DIR.iterdir() if p.is_dir()):  # every group of conf/, as it is
            os.symlink(CONF_DIR / group, path.parent / group)
        (path.parent / "pooling").unlink()
        write(path.parent / "pooling" / "max.yaml", evil_yaml(place))
    elif text == "PICKLE":
        os.environ["RUNNER_TEST_PLACE"] = str(place)
        with open(path, "wb") as f:
            pickle.dump({"model": {}, "config": Payload()}, f)
    elif text == "WEIGHTS":  # a sound config; its weights those of a model with twice the widths
        wide = make_plan(["dataset=mnist5k", "model.widths=[64,128]"])
        from omegaconf import OmegaConf

        from runner.build import model

        torch.save({"model": model(wide.cfg).state_dict(),
                    "config": OmegaConf.to_container(make_plan(["dataset=mnist5k"]).cfg)}, path)
    elif text in ("CONFIG", "BARE"):
        plan = make_plan(["dataset=mnist5k"])
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(plan.cfg)
        config["pooling"] = {"_target_": "os.system", "command": f"touch {place / MARKER}"}
        torch.save({"model": {}, "config": config} if text == "CONFIG" else {"model": {}}, path)
    else:
        path.write_text(text.replace("{p}", str(place)))


# These go through a real interpreter (`python -m runner`); the others call the same entry point,
# runner.__main__.main, in this process (a subprocess costs 2 s of torch import per case).
SUBPROCESS = {"target that walks into a library", "callbacks in a config-dir preset",
              "teacher checkpoint with a pickled payload", "download offline"}


@pytest.mark.parametrize("name,args,given,expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_or_attack_exits_2_cleanly_and_runs_nothing(place, name, args, given, expected, main_cli):
    for rel, text in given.items():
        _materialize(place, rel, text)
    before = files(place)
    args = [a.replace("{p}", str(place)).replace("{{", "{").replace("}}", "}") for a in args]
    if not any(a.startswith("results_dir=") for a in args):
        args.append(f"results_dir={place / 'results'}")
    env = {"PATH": f"{place / 'bin'}:{os.environ['PATH']}"}
    assert not GlobalHydra.instance().is_initialized()  # as a new process finds it
    res = (cli if name in SUBPROCESS else main_cli)(*args, cwd=place, env=env)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, (
        res.stderr
    )
    assert expected in res.stderr, res.stderr
    assert not (place / MARKER).exists()
    assert files(place) == before  # nothing written, not even results_dir
    assert not GlobalHydra.instance().is_initialized()  # nor Hydra left set up for the next caller in the process


@pytest.mark.parametrize("group", FAMILIES)
def test_every_option_refuses_an_unknown_setting_and_a_foreign_target(group):
    for option in options(group):
        base = [f"{group}={option}", *option_needs(group, option)]  # refused while typing, before any data
        with pytest.raises(ConfigError, match=f"{group}.not_a_setting: not a setting of {group}"):
            make_plan([*base, f"+{group}.not_a_setting=1"])
        with pytest.raises(ConfigError, match=f"{group}._target_=os.system: not allowed"):
            make_plan([*base, f"{group}._target_=os.system"])


# ---------------------------------------------------------------- a corrupt neighbour stops nothing

CORRUPT = {
    "a list": ("result.json", "[]"),
    "no config": ("result.json", json.dumps({"run_id": "0123456789", "status": "ok", "choices": {}})),
    "a run id that is a path": ("result.json", json.dumps({"run_id": "../../../../tmp/evil", "status": "running",
                                                           "choices": {}, "config": {}})),
    "not json": ("result.json", "{ truncated"),
    "garbage epochs": ("epochs.csv", "\x00\x01garbage,,\n\"unclosed"),
    "truncated logits": ("logits.pt", "PK\x03"),
}


def test_corrupt_neighbours_are_reported_and_skipped_by_runs_and_the_summary(data_dir, tmp_path, main_cli):
    from runner.summary.cli import main as summary_main

    root = tmp_path / "results"
    ok = main_cli(*TINY, "epochs=3", f"data_dir={data_dir}", f"results_dir={root}")  # learns: not at chance
    assert ok.returncode == 0, ok.stderr
    good = next((root / "runs").iterdir()).name
    for i, (name, (file, text)) in enumerate(CORRUPT.items()):
        folder = root / "runs" / f"{i:010x}"
        if file != "result.json":  # a copy of the good run whose other file is broken
            write(folder / "result.json", (root / "runs" / good / "result.json").read_text().replace(good, folder.name))
        write(folder / file, text)
    res = main_cli(*TINY, "epochs=3", "seed=1", f"data_dir={data_dir}", f"results_dir={root}")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr  # a finish reads no neighbour
    rebuilt = subprocess.run([sys.executable, "-m", "runner.records", "rebuild", str(root)], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    # every bad file but logits.pt, which the tables do not read
    assert rebuilt.stderr.count("warning: skipping") == len(CORRUPT) - 1 and "Traceback" not in rebuilt.stderr
    runs = pd.read_csv(root / "runs.csv")
    assert set(runs["status"]) == {"ok"} and len(runs) == 4  # the two real runs and the two copies with a bad file
    assert not Path("/tmp/evil").exists() and not any(root.parent.glob("**/evil*"))
    assert summary_main([str(root), "--results", str(tmp_path / "summary"), "--no-plots"]) == 0
    assert summary_main([str(root), "--results", str(tmp_path / "summary")]) == 0  # plots read logits.pt


def test_output_files_follow_the_umask(data_dir, tmp_path):
    res = subprocess.run(["sh", "-c", f"umask 022 && {sys.executable} -m runner {' '.join(TINY)} data_dir={data_dir} "
                                      f"results_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert written and {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_dir()} == {"0o755"}


def test_a_corrupt_dataset_cache_is_rebuilt_from_the_source_files(data_dir, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir / "MNIST", data / "MNIST")
    write(data / "cache" / "mnist.pt", "not a torch file")
    res = cli(*TINY, f"data_dir={data}", f"results_dir={tmp_path / 'r'}")
    assert res.returncode == 0, res.stderr
    assert f"the dataset cache {data / 'cache' / 'mnist.pt'} is corrupt" in res.stderr
    assert torch.load(data / "cache" / "mnist.pt", weights_only=True)["train_x"].shape[1:] == (1, 28, 28)
