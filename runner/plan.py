"""The run plan: one cell's typed, validated config, its chosen options, its identity and its teacher.

``make_plans(command)`` composes every cell of a command and plans each before anything runs;
``plan_from_config(cfg, choices)`` is the one function that turns a composed config into a ``RunPlan``
(the pre-flight, a job process of a parallel launcher and a teacher's checkpoint all go through it), so
a run's id is the same in every process by construction. Nothing downstream re-validates a plan.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from datasets import SPECS, DataError, check_available, load_cached
from datasets.registry import cache_path
from datasets.batches import AUGMENTS
from models import declared
from runner import build, records
from runner.checkpoint import read_checkpoint
from runner.compose import CONF_DIR, Composer, dotted_keys, option_yaml
from runner.metrics import TS_METHODS
from runner.schema import (AXES, NOT_IDENTITY, RUN_ID, RUN_KEYS, ConfigError, DatasetConfig, RunConfig, TeacherConfig,
                           check_dataclass_ranges, did_you_mean, typed_option)

# Each group instantiates only classes and functions defined in its own package: a config (from the
# shell, a YAML, a checkpoint) can choose among the project's methods but never name other code.
TARGET_HOMES = {"model": "models", "pooling": "models.pooling", "global_pool": "models.pooling", "norm": "models.norm",
                "loss": "runner.losses", "optim": "runner.optim"}
SPECIAL_KEYS = ("_target_", "_partial_")  # Hydra's other instantiate keys (_args_, _recursive_, _convert_) are refused


@dataclass(frozen=True)
class TeacherRef:
    run_id: str
    checkpoint: Path
    plan: "RunPlan | None" = None  # named by its settings: the run that trains it when it is missing


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

    @property
    def root(self) -> Path:
        return Path(self.cfg.results_dir)

    @property
    def folder(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def label(self) -> str:
        return " ".join(self.overrides) or " ".join(f"{k}={v}" for k, v in self.choices.items() if v is not None)


# ---------------------------------------------------------------- the command

def make_plans(overrides: Sequence[str], multirun: bool = False, *, config_dir: str | None = None,
               config_path: str | None = None, config_name: str | None = None,
               skip_completed_builds: bool = True) -> list[RunPlan]:
    """Plan every cell of ``python -m runner [-m] <overrides>``: a ConfigError for the first bad cell.

    A cell whose run already completed is not built again (its model ran before); the model of every
    other distinct architecture is built once and run on zeros of the dataset's shape.
    """
    with Composer(config_dir, config_path, config_name) as composer:
        master = composer.master(overrides, multirun)
        launcher = OmegaConf.to_container(master.hydra.launcher, resolve=False)
        checked: set[str] = set()
        typed: dict[str, DictConfig] = {}
        plans = []
        for cell in composer.cells(overrides, multirun, master):
            cfg, choices = composer.compose(cell)
            plans.append(plan_from_config(cfg, choices, cell, launcher, composer=composer, checked=checked,
                                          typed_options=typed, skip_completed_builds=skip_completed_builds))
    return plans


def make_plan(overrides: Sequence[str] = (), **kwargs: Any) -> RunPlan:
    """The plan of one run, as ``python -m runner <overrides>`` makes it."""
    return make_plans(overrides, **kwargs)[0]


# ---------------------------------------------------------------- one cell

def plan_from_config(cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, str | None], overrides: Sequence[str] = (),
                     launcher: Mapping[str, Any] | None = None, *, composer: Composer | None = None,
                     checked: set[str] | None = None, typed_options: dict[str, DictConfig] | None = None,
                     skip_completed_builds: bool = False, check_data: bool = True) -> RunPlan:
    """Type, validate and identify one composed config. Raises ConfigError (nothing is written).

    ``checked`` and ``typed_options`` carry what a grid has already built and typed, so each distinct
    architecture is built once and each distinct option node is typed once per command."""
    cfg = _typed(cfg, typed_options if typed_options is not None else {})
    choices = dict(choices)
    if check_data:
        _check_writable("results_dir", cfg.results_dir)
    _check_values(cfg, choices)
    kind = device_type(cfg.device, launcher)
    autocast = "bfloat16" if kind == "cuda" and cfg.amp else None
    teacher = _teacher(cfg, choices, launcher, composer) if cfg.teacher is not None else None
    ident = identity(cfg, choices, kind, autocast, teacher.run_id if teacher else None)
    rid = hashlib.sha1(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]
    plan = RunPlan(cfg, choices, rid, kind, autocast, tuple(overrides), teacher, ident)
    done = skip_completed_builds and not cfg.force and records.completed(plan.folder) is not None
    if not done:
        _check_builds(cfg, choices, checked if checked is not None else set())
    if check_data:
        _check_data(cfg, checked if checked is not None else set())
    return plan


def _typed(cfg: DictConfig | Mapping[str, Any], typed_options: dict[str, DictConfig]) -> DictConfig:
    """The run config typed by the schema, interpolations resolved, each group option typed by its target.

    ``typed_options`` holds the option nodes already typed in this command (a grid repeats a few options in
    many cells; typing one costs milliseconds of OmegaConf)."""
    raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    unknown = sorted(set(raw.keys()) - set(RUN_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a config key.{did_you_mean(str(unknown[0]), RUN_KEYS)} "
                          f"See `python -m runner --cfg job` for every key.")
    if OmegaConf.get_type(raw) is not RunConfig:  # a checkpoint's config or a plain mapping; Hydra's is typed already
        try:
            teacher = raw.get("teacher")
            raw = OmegaConf.merge(OmegaConf.structured(RunConfig), {k: raw._get_node(k) for k in raw.keys() if k != "teacher"})
            raw["teacher"] = teacher
        except OmegaConfBaseException as e:
            raise ConfigError(f"{e.full_key}: {_first_line(e)}.") from None
    try:
        OmegaConf.resolve(raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or next((k for k in dotted_keys(raw) if not _resolves(raw, k)), "?")
        raise ConfigError(f"{key}: its value cannot be resolved ({_first_line(e)}). "
                          "Check the interpolation (${...}) and any environment variable it reads.") from None
    with open_dict(raw):
        for axis in TARGET_HOMES:  # an option's search space (conf/<group>/<option>.yaml: tune:) is runner.tune's
            if isinstance(raw[axis], DictConfig) and "tune" in raw[axis]:
                del raw[axis]["tune"]
    plain = OmegaConf.to_container(raw)
    with open_dict(raw):
        for axis, home in TARGET_HOMES.items():
            key = json.dumps([axis, plain[axis]], sort_keys=True, default=str)
            if key not in typed_options:
                typed_options[key] = _typed_option(axis, raw[axis], home)
            raw[axis] = typed_options[key]
        if raw.get("teacher") is not None:
            try:
                raw["teacher"] = OmegaConf.merge(OmegaConf.structured(TeacherConfig), raw.teacher)
            except OmegaConfBaseException as e:
                raise ConfigError(f"teacher.{e.full_key}: {_first_line(e)}.") from None
    return raw


def _resolves(cfg: DictConfig, key: str) -> bool:
    try:
        OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        return True
    except OmegaConfBaseException:
        return False


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")[0].split())


def _typed_option(key: str, node: Any, home: str) -> DictConfig:
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key}: expected a config with a _target_ (an option of conf/{key.split('.')[0]}/), got {node!r}.")
    extra = [k for k in node.keys() if str(k).startswith("_") and str(k).endswith("_") and k not in SPECIAL_KEYS]
    if extra:
        raise ConfigError(f"{key}.{extra[0]}: not allowed; an option may set {' and '.join(SPECIAL_KEYS)} only.")
    target = resolve_target(f"{key}._target_", str(node._target_), home)
    typed = typed_option(key, node, target)
    for k in typed.keys():  # a nested option (weight_norm's block) is typed by its own target, same home
        child = typed._get_node(k)
        if isinstance(child, DictConfig) and "_target_" in child:
            typed[k] = _typed_option(f"{key}.{k}", child, home)
        elif isinstance(child, (DictConfig, ListConfig)):
            _refuse_nested_targets(f"{key}.{k}", child)
    return typed


def _refuse_nested_targets(key: str, node: Any) -> None:
    if isinstance(node, DictConfig):
        for k in node.keys():
            if str(k).startswith("_") and str(k).endswith("_"):
                raise ConfigError(f"{key}.{k}: not allowed here; only an option's own node may have a _target_.")
            _refuse_nested_targets(f"{key}.{k}", node._get_node(k))
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node._iter_ex(resolve=False)):
            _refuse_nested_targets(f"{key}[{i}]", item)


def resolve_target(key: str, path: str, home: str) -> Callable[..., Any]:
    """The class or function ``path`` names, if it is defined under ``home`` (a package of this project).

    Only modules under ``home`` are ever imported, and the object must be *defined* there (its
    ``__module__``), so a path that walks from a project module into a library it imports is refused.
    """
    refuse = ConfigError(f"{key}={path}: not allowed; a {key.split('.')[0]} option instantiates only classes and "
                         f"functions defined in this project's {home} package.")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", path) or not (path + ".").startswith(home + "."):
        raise refuse
    parts = path.split(".")
    for i in range(len(parts) - 1, home.count(".") , -1):
        module = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):  # this prefix is not a module; try a shorter one
                continue
            raise
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"{key}={path}: {module} has no {'.'.join(parts[i:])}.") from None
        defined_in = getattr(obj, "__module__", "") or ""
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and (defined_in + ".").startswith(home + "."):
            return obj
        raise refuse
    raise refuse  # the package itself, or nothing importable under it


# ---------------------------------------------------------------- checks before any data is touched

def _check_values(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    check_dataclass_ranges(cfg, RunConfig)
    check_dataclass_ranges(cfg.dataset, DatasetConfig, "dataset.")
    ds = cfg.dataset
    if ds.name not in SPECS:
        raise ConfigError(f"dataset.name={ds.name}: unknown dataset. Allowed: {', '.join(SPECS)}.{did_you_mean(ds.name, SPECS)}")
    if ds.augment not in AUGMENTS:
        raise ConfigError(f"dataset.augment={ds.augment}: allowed: {', '.join(AUGMENTS)}.{did_you_mean(ds.augment, AUGMENTS)}")
    if ds.source_dir is not None and not SPECS[ds.name].idx_source_dir:
        readers = [n for n, s in SPECS.items() if s.idx_source_dir]
        raise ConfigError(f"dataset.source_dir={ds.source_dir}: only {', '.join(readers)} read IDX files from a folder; "
                          f"dataset={ds.name} reads data_dir.")
    if cfg.ts_method not in TS_METHODS:
        raise ConfigError(f"ts_method={cfg.ts_method}: allowed: {', '.join(TS_METHODS)}.{did_you_mean(cfg.ts_method, TS_METHODS)}")
    if cfg.ood is not None:
        _check_ood(cfg)
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs}: longer than the run (epochs={cfg.epochs}); allowed: 0..{cfg.epochs}.")
    _check_device(cfg.device)
    _check_logger(cfg.logger)
    _check_norm(cfg, choices)
    needs = bool(declared(build.target(cfg.loss), "needs_teacher", False))
    if needs and cfg.teacher is None:
        raise ConfigError(f"loss={choices['loss']} distills from a teacher: add teacher=<{'|'.join(_teacher_options())}> "
                          "(a run trained first if missing), or teacher=run teacher.run_id=<id>, "
                          "or teacher=checkpoint teacher.checkpoint=<path>.")
    if not needs and cfg.teacher is not None:
        distill = [o for o, cls in _option_targets("loss").items() if getattr(cls, "needs_teacher", False)]
        raise ConfigError(f"teacher={choices.get('teacher')}: loss={choices['loss']} does not use a teacher; "
                          f"the distillation losses are {', '.join(distill)}.")


TRACKERS = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger.kind: the package it needs


def _check_logger(logger: DictConfig) -> None:
    if logger.kind not in TRACKERS:
        raise ConfigError(f"logger.kind={logger.kind}: allowed: {', '.join(TRACKERS)}.{did_you_mean(logger.kind, TRACKERS)}")
    package = TRACKERS[logger.kind]
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"logger={logger.kind}: the {package} package is not installed; install the tracking extras: "
                          ".venv/bin/pip install -e '.[tracking]' (make installs them).")


def _teacher_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "teacher").glob("*.yaml"))


def _option_targets(group: str) -> dict[str, Any]:
    """The project's options of ``group`` and the class each one's ``_target_`` names (for messages)."""
    out = {}
    for p in sorted((CONF_DIR / group).glob("*.yaml")):
        target = option_yaml(group, p.stem).get("_target_")
        if target:
            out[p.stem] = resolve_target(f"{group}._target_", target, TARGET_HOMES[group])
    return out


def ood_dataset(cfg: DictConfig) -> DictConfig:
    """The dataset node of ``ood=<name>``: its option's YAML, with ``ood_source_dir`` as its source_dir."""
    node = OmegaConf.merge(OmegaConf.structured(DatasetConfig), option_yaml("dataset", cfg.ood))
    node.source_dir = cfg.ood_source_dir
    return node


def _check_ood(cfg: DictConfig) -> None:
    names = [p.stem for p in sorted((CONF_DIR / "dataset").glob("*.yaml")) if p.stem != cfg.dataset.name]
    if cfg.ood not in names:
        raise ConfigError(f"ood={cfg.ood}: allowed: {', '.join(names)} (a dataset other than dataset={cfg.dataset.name})."
                          f"{did_you_mean(str(cfg.ood), names)}")
    ours, theirs = SPECS[cfg.dataset.name], SPECS[cfg.ood]
    if (ours.in_channels, ours.image_size) != (theirs.in_channels, theirs.image_size):
        def shape(s):
            return f"{s.in_channels}×{s.image_size}×{s.image_size}"
        same = [n for n in names if (SPECS[n].in_channels, SPECS[n].image_size) == (ours.in_channels, ours.image_size)]
        raise ConfigError(f"ood={cfg.ood}: its images are {shape(theirs)}, dataset={cfg.dataset.name}'s are {shape(ours)}; "
                          f"the model takes one shape. Same shape: {', '.join(same) or 'none'}.")
    if cfg.ood_source_dir is not None and not theirs.idx_source_dir:
        raise ConfigError(f"ood_source_dir={cfg.ood_source_dir}: ood={cfg.ood} reads data_dir, not IDX files from a folder.")


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"device={device}: allowed: auto, cpu, cuda, cuda:N, mps.")
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise ConfigError(f"device={device}: this machine has {n} CUDA device(s). Use device=auto or device=cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: MPS is not available on this machine. Use device=auto or device=cpu.")


def device_type(device: str, launcher: Mapping[str, Any] | None = None) -> str:
    """What ``device`` resolves to. Under a submitit launcher the job runs on another machine, so ``auto``
    follows the GPUs the launcher asks for; elsewhere it is what this machine has (cuda, then mps, then cpu)."""
    if device != "auto":
        return device.split(":")[0]
    if "submitit" in str((launcher or {}).get("_target_", "")):
        gpus = (launcher or {}).get("gpus_per_node") or (launcher or {}).get("gpus_per_task") or 0
        return "cuda" if isinstance(gpus, int) and gpus > 0 else "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def _check_norm(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """What a norm declares about the models and batches it works with (models/norm/__init__.py)."""
    norm = build.target(cfg.norm)
    needs = declared(norm, "model_requires")
    if needs is not None:
        attribute, what = needs
        if not hasattr(build.target(cfg.model), attribute):
            able = [name for name, cls in _option_targets("model").items() if hasattr(cls, attribute)]
            raise ConfigError(f"norm={choices['norm']} needs {what}; model={choices['model']} has none. "
                              f"Models that support it: {', '.join(able)}.")
    if cfg.batch_size == 1 and _batch_dependent(cfg.norm):
        free = [name for name, cls in _option_targets("norm").items() if getattr(cls, "batch_dependent", False) is not True]
        raise ConfigError(f"batch_size=1: norm={choices['norm']} normalizes with statistics over the batch and cannot "
                          f"train on one sample. Use batch_size >= 2, or a norm computed per sample: {', '.join(free)}.")


def _batch_dependent(node: DictConfig) -> bool:
    """Whether the norm block (or the block a reparametrization wraps) uses batch statistics."""
    if getattr(build.target(node), "batch_dependent", False) is True:
        return True
    return "block" in node and isinstance(node.block, DictConfig) and _batch_dependent(node.block)


class _ForwardError(RuntimeError):
    """The model built but failed on an input of the dataset's shape (often too small for its poolings)."""


def _check_builds(cfg: DictConfig, choices: Mapping[str, str | None], checked: set[str]) -> None:
    """Build the loss, the optimizer and the model (once per distinct one in a command) and run the model on two
    zero images of the dataset's shape: a value the class itself refuses is a config error, before any data."""
    where = ", ".join(f"{a}={choices[a]}" for a in ("dataset", "model", "pooling", "global_pool", "norm"))
    arch = json.dumps({a: OmegaConf.to_container(cfg[a]) for a in ("model", "pooling", "global_pool", "norm")}
                      | {"dataset": cfg.dataset.name}, sort_keys=True)
    loss_key, loss_what = json.dumps(OmegaConf.to_container(cfg.loss), sort_keys=True), f"loss={choices['loss']}"
    sized = declared(build.target(cfg.loss), "needs_mid_features", False)
    if sized:  # the loss is sized by the model: checked once per architecture
        loss_key, loss_what = loss_key + arch, f"{loss_what} with {where}"
    for key, check, what in ((arch, lambda: _dry_forward(cfg), f"the model does not build or run with {where}"),
                             (loss_key, lambda: build.loss(cfg, _uncompiled_model(cfg) if sized else None), loss_what),
                             (json.dumps(OmegaConf.to_container(cfg.optim), sort_keys=True),
                              lambda: build.optimizer(cfg, torch.nn.Linear(1, 1)), f"optim={choices['optim']}")):
        if key in checked:
            continue
        try:
            check()
        except (InstantiationException, TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
            cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
            hint = ""
            if isinstance(cause, _ForwardError) and "downsample_at" in cfg.model:
                size = SPECS[cfg.dataset.name].image_size
                hint = (f" The {size}×{size} images of dataset={choices['dataset']} may be too small for the model's "
                        f"downsampling: model.downsample_at={list(cfg.model.downsample_at)} lists the stages that downsample.")
            raise ConfigError(f"{what}: {' '.join(str(cause).split())}.{hint}") from None
        checked.add(key)


def _uncompiled_model(cfg: DictConfig) -> torch.nn.Module:
    cfg = cfg.copy()
    with open_dict(cfg):
        if "compile" in cfg.pooling:  # checking shapes is no reason to compile (importing dynamo alone takes 1.5 s)
            cfg.pooling.compile = False
    return build.model(cfg)


def _dry_forward(cfg: DictConfig) -> None:
    model = _uncompiled_model(cfg)
    spec = SPECS[cfg.dataset.name]
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
        except (ValueError, RuntimeError) as e:
            raise _ForwardError(" ".join(str(e).split())) from None
    if tuple(out.shape) != (2, spec.num_classes):
        raise ValueError(f"the model returns {tuple(out.shape)} for 2 images; expected (2, {spec.num_classes})")


def _check_data(cfg: DictConfig, checked: set[str]) -> None:
    """The folders a run writes are writable, and its data can be read: with download=true, missing files are
    fetched now, once per command, so that an offline machine is a setup error before anything trains."""
    sets = [cfg.dataset] + ([ood_dataset(cfg)] if cfg.ood is not None else [])
    for ds in sets:
        key = json.dumps(["data", cfg.data_dir, ds.name, ds.get("source_dir")])
        if key in checked:
            continue
        try:
            if not cache_path(ds.name, cfg.data_dir).exists():
                _check_writable("data_dir", cfg.data_dir)  # the decoded tensors are cached there
            check_available(ds, cfg.data_dir, cfg.download)
            if cfg.download and not cache_path(ds.name, cfg.data_dir).exists():
                load_cached(ds, cfg.data_dir, download=True)
        except DataError as e:
            raise ConfigError(f"{'ood=' + str(cfg.ood) + ': ' if ds is not sets[0] else ''}{e}") from None
        checked.add(key)


def _check_writable(key: str, folder: str) -> None:
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{key}={folder}: is a file, not a folder. Give a folder (it is created if missing).")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    try:  # a probe, removed at once: permission bits say nothing for root, nor for read-only or virtual file systems
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".runner-probe-"))
    except OSError as e:
        raise ConfigError(f"{key}={folder}: cannot create folders in {existing} ({e.strerror}); "
                          "choose a folder you can write to.") from None


# ---------------------------------------------------------------- the distillation teacher

def _teacher(cfg: DictConfig, choices: Mapping[str, str | None], launcher: Mapping[str, Any] | None,
             composer: Composer | None) -> TeacherRef:
    """Where the teacher is (or will be): by its settings, by ``teacher.run_id`` or by ``teacher.checkpoint``."""
    t = cfg.teacher
    ways = [k for k in ("overrides", "run_id", "checkpoint") if t.get(k)]
    if len(ways) != 1:
        raise ConfigError(f"teacher={choices.get('teacher')}: give exactly one of teacher.overrides (the teacher run's "
                          f"settings), teacher.run_id or teacher.checkpoint; got {', '.join(ways) or 'none'}.")
    root = Path(cfg.results_dir)
    if t.overrides:
        plan = _teacher_plan(cfg, choices, launcher, composer)
        return TeacherRef(plan.run_id, plan.folder / "checkpoint.pt", plan)
    if t.run_id is not None:
        if not RUN_ID.fullmatch(str(t.run_id)):
            raise ConfigError(f"teacher.run_id={t.run_id}: not a run id (10 hexadecimal digits, the folder names "
                              f"under {root / 'runs'}).")
        path, key = root / "runs" / str(t.run_id) / "checkpoint.pt", "teacher.run_id"
    else:
        path, key = Path(t.checkpoint), "teacher.checkpoint"
    ckpt = read_checkpoint(path, key)
    teacher_plan = checkpoint_plan(ckpt, key)
    _check_teacher_shape(teacher_plan.cfg.dataset.name, cfg.dataset.name, key)
    rid = str(ckpt.get("run_id") or "")
    return TeacherRef(rid if RUN_ID.fullmatch(rid) else hashlib.sha1(path.read_bytes()).hexdigest()[:10], path)


def _teacher_plan(cfg: DictConfig, choices: Mapping[str, str | None], launcher: Mapping[str, Any] | None,
                  composer: Composer | None) -> RunPlan:
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
        raise ConfigError(f"teacher.overrides={list(cfg.teacher.overrides)}: a teacher cannot have a teacher of its own.")
    return plan_from_config(tcfg, tchoices, [f"teacher={choices.get('teacher')}"], launcher, composer=None,
                            skip_completed_builds=True)


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


# ---------------------------------------------------------------- identity

def identity(cfg: DictConfig, choices: Mapping[str, str | None], device: str, autocast: str | None,
             teacher_run_id: str | None) -> dict[str, Any]:
    """What can change the numbers: the chosen options, the typed config less NOT_IDENTITY, the device type and
    autocast dtype, and the teacher's run (not how it was named). A key set to null is left out, so a new key
    whose default (null) keeps the old behaviour leaves every existing run id as it was."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p) or {}
        node.pop(leaf, None)
    config.pop("teacher", None)
    config |= {"device_type": device, "autocast": autocast, "teacher_run_id": teacher_run_id}
    chosen = {k: v for k, v in choices.items() if v is not None and k != "teacher"}
    return {"choices": chosen, "config": _without_nulls(config)}


def _without_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    return node
