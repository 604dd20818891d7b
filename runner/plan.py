"""The run plan: one cell's typed, validated config, its chosen options, its identity, its teacher and OOD data.

``make_plans(command)`` composes every cell of a command and plans each before anything runs;
``plan_from_config(cfg, choices)`` is the one function that turns a composed config into a ``RunPlan``
(the pre-flight, a job process of a parallel launcher and a teacher's checkpoint all go through it), so
a run's id is the same in every process by construction. The plan carries everything the run needs (the
teacher's own plan, the composed OOD dataset): nothing downstream composes, types or validates again.
Typing and the ``_target_`` allow-list are runner/targets.py's; the checks before data, runner/checks.py's.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from datasets import SPECS
from runner import checks, facts, rundir
from runner.checks import check_builds, check_values, check_writable, device_type
from runner import compose
from runner.compose import Composer
from runner.schema import AXES, NOT_IDENTITY, RUN_ID, ConfigError, override_key
from runner.targets import TARGET_HOMES, option_target, resolve_target, typed_config
from runner.identity import id_of, identity
from runner.template import Template, interpolations

__all__ = ["RunPlan", "TeacherRef", "make_plan", "make_plans", "plan_from_config", "checkpoint_plan", "literal",
           "device_type"]


@dataclass(frozen=True)
class TeacherRef:
    run_id: str
    checkpoint: Path
    plan: "RunPlan"  # the teacher's own plan: its typed config builds its model, nothing is planned again
    trains: bool = False  # named by its settings: the student's run trains it first when it is missing


@dataclass(frozen=True)
class RunPlan:
    """Everything about a run that is decided before it runs; ``run()`` receives only this."""
    cfg: DictConfig  # typed, validated, interpolations resolved
    choices: dict[str, str | None]
    run_id: str
    device_type: str  # cpu | cuda | mps: part of the identity
    autocast: str | None  # "bfloat16" under amp on CUDA, else None: part of the identity
    overrides: tuple[str, ...] = ()
    teacher: TeacherRef | None = None
    identity: dict[str, Any] = field(default_factory=dict, repr=False)
    ood: DictConfig | None = None  # the dataset node of ``ood=<option>``, composed like ``dataset=`` (source_dir set)
    shown: str | None = None  # its label in a grid: the overrides that vary between the grid's cells, and the seed

    @property
    def root(self) -> Path:
        return Path(self.cfg.results_dir)

    @property
    def folder(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def label(self) -> str:
        """How lines name the run: in a grid its ``shown`` overrides, else those that can change its numbers."""
        if self.shown:
            return self.shown
        told = [o for o in self.overrides if not _setting(o)]
        return " ".join(told) or " ".join(f"{k}={v}" for k, v in self.choices.items() if v is not None)


def _setting(override: str) -> bool:
    """Whether an override only says where or how a run runs (results_dir=, threads=, logger=...)."""
    key = override_key(override)
    return any(key == k or key.startswith(k + ".") for k in NOT_IDENTITY)


def labelled(plans: list[RunPlan]) -> list[RunPlan]:
    """The plans of a grid, each labelled by the overrides that differ between its cells, and its seed."""
    if len(plans) < 2:
        return plans
    keys = {override_key(o) for p in plans for o in p.overrides}
    values: dict[str, set[str]] = {k: set() for k in keys}
    for p in plans:
        given = {override_key(o): o for o in p.overrides}
        for key in keys:
            values[key].add(given.get(key, ""))
    varying = {k for k, v in values.items() if len(v) > 1} | {"seed"}
    return [replace(p, shown=" ".join(o for o in p.overrides if override_key(o) in varying) or None) for p in plans]


# ---------------------------------------------------------------- the command

BUILT = ("model", "pooling", "global_pool", "norm", "loss", "optim")  # the nodes check_builds builds from


def make_plans(overrides: Sequence[str], multirun: bool = False, *, config_dir: str | None = None,
               config_path: str | None = None, config_name: str | None = None,
               searchpath: Sequence[str] | None = None, skip_completed_builds: bool = True,
               preview: bool = False) -> list[RunPlan]:
    """Plan every cell of ``python -m runner [-m] <overrides>``: a ConfigError for the first bad cell.

    A cell whose run already completed is not built again (its model ran before); the model of every
    other distinct architecture is built once and run on zeros of the dataset's shape. ``preview=True`` (a grid
    preview) builds nothing and fetches nothing (what download=true would download), and reads what the option
    classes declare from the record where it can, so that it need not import torch (runner/facts.py).
    """
    found = compose.searchpath(overrides) if searchpath is None else searchpath
    with Composer(config_dir, config_path, config_name, found) as composer, no_cycle_collection(), \
            facts.remembered() if preview else contextlib.nullcontext():
        master = composer.master(overrides, multirun)
        launcher = OmegaConf.to_container(master.hydra.launcher, resolve=False)
        checks.check_launch(master.hydra, overrides, multirun)
        planner = Planner(launcher, skip_completed_builds, preview)
        plans = [planner.plan(composer, cell, build=False) for cell in composer.cells(overrides, multirun, master)]
        for plan in plans:  # after every cell's values passed: a bad last cell is refused before any build
            planner.check_built(plan)
    if "torch" in sys.modules and not facts.all_options_recorded():  # the classes are at hand: a later preview
        _describe_options()  # of a grid over any of them needs no torch
    facts.save()  # what was read of the option classes, the compositions and the machine, for the next preview
    return labelled(plans)


@functools.cache
def _describe_options() -> None:
    """Every option class of the project's conf/ whose module this process has imported, read for the record
    (runner/facts.py), once per process; a class whose module is not imported is left (EvoNorm's imports timm)."""
    for group, home in TARGET_HOMES.items():
        for option in sorted((compose.CONF_DIR / group).glob("*.yaml")):
            path = str(compose.option_yaml(group, option.stem).get("_target_") or "")
            module, _, name = path.rpartition(".")
            if name in getattr(sys.modules.get(module), "__dict__", {}):  # defined or imported there already
                option_target(group, path, home)
    facts.all_options_read()


class Planner:
    """Plans the cells of one command, each distinct option node typed once, each distinct architecture built
    once, and a cell that differs from an earlier one only in run-level scalars (a grid's seeds, a study's trial
    values) filled into that cell's typed config instead of composed and typed again (``Template``). It outlives
    a Composer: ``runner.tune`` plans each round's trials with the planner of the whole command."""

    def __init__(self, launcher: Mapping[str, Any] | None, skip_completed_builds: bool = True,
                 preview: bool = False) -> None:
        self.launcher, self.skip_completed_builds, self.preview = launcher, skip_completed_builds, preview
        self.checked: set[str] = set()
        self.typed: dict[str, DictConfig] = {}
        self.templates: dict[tuple[Any, ...], Template] = {}
        self.built: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # the method nodes built, by identity (kept alive)

    def plan(self, composer: Composer, cell: Sequence[str], *, build: bool = True,
             check_data: bool = True) -> RunPlan:
        group, values = composer.split(cell)
        key = (group, tuple(o.key_or_group for o in values))
        template = self.templates.get(key)
        cfg = template.fill(values) if template else None
        if cfg is not None:
            plan = plan_from_config(cfg, template.choices, cell, self.launcher, composer=composer,
                                    checked=self.checked, typed_options=self.typed, build=False,
                                    check_data=check_data, plain=template.plain(cfg, values), preview=self.preview)
        else:
            cfg, choices = composer.compose(cell)
            referenced = interpolations(cfg)
            plan = plan_from_config(cfg, choices, cell, self.launcher, composer=composer, checked=self.checked,
                                    typed_options=self.typed, build=False, check_data=check_data, preview=self.preview)
            self.templates.setdefault(key, Template(plan.cfg, plan.choices, referenced))
        if build:
            self.check_built(plan, check_data)
        return plan

    def check_built(self, plan: RunPlan, check_data: bool = True) -> None:
        """``check_built``; a cell whose method nodes are the very nodes of a cell built before (a template's cells
        share them, runner/template.py) and whose dataset is that cell's has nothing new to build: working out
        the keys that say so cost a fifth of a 200-cell grid's planning."""
        nodes = tuple(plan.cfg._get_node(axis) for axis in BUILT)
        same = (tuple(map(id, nodes)), plan.cfg.dataset.name)
        if check_built(plan, self.checked, self.skip_completed_builds, check_data, self.preview,
                       models=same not in self.built):
            self.built[same] = nodes


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Planning allocates many small OmegaConf nodes that live on in the plans; the cycle collector's passes over
    them cost 15 % of a 200-cell grid's planning and free nothing, so it waits until the plans are made."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def make_plan(overrides: Sequence[str] = (), **kwargs: Any) -> RunPlan:
    """The plan of one run, as ``python -m runner <overrides>`` makes it."""
    return make_plans(overrides, **kwargs)[0]


# ---------------------------------------------------------------- one cell

def plan_from_config(
    cfg: DictConfig | Mapping[str, Any],
    choices: Mapping[str, str | None],
    overrides: Sequence[str] = (),
    launcher: Mapping[str, Any] | None = None,
    *,
    composer: Composer | None = None,
    checked: set[str] | None = None,
    typed_options: dict[str, DictConfig] | None = None,
    skip_completed_builds: bool = False,
    check_data: bool = True,
    plain: dict[str, Any] | None = None,
    build: bool = True,
    preview: bool = False,
) -> RunPlan:
    """Type, validate and identify one composed config. Raises ConfigError (nothing is written).

    ``checked`` and ``typed_options`` carry what a grid has already built and typed, so each distinct
    architecture is built once and each distinct option node is typed once per command; ``build=False`` leaves
    ``check_built`` to the caller. ``plain``: ``cfg`` is a Template's config, typed already, and this is it as a
    container (what its identity is made of). ``preview=True``: nothing is built nor fetched (a grid
    preview writes nothing), and option classes may be read from the record (``make_plans``)."""
    if plain is None:
        cfg = typed_config(cfg, typed_options if typed_options is not None else {})
    choices = dict(choices)
    writable = json.dumps(["writable", cfg.results_dir])
    if check_data and writable not in (checked or ()):  # once per folder in a command (a probe folder each time)
        check_writable("results_dir", cfg.results_dir)
        if checked is not None:
            checked.add(writable)
    ood, options = _ood(cfg, composer) if cfg.ood is not None else (None, ())
    check_values(cfg, choices, ood, options)
    kind = device_type(cfg.device, launcher)
    autocast = "bfloat16" if kind == "cuda" and cfg.amp else None
    teacher = _teacher(cfg, choices, launcher, composer, preview) if cfg.teacher is not None else None
    ident = identity(cfg if plain is None else plain, choices, kind, autocast, teacher.run_id if teacher else None)
    rid = id_of(ident)
    plan = RunPlan(cfg, choices, rid, kind, autocast, tuple(overrides), teacher, ident, ood)
    if build:
        check_built(plan, checked if checked is not None else set(), skip_completed_builds, check_data, preview)
    return plan


def check_built(plan: RunPlan, checked: set[str], skip_completed_builds: bool, check_data: bool = True,
                preview: bool = False, models: bool = True) -> bool:
    """The checks that build a model or read data, each distinct one once per command (``checked``): a grid
    runs them after every cell's values passed, so a bad last cell is refused before any model is built.
    ``models=False``: this cell's model, loss and optimizer are known to have been built; ``preview``: nothing is
    built, and download=true fetches nothing. Returns whether they were built here."""
    done = skip_completed_builds and not plan.cfg.force and rundir.completed(plan.folder) is not None
    built = models and not preview and not done
    if built:
        check_builds(plan.cfg, plan.choices, checked)
    if check_data:
        checks.check_data(plan.cfg, plan.ood, checked)
        if not preview:
            checks.fetch_data(plan.cfg, plan.ood, checked)
    return built


def _ood(cfg: DictConfig, composer: Composer | None) -> tuple[DictConfig | None, list[str]]:
    """The dataset node of ``ood=<option>`` as ``dataset=<option>`` composes it (so an option from the user's
    --config-dir works in both places), with ``ood_source_dir`` as its source_dir; None if there is no such option."""
    own = composer is None
    composer = composer or Composer.from_global()
    try:
        options = composer.options("dataset")
        if cfg.ood not in options:
            return None, options
        node = composer.compose([f"dataset={cfg.ood}"])[0].dataset
    finally:
        if own:
            composer.release()
    node.source_dir = cfg.ood_source_dir
    return node, options


# ---------------------------------------------------------------- the distillation teacher

def _teacher(cfg: DictConfig, choices: Mapping[str, str | None], launcher: Mapping[str, Any] | None,
             composer: Composer | None, preview: bool) -> TeacherRef:
    """Where the teacher is (or will be): by its settings, by ``teacher.run_id`` or by ``teacher.checkpoint``."""
    t = cfg.teacher
    ways = [k for k in ("overrides", "run_id", "checkpoint") if t.get(k)]
    if len(ways) != 1:
        raise ConfigError(f"teacher={choices.get('teacher')}: give exactly one of teacher.overrides (the teacher run's "
                          f"settings), teacher.run_id or teacher.checkpoint; got {', '.join(ways) or 'none'}.")
    root = Path(cfg.results_dir)
    if t.overrides:
        plan = _teacher_plan(cfg, choices, launcher, composer, preview)
        return TeacherRef(plan.run_id, plan.folder / "checkpoint.pt", plan, trains=True)
    if t.run_id is not None:
        if not RUN_ID.fullmatch(str(t.run_id)):
            raise ConfigError(f"teacher.run_id={t.run_id}: not a run id (10 hexadecimal digits, the folder names "
                              f"under {root / 'runs'}).")
        path, key = root / "runs" / str(t.run_id) / "checkpoint.pt", "teacher.run_id"
    else:
        path, key = Path(t.checkpoint), "teacher.checkpoint"
    from runner.checkpoint import read_checkpoint  # torch: only a teacher named by its run or checkpoint needs it

    ckpt = read_checkpoint(path, key)
    teacher_plan = checkpoint_plan(ckpt, key)
    _check_teacher_shape(teacher_plan.cfg.dataset.name, cfg.dataset.name, key)
    _check_weights_fit(ckpt["model"], teacher_plan, f"{key}={path}")
    rid = str(ckpt.get("run_id") or "")
    return TeacherRef(
        rid if RUN_ID.fullmatch(rid) else hashlib.sha1(path.read_bytes()).hexdigest()[:10], path, teacher_plan
    )


def _check_weights_fit(weights: Mapping[str, Any], plan: RunPlan, where: str) -> None:
    """The checkpoint's weights have the names and shapes of the model its own config builds (else the student
    would fail when it loads them, after the plan said yes)."""
    from runner import build  # here: building needs the models, which planning a run without a teacher does not

    expected = {k: tuple(v.shape) for k, v in build.model(plan.cfg).state_dict().items()}
    given = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    wrong = sorted(expected.keys() ^ given.keys()) + sorted(k for k in expected.keys() & given.keys()
                                                          if expected[k] != given[k])
    if wrong:
        shown = ", ".join(f"{k} ({'missing' if k not in given else 'unexpected' if k not in expected else given[k]})"
                          for k in wrong[:3])
        raise ConfigError(f"{where}: its weights do not fit the model its own config builds ({len(wrong)} "
                          f"differ: {shown}{', ...' if len(wrong) > 3 else ''}).")


def _teacher_plan(cfg: DictConfig, choices: Mapping[str, str | None], launcher: Mapping[str, Any] | None,
                  composer: Composer | None, preview: bool) -> RunPlan:
    """The teacher run named by its settings, on the student's dataset and where/how the student runs."""
    student = [f"dataset={choices['dataset']}"] + [f"dataset.{k}={literal(v)}" for k, v in cfg.dataset.items()]
    where = [f"{k}={literal(cfg[k])}" for k in ("data_dir", "download", "results_dir", "device", "threads", "amp",
                                                  "channels_last")]
    cell = [*student, *cfg.teacher.overrides, *where]
    own = composer is None
    composer = composer or Composer.from_global()
    try:
        tcfg, tchoices = composer.compose(cell)
    except ConfigError as e:
        raise ConfigError(f"teacher.overrides={list(cfg.teacher.overrides)}: {e}") from None
    finally:
        if own:
            composer.release()
    if tcfg.get("teacher") is not None:
        raise ConfigError(
            f"teacher.overrides={list(cfg.teacher.overrides)}: a teacher cannot have a teacher of its own."
        )
    return plan_from_config(tcfg, tchoices, [f"teacher={choices.get('teacher')}"], launcher, composer=None,
                            skip_completed_builds=True, preview=preview)


def literal(value: Any) -> str:
    """A value as a Hydra override writes it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(value)


def checkpoint_plan(ckpt: Mapping[str, Any], key: str = "checkpoint") -> RunPlan:
    """The plan of the run a checkpoint holds, through the same checks as a user's config (no data needed)."""
    config = dict(ckpt["config"])
    config.pop("teacher", None)  # the teacher's own teacher is not needed to rebuild it
    config["ood"] = None  # nor its OOD scoring
    choices = ckpt.get("choices") if isinstance(ckpt.get("choices"), dict) else {}
    choices = {a: choices.get(a) for a in AXES} | {"teacher": None}
    config["loss"] = {"_target_": "runner.losses.CrossEntropy"} if _distills(config) else config.get("loss")
    try:
        return plan_from_config(config, choices, check_data=False)
    except ConfigError as e:
        raise ConfigError(f"{key}: the config stored in the checkpoint is not valid here: {e}") from None


def _distills(config: Mapping[str, Any]) -> bool:
    loss = config.get("loss")
    if not isinstance(loss, Mapping):
        return False
    try:
        return bool(getattr(resolve_target("loss._target_", str(loss.get("_target_")), TARGET_HOMES["loss"]),
                            "needs_teacher", False))
    except ConfigError:
        return False


def _check_teacher_shape(teacher_dataset: str, dataset: str, key: str) -> None:
    t, s = SPECS[teacher_dataset], SPECS[dataset]
    if (t.num_classes, t.in_channels, t.image_size) != (s.num_classes, s.in_channels, s.image_size):
        raise ConfigError(f"{key}: the teacher was trained on {teacher_dataset} ({t.num_classes} classes, "
                          f"{t.in_channels}×{t.image_size}×{t.image_size} images); dataset={dataset} has "
                          f"{s.num_classes} classes and {s.in_channels}×{s.image_size}×{s.image_size} images.")
