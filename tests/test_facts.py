"""A grid preview plans from the record of what the option classes and the machine said (runner/facts.py): every
option of every family comes out exactly as planning from the code gives it, and a record that no longer fits the
sources or config files, or is corrupt, or cannot be written, is read around, never trusted."""
from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, option_needs
from runner import checks, facts, machine, targets
from runner.compose import CONF_DIR, Composer
from runner.plan import Planner, _describe_options, make_plans
from runner.schema import AXES, ConfigError

# every option of every axis with what it needs to plan (a teacher option is planned with each distillation loss)
CELLS = [[f"{group}={p.stem}", *option_needs(group, p.stem)] for group in AXES if group != "teacher"
         for p in sorted((CONF_DIR / group).glob("*.yaml"))]
# mistakes planning finds in the values (a preview builds no model, so not those a build finds)
MISTAKES = [["pooling.kernel_size=two"], ["+pooling.foo=1"], ["+loss.foo=1", "loss=focal"],
            ["norm=fixup"], ["batch_size=1", "norm=batch"],
            ["loss=kd"], ["norm=weight_norm", "norm@norm.block=batch", "batch_size=1"], ["device=cuda:3"]]


@pytest.fixture
def record(tmp_path, monkeypatch, data_dir):
    """A record of this test's own, empty, and a count of the option classes read from the code."""
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(facts, "_learned", {"targets": {}, "device": None, "configs": {}})
    monkeypatch.setattr(facts, "_stand_ins", {})
    _describe_options.cache_clear()  # once per process: this test's record gets it too
    read = []
    for module in (targets, checks):
        real = module.resolve_target
        monkeypatch.setattr(module, "resolve_target", lambda *a, real=real: read.append(a[1]) or real(*a))
    where = [f"data_dir={data_dir}", "dataset.verify_checksums=false", f"results_dir={tmp_path / 'res'}"]
    return tmp_path / "cache" / "facts.json", read, where


def planned(cell, **kwargs):
    try:
        (plan,) = make_plans(cell, **kwargs)
    except ConfigError as e:
        return str(e)
    return plan.run_id, plan.device_type, plan.choices, OmegaConf.to_container(plan.cfg)


def test_every_option_previewed_from_the_record_is_planned_as_from_the_code(record):
    path, read, where = record

    def plan_all(cells, preview):  # one composer a pass: each cell's options composed once (or read from the record)
        planner, out, composed = Planner(None, preview=preview), [], []
        with Composer() as composer, facts.remembered() if preview else contextlib.nullcontext():
            compose = composer.hydra.compose_config
            composer.hydra.compose_config = lambda *a, **k: composed.append(a) or compose(*a, **k)
            for cell in cells:
                try:
                    p = planner.plan(composer, [*cell, *where], build=False)
                    out.append((p.run_id, p.device_type, p.choices, OmegaConf.to_container(p.cfg)))
                except ConfigError as e:
                    out.append(str(e))
        return out, composed

    live, composed = plan_all(CELLS + MISTAKES, preview=False)
    assert all(isinstance(p, tuple) for p in live[:len(CELLS)]) and all(isinstance(p, str) for p in live[len(CELLS):])
    facts.save()
    assert path.exists() and read and composed
    read.clear()
    previewed, composed = plan_all(CELLS, preview=True)
    assert previewed == live[:len(CELLS)]
    assert read == [] and composed == []  # every class and every composition from the record
    assert plan_all(MISTAKES, preview=True)[0] == live[len(CELLS):]  # and the same words for each mistake


def test_a_preview_of_options_not_planned_before_reads_no_class_once_any_run_was_planned(record):
    path, read, where = record
    planned(["pooling=max", *where])  # the classes of every option are at hand after a plan: all are recorded
    assert facts.all_options_recorded() and json.loads(path.read_text())["sources"]["all_options"] is True
    read.clear()
    grid = make_plans(["pooling=avg,softpool,lp", "norm=group,layer", *where], multirun=True, preview=True)
    assert len(grid) == 6 and read == []


def test_the_record_of_the_machine_is_read_by_a_preview_only(record):
    path, _, where = record
    cell = ["pooling=avg", *where]
    live = planned(cell)
    facts._learned["device"] = {"cuda_available": True, "cuda_count": 1, "mps_available": False}
    facts.save()  # as a CUDA machine would have recorded it
    assert planned(cell, preview=True)[1] == "cuda"
    assert planned(cell) == live and live[1] == ("cuda" if torch.cuda.is_available() else "cpu")  # torch says
    assert planned(cell, preview=True) == live  # and records what torch said
    facts._learned["device"] = {"cuda_available": True, "cuda_count": 3, "mps_available": False}
    facts.save()
    with facts.remembered():  # launcher=local's ${machine_jobs:} in a preview: one job per recorded GPU
        assert machine.gpu_count() == 3 and machine.machine_jobs() == 3
    assert machine.gpu_count() == torch.cuda.device_count()  # a run asks torch


@pytest.mark.parametrize("changed", ["models/pooling/__init__.py", "conf/pooling/lp.yaml"])
def test_a_record_from_other_sources_or_config_files_is_not_read(record, changed, monkeypatch):
    from hydra._internal.hydra import Hydra

    path, read, where = record
    composed = []
    compose = Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda *a, **k: composed.append(a) or compose(*a, **k))
    cell = ["pooling=lp", *where]
    live = planned(cell)
    assert planned(cell, preview=True) == live
    source = ROOT / changed
    st = source.stat()
    facts._sources_key.cache_clear()
    try:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file saved again: maybe changed
        read.clear()
        composed.clear()
        assert planned(cell, preview=True) == live
        assert len(composed) == 2 and bool(read) == changed.endswith(".py")  # composed again, classes read again
    finally:
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))
        facts._sources_key.cache_clear()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"sources": 3, "machine": []}', "SHAPES"])
def test_a_corrupt_record_is_read_around_and_written_again(record, content):
    path, read, where = record
    cell = ["pooling=softpool", "norm=group", *where]
    live = planned(cell)
    if content == "SHAPES":  # the right key, entries of the wrong shape
        saved = json.loads(path.read_text())
        saved["sources"]["targets"] = {k: {"params": "x"} for k in saved["sources"]["targets"]}
        saved["machine"]["device"] = {"cuda_available": 1}
        content = json.dumps(saved)
    path.write_text(content)
    facts._learned["device"] = None
    read.clear()
    assert planned(cell, preview=True) == live and read
    assert json.loads(path.read_text())["sources"]["key"] == facts._sources_key()  # a valid record again
    read.clear()
    facts._stand_ins.clear()
    assert planned(cell, preview=True) == live and read == []


def test_a_record_that_cannot_be_written_costs_nothing_but_time(record, monkeypatch):
    _, read, where = record
    monkeypatch.setenv("RUNNER_CACHE_DIR", "/proc/runner-cache")
    cell = ["pooling=max", *where]
    assert planned(cell, preview=True) == planned(cell) and read
