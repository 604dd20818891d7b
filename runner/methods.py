"""The methods of a ``python -m runner.tune`` command: its cells planned and grouped into methods (a cell less its
seed), each method's search space and its every bound checked as a run before any trial, and a trial's cell."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from omegaconf import OmegaConf

from runner import space
from runner.compose import Composer
from runner.identity import id_of
from runner.plan import Planner, RunPlan, literal, plan_from_config
from runner.schema import NOT_IDENTITY, ConfigError, override_key
from runner.study import Method, tune_settings


def prepare(overrides: Sequence[str], multirun: bool,
            where: dict[str, Any]) -> tuple[list[Method], dict[str, Any], Planner]:
    """Plan every cell, group the cells into methods, check each method's space; a ConfigError for any mistake.
    Returns the methods, the launcher's settings and the planner that plans their trials."""
    tune_over = [o for o in overrides if override_key(o).split(".")[0] == "tune"]
    run_over = [o for o in overrides if o not in tune_over]
    for o in run_over:
        if override_key(o).split(".")[0] == "trial":
            raise ConfigError(f"{o}: trial is set by python -m runner.tune itself, on the trials it may prune.")
    if any(o.startswith("~tune") for o in tune_over):
        raise ConfigError(
            "tune=null: python -m runner.tune needs tune settings (conf/tune/); leave tune unset for default."
        )
    if not any(override_key(o) == "tune" for o in tune_over):
        tune_over = ["tune=default"] + tune_over
    with Composer(**where) as composer:
        master = composer.master(run_over + tune_over, multirun)
        launcher = OmegaConf.to_container(master.hydra.launcher, resolve=False)
        planner = Planner(launcher)
        methods: dict[tuple[str, ...], Method] = {}
        for cell in composer.cells(run_over, multirun, master):
            cfg, choices = composer.compose(cell + tune_over)
            settings = tune_settings(cfg.get("tune"))
            spaces = space.method_space(cfg)  # before planning: the plan drops what options declare for tuning
            plan = plan_from_config(cfg, choices, cell, launcher, composer=composer, checked=planner.checked,
                                    typed_options=planner.typed, skip_completed_builds=True)
            key = tuple(o for o in cell if override_key(o) != "seed")
            if key not in methods:
                label = " ".join(o for o in key if override_key(o) not in NOT_IDENTITY and override_key(o).split(".")[0]
                                 not in ("launcher", "hydra")) or "default"
                fixed = {override_key(o): o for o in key if "=" in o}
                dists = {k: space.distribution(k, spec, plan.cfg, fixed, label) for k, spec in spaces.items()}
                if not dists:
                    raise ConfigError(f"tune.space: {label} has nothing to tune: the space is empty (give e.g. "
                                      "+tune.space.lr={low:0.01,high:0.3,log:true}).")
                methods[key] = Method(key, label, plan, settings, dists)
            m = methods[key]
            if dataclasses.replace(settings, space=None) != dataclasses.replace(m.settings, space=None):
                raise ConfigError(f"tune: {m.label} has different tune settings in different cells; give tune.* once "
                                  "for the whole command.")
            m.seeds.append(int(plan.cfg.seed))
        first = next(iter(methods.values()))
        for m in methods.values():
            if dataclasses.replace(m.settings, space=None) != dataclasses.replace(first.settings, space=None):
                raise ConfigError(f"tune: {m.label} and {first.label} have different tune settings; every method of a "
                                  "comparison gets the same budget, seeds and metric.")
            for params in space.probes(m.space):  # every bound and choice is a valid run before any trial runs
                try:
                    planner.plan(composer, trial_cell(m, m.settings.seeds[0], params), check_data=False)
                except ConfigError as e:
                    shown = " ".join(f"{k}={v}" for k, v in params.items())
                    raise ConfigError(f"tune.space: {m.label} at {shown}: {e}") from None
    for m in methods.values():
        m.study_name = f"{m.label}@{_method_hash(m.plan)}"
        shared = sorted(set(m.seeds) & set(m.settings.seeds))
        if shared:  # the final run would be the trial's own run: a setting chosen on the very noise it is scored on
            raise ConfigError(
                f"seed={','.join(map(str, shared))}: a final seed of {m.label} is also a tuning seed "
                f"(tune.seeds={list(m.settings.seeds)}); its final run would be the trial that chose the setting. "
                f"Give final seeds apart from the tuning seeds, e.g. seed=0,1,2 or tune.seeds=[{max(m.seeds) + 100}]."
            )
    return list(methods.values()), launcher, planner


def _method_hash(plan: RunPlan) -> str:
    """The identity of a method's runs, the seed aside: a study is the same whatever the cell's spelling."""
    ident = json.loads(json.dumps(plan.identity))
    ident["config"].pop("seed", None)
    return id_of(ident)[:8]


def trial_cell(m: Method, seed: int, params: dict[str, Any], extra: Sequence[str] = ()) -> list[str]:
    return [*m.cell, f"seed={seed}", *(f"{k}={literal(v)}" for k, v in sorted(params.items())), *extra]
