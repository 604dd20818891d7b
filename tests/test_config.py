"""Composition, validation messages and run identity."""
from __future__ import annotations

import copy

import pytest
import yaml
from omegaconf import OmegaConf, open_dict

from runner.compose import CONF_DIR, Composer
from runner.plan import make_plan, make_plans
from runner.schema import ConfigError


def groups() -> dict[str, list[str]]:
    """Every config group under conf/ (Hydra's own hydra/ aside) and its options, read from the YAML folders."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONF_DIR.iterdir()) if d.is_dir() and d.name != "hydra"}


def compose(overrides):
    plan = make_plan(overrides)
    return plan.cfg, plan.choices


def data_overrides(data_dir) -> list[str]:
    return [f"data_dir={data_dir}", "dataset.verify_checksums=false"]


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A finished tiny run (results root, run_id): a teacher for teacher=run and teacher=checkpoint."""
    from conftest import TINY

    from runner.run import run

    root = tmp_path_factory.mktemp("teacher")
    return root, run(make_plan([*TINY, f"data_dir={data_dir}", f"results_dir={root}"]))["run_id"]


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in groups().items() for o in opts])
def test_every_option_of_every_group_composes_validates_and_builds(group, option, data_dir, finished_run, option_plan):
    # planning validates, which instantiates the loss and optimizer and runs the model on zeros; an axis's option is
    # planned once per test process (conftest.option_plan), and test_contracts.py checks the same plan's contract
    if group in ("dataset", "model", "pooling", "global_pool", "norm", "loss", "optim"):
        assert option_plan(group, option).choices[group] == option
        return
    extra = []
    if group == "teacher":  # a teacher needs a distillation loss; run and checkpoint need a finished run
        root, rid = finished_run
        extra = ["loss=kd", "dataset=mnist", f"results_dir={root}"] + {
            "run": [f"teacher.run_id={rid}"],
            "checkpoint": [f"teacher.checkpoint={root}/runs/{rid}/checkpoint.pt"],
        }.get(option, [])
    cfg, choices = compose([f"{group}={option}", *extra, *data_overrides(data_dir)])
    if group not in ("experiment", "launcher", "tune", "logger"):  # how runs execute, are tuned or tracked
        assert choices[group] == option


@pytest.mark.parametrize("option,target", [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher"),
                                           ("submitit_local", "LocalLauncher")])
def test_a_launcher_option_selects_hydras_launcher_and_leaves_the_run_alone(option, target):
    import os

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"launcher={option}"], return_hydra_config=True)
        plain = hydra_compose("config")
    assert cfg.hydra.launcher._target_.endswith(target)
    if option == "local":
        assert cfg.hydra.launcher.n_jobs == len(os.sched_getaffinity(0))  # no GPUs here: one job per core
    assert make_plan([f"launcher={option}"]).run_id == make_plan([]).run_id
    assert OmegaConf.to_container(plain) == {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}


def test_every_yaml_with_a_target_names_a_class_that_exists():
    import importlib

    for path in CONF_DIR.glob("*/*.yaml"):
        node = yaml.safe_load(path.read_text()) or {}
        node = node.get(path.parent.name, node)  # _global_ packages nest the group's node
        if "_target_" in node:
            module, name = node["_target_"].rsplit(".", 1)
            assert hasattr(importlib.import_module(module), name), path


@pytest.mark.parametrize("overrides,message", [
    (["pooling=maxx"], "pooling=maxx: 'maxx' is not an option of config group 'pooling'. "
                       f"Allowed: {', '.join(groups()['pooling'])}. Did you mean 'max'?"),
    (["epoch=3"], "'epoch' is not a config key. Did you mean 'epochs'?"),
    (["skip_test=true", "ood=mnist"], "ood=mnist with skip_test=true: out-of-distribution scores are computed on the "
                                      "test split"),
    # an abbreviation of the option's own description (its YAML's first line: "Global average pooling head: ...")
    (["global_pool=gap"], "'gap' is not an option of config group 'global_pool'. Allowed: "
                          f"{', '.join(groups()['global_pool'])}. Did you mean 'avg'?"),
    (["norm=bn"], "Did you mean 'batch'?"),  # "BatchNorm followed by ReLU"
    (["+foo=1"], "foo: not a config key. See"),  # no far-fetched 'ood': a typo keeps its first letter
    (["pooling.kernal_size=3"], "Did you mean 'pooling.kernel_size'?"),
    (["optim.momentm=0.5"], "'optim.momentm' is not a config key. Did you mean 'optim.momentum'? Keys of optim: "),
    (["optim.foo=1"], "'optim.foo' is not a config key. Keys of optim: "),  # the group's own keys, not 'optim'?
    (["epochs=abc"], "epochs=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    (["seed=0.5"], "seed=0.5"),
    (["epochs=0"], "epochs=0: out of range; allowed: >= 1"),
    (["lr=0"], "lr=0.0: out of range; allowed: > 0"),
    (["dataset.val_fraction=1.5"], "dataset.val_fraction=1.5: out of range; allowed: > 0 and < 1"),
    (["optim.nesterov=maybe"], "optim.nesterov=maybe: expected true or false"),
    (["pooling.kernel_size=2.5"], "pooling.kernel_size=2.5: expected an integer"),
    (["model.widths=[16,abc]"], "expected a list of integers"),
    (["pooling.kernel_size=0"], "kernel_size must be >= 1, got 0"),
    (["model=resnet20", "model.depth=21"], "depth must be 6n + 2"),
    (["model=simple_cnn", "model.widths=[8,8,8,8,8]", "model.downsample_at=[0,1,2,3,4]"],  # 28 px cannot halve 5 times
     "too small for the model's downsampling (set by pooling.kernel_size=2, pooling.stride=2, "
     "model.downsample_at=[0, 1, 2, 3, 4]"),
    (["model=vgg11"], "does not build or run with dataset=mnist5k, model=vgg11"),
    (["model.downsample_at=[0,2]"], "downsample_at must list distinct stage indices in 0..1, got [0, 2]"),
    (["pooling=mixed", "pooling.per=pixel"], "per must be one of layer, channel, got 'pixel'"),
    (["pooling=tree", "pooling.depth=4"], "depth must be 2 (2 leaves, 1 gate) or 3"),
    (["pooling=adapool", "pooling.beta=global"], "beta must be one of scalar, channel, region"),
    (["pooling=lp", "pooling.p=0"], "p must be >= 0.01, got 0.0"),
    (["global_pool=spp", "global_pool.levels=[1,0]"], "levels must be positive bin counts"),
    (["pooling._target_=os.system"], "pooling._target_=os.system: not allowed; a pooling option instantiates only"),
    (["+pooling._target_=builtins.eval"], "Could not append"),
    (["pooling._target_=runner.train.subprocess.call"], "not allowed; a pooling option instantiates only classes and "
                                                        "functions defined in this project's models.pooling package"),
    (["loss._target_=runner.rundir.write_text"], "not allowed"),
    (["+pooling._args_=[1]"], "pooling._args_: not allowed"),
    (["optim.momentum=-1"], "optim.momentum=-1.0: out of range; allowed: >= 0 and < 1."),
    (["optim=adamw", "optim.betas=[0.9]"], "optim=adamw: betas must be two numbers"),
    (["optim=adamw", "optim.betas=[0.9,1.5]"], "optim.betas=[0.9, 1.5]: out of range"),
    (["+optim.foo=1"], "optim.foo: not a setting of optim (runner.optim.sgd). Allowed: momentum, nesterov."),
    (["dataset.split_seed=-1"], "dataset.split_seed=-1: out of range; allowed: >= 0."),
    (["norm.momentum=5"], "norm.momentum=5.0: out of range; allowed: >= 0 and <= 1."),
    (["norm=group", "norm.groups=0"], "norm.groups=0: out of range; allowed: >= 1."),
    (["loss=focal_adaptive", "loss.threshold=2"], "loss.threshold=2.0: out of range; allowed: > 0 and < 1."),
    (["loss=focal", "loss.gamma=abc"], "loss.gamma=abc: expected a number."),
    (["loss=uskd", "model.widths=[32]", "model.downsample_at=[0]"],
     "loss=uskd with dataset=mnist5k, model=simple_cnn, pooling=max, global_pool=avg, norm=batch: SimpleCNN has 1 "
     "stage(s)"),
    (["loss=uskd", "+loss.channels=3"], "loss.channels is set by the runner (from the model and the dataset)"),
    (["loss=uskd", "loss.rank_by=paper"], "loss.rank_by=paper: allowed: code, probs."),
    (["loss=uskd", "loss.mu=-1"], "loss.mu=-1.0: out of range; allowed: >= 0."),
    (["norm=null"], "norm=null: every run needs a norm"),
    (["epochs=${epochs}"], "epochs: its value cannot be resolved"),
    (["results_dir=${oc.env:RUNNER_TEST_UNSET_VARIABLE}"], "results_dir: its value cannot be resolved"),
    (["dataset.augment=flip"], "dataset.augment=flip: allowed: none, crop_flip. Did you mean 'crop_flip'?"),
    (["dataset.source_dir=/tmp"], "only mnist, fashion_mnist read IDX files"),
    (["warmup_epochs=20"], "warmup_epochs=20.0: longer than the run"),
    (["device=tpu"], "device=tpu: allowed: auto, cpu, cuda, cuda:N, mps"),
    (["+foo=1"], "foo: not a config key"),
    (["norm=fixup"], "norm=fixup needs a model with residual blocks; model=simple_cnn has none. "
                     "Models that support it: resnet20."),
    (["norm=batch", "batch_size=1"], "batch_size=1: norm=batch normalizes with statistics over the batch"),
    (["norm=evonorm_b0", "batch_size=1"], "or a norm computed per sample: "),  # which ones: the test below
    (["norm=weight_norm", "norm@norm.block=powernorm", "batch_size=1"], "norm=weight_norm normalizes with statistics"),
    (["norm=group", "norm.groups=3"], "norm.groups=3 does not divide a layer of 32 channels"),
    (["norm=evonorm_s0", "norm.group_size=5"], "norm.group_size=5 does not divide a layer of 32 channels"),
    (["norm=online_norm", "norm.ecm=clamp"], "norm.ecm='clamp': allowed: ls, ac, none"),
    (["norm=weight_norm", "norm@norm.block=bach"],
     "norm@norm.block=bach: 'bach' is not an option of config group 'norm'."),
    (["dataset=cifar10", "data_dir=/nonexistent"], "data_batch_1"),
])
def test_config_errors_name_key_value_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)  # one paragraph


def test_a_sweep_without_multirun_is_an_error():
    with pytest.raises(ConfigError, match="add -m"):
        make_plans(["pooling=max,avg"], multirun=False)


def test_planning_expands_the_grid_and_stops_on_any_bad_cell():
    plans = make_plans(["pooling=max,avg", "seed=0,1,2"], multirun=True)
    assert [p.overrides for p in plans][:2] == [("pooling=max", "seed=0"), ("pooling=max", "seed=1")]
    assert len({p.run_id for p in plans}) == 6
    with pytest.raises(ConfigError, match="avgg"):
        make_plans(["pooling=max,avgg", "seed=0,1"], multirun=True)
    with pytest.raises(ConfigError, match="an interval sweep has no list of values"):
        make_plans(["lr=interval(0.01,0.1)"], multirun=True)


def test_run_id_is_the_experiment_not_where_or_how_it_runs():
    base = make_plan([]).run_id
    assert make_plan(["lr=5e-2"]).run_id == base  # the same value written differently
    assert make_plan(["results_dir=/elsewhere", "device=cpu", "threads=1", "force=true", "fail_fast=true",
                      "data_dir=/other", "amp=false", "channels_last=false"]).run_id == base  # cpu: no autocast
    assert make_plan(["seed=1"]).run_id != base
    assert make_plan(["pooling=avg"]).run_id != base
    assert make_plan(["pooling.kernel_size=3"]).run_id != base


def test_an_int_for_a_float_setting_is_the_same_run():
    assert make_plan(["pooling=lp", "pooling.p=3"]).run_id == make_plan(["pooling=lp", "pooling.p=3.0"]).run_id \
        == make_plan(["pooling=lp"]).run_id
    a, b = make_plan(["loss=focal", "loss.gamma=2"]), make_plan(["loss=focal", "loss.gamma=2.0"])
    assert a.run_id == b.run_id and a.cfg.loss.gamma == 2.0 and isinstance(a.cfg.loss.gamma, float)


def test_the_identity_holds_the_device_type_and_autocast_dtype_and_ignores_null_keys():
    from omegaconf import OmegaConf, open_dict

    from runner.identity import identity
    from runner.plan import device_type

    plan = make_plan([])
    assert plan.identity["config"]["device_type"] == "cpu" and "autocast" not in plan.identity["config"]
    cuda = identity(plan.cfg, plan.choices, "cuda", "bfloat16", None)
    assert cuda["config"]["device_type"] == "cuda" and cuda["config"]["autocast"] == "bfloat16"
    # a key added later with a null default (the old behaviour) leaves existing identities as they were
    cfg = OmegaConf.create(OmegaConf.to_container(plan.cfg))
    with open_dict(cfg):
        cfg.new_run_key = None
        cfg.loss.new_option_key = None
    assert identity(cfg, plan.choices, "cpu", None, None) == plan.identity
    assert OmegaConf.select(cfg, "loss.new_option_key", default=1) is None
    # under a SLURM launcher, `auto` follows the GPUs the job asks for, not the submitting machine
    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert device_type("auto", {"_target_": slurm, "gpus_per_node": 1}) == "cuda"
    assert device_type("auto", {"_target_": slurm, "gpus_per_node": 0}) == "cpu"
    assert device_type("cuda:1") == "cuda"


def test_the_fast_composition_equals_hydras_own():
    """A cell's value overrides applied to the composed group choices give the config Hydra composes itself; so do
    cells composed later from the same files, which one composer parses once (runner.compose._keep_parses)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    cells = [["seed=3", "pooling=lp", "pooling.p=4"], ["norm=weight_norm", "norm@norm.block=batch", "++lr=0.1"],
             ["experiment=cifar10_resnet20", "epochs=2", "model.widths=[8,16,32]"], ["loss=focal", "~loss.gamma"],
             ["pooling=lp", "norm=group", "pooling.p=2"], ["norm=weight_norm", "norm@norm.block=group"], []]
    with Composer() as composer:
        ours = [OmegaConf.to_container(composer.compose(c)[0]) for c in cells]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        theirs = [OmegaConf.to_container(hydra_compose("config", overrides=c)) for c in cells]
    assert ours == theirs


def test_data_dir_follows_the_environment(monkeypatch):
    monkeypatch.setenv("DATA_DIR", "/somewhere/data")
    cfg, _ = compose([])
    assert cfg.data_dir == "/somewhere/data"


def test_optimizer_choice_brings_its_own_defaults_and_the_command_line_wins():
    cfg, _ = compose(["optim=adamw"])
    assert (cfg.lr, cfg.weight_decay) == (0.001, 0.05)
    cfg, _ = compose(["optim=adamw", "lr=0.01"])
    assert cfg.lr == 0.01


def test_experiment_preset_composes_the_cifar_recipe(data_dir):
    cfg, choices = compose(["experiment=cifar10_resnet20", *data_overrides(data_dir)])
    assert choices["dataset"] == "cifar10" and choices["model"] == "resnet20"
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (30, 128, 0.1)


@pytest.mark.parametrize("bug", [TypeError, RuntimeError, AttributeError, ZeroDivisionError])
def test_a_bug_in_a_layer_raises_with_its_traceback_whatever_its_kind(bug, monkeypatch):
    # the smoke build once turned TypeError/RuntimeError/ZeroDivisionError into "config errors" (exit 2, no
    # traceback) while an AttributeError printed one: a bug is a bug, whichever exception it raises
    from models.pooling import AvgPool

    def broken(self, x):
        raise bug("a bug in the layer")

    monkeypatch.setattr(AvgPool, "forward", broken)
    with pytest.raises(bug, match="a bug in the layer"):
        make_plan(["pooling=avg", "global_pool=max"])



def test_a_batch_statistics_norm_at_batch_size_1_names_the_norms_that_can_train_there():
    # the norms offered instead are exactly the options of conf/norm/ whose block trains on one sample: checked by
    # training each offered block (and the refused one) on a batch of one
    import torch
    from hydra.utils import instantiate

    with pytest.raises(ConfigError) as e:
        make_plan(["norm=evonorm_b0", "batch_size=1"])
    offered = str(e.value).split("a norm computed per sample: ")[1].rstrip(".").split(", ")
    assert set(offered) < set(groups()["norm"]) and "evonorm_b0" not in offered and "batch" not in offered

    def trains_on_one(option: str) -> bool:
        extra = ["model=resnet20"] if option == "fixup" else []
        block = instantiate(make_plan([f"norm={option}", *extra]).cfg.norm)(16).train()  # a width the models use
        try:
            block(torch.randn(1, 16, 3, 3))
            return True
        except ValueError:
            return False

    assert all(trains_on_one(o) for o in offered)
    assert not any(trains_on_one(o) for o in set(groups()["norm"]) - set(offered) - {"weight_norm", "spectral_norm"})


def test_a_grid_plans_each_cell_exactly_as_planning_it_alone(tmp_path, monkeypatch):
    # A grid fills later cells' run-level values into an earlier cell's typed config (runner/template.py) instead of
    # composing again; every cell must come out as the same command for that cell alone would plan it.
    poolings = groups()["pooling"]
    grid = [f"pooling={','.join(poolings)}", "seed=0,7", "lr=0.05,1", "dataset.val_fraction=0.25",
            f"results_dir={tmp_path}"]
    composed = []
    compose = Composer.compose
    monkeypatch.setattr(Composer, "compose", lambda self, cell: composed.append(cell) or compose(self, cell))
    plans = make_plans(grid, multirun=True)
    assert len(plans) == len(poolings) * 4 and len(composed) == len(poolings)  # one composition per option
    for p in plans:
        alone = make_plan(list(p.overrides))
        assert p.run_id == alone.run_id, p.overrides
        assert OmegaConf.to_container(p.cfg) == OmegaConf.to_container(alone.cfg), p.overrides
        assert OmegaConf.get_type(p.cfg) is OmegaConf.get_type(alone.cfg) and p.choices == alone.choices
    assert {type(p.cfg.lr) for p in plans} == {float}  # lr=1 typed as the schema's float, as composing types it
    # a method's cells share the nodes their values leave alone: a copy changed as a job changes it (runner/machine.py)
    # leaves every cell as planned
    same = [p for p in plans if p.choices["pooling"] == poolings[0]]
    before = [OmegaConf.to_container(p.cfg) for p in same]
    changed = same[-1].cfg.copy()
    with open_dict(changed):
        changed.threads, changed.dataset.val_fraction, changed.lr = 3, 0.5, 0.125
    assert [OmegaConf.to_container(p.cfg) for p in same] == before
    assert OmegaConf.to_container(copy.deepcopy(same[-1].cfg)) == before[-1]
    # a bad value in a later cell is refused with the words a cell alone gets
    with pytest.raises(ConfigError) as alone:
        make_plan(["epochs=abc", f"results_dir={tmp_path}"])
    with pytest.raises(ConfigError) as in_grid:
        make_plans(["epochs=2,abc", f"results_dir={tmp_path}"], multirun=True)
    assert str(in_grid.value) == str(alone.value)
