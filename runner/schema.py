"""The typed schema of a run: run-level keys as dataclasses, group options from their ``_target_``'s signature.

Typing is the schema's job on every path: OmegaConf merges a config node into its schema, so ``3`` for a
float key becomes ``3.0`` and ``abc`` is refused. Ranges live with the code they constrain: run-level keys
in the field metadata below, a group option's parameters as ``Annotated[float, Interval(...)]`` and
``Literal[...]`` in its class's signature. Nothing here imports torch.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import math
import difflib
import functools
import inspect
import itertools
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import annotated_types as at
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

AXES = ("dataset", "model", "pooling", "global_pool", "norm", "loss", "optim", "teacher")  # config groups of a run
PACKAGES = ("models", "runner", "datasets")  # a _target_ must be defined in one of these
RUN_ID = re.compile(r"[0-9a-f]{10}")  # what run_id() makes; anything else is never joined to a path
# Keys that say where files go, where the run executes or how the runner behaves, not what the
# experiment is: they are left out of run_id, so moving data or results does not rerun anything.
# ``device`` is replaced in the identity by the device *type* and autocast dtype it resolves to.
TS_METHODS = ("ece_grid", "nll_lbfgs")  # ts_method: how runner/metrics.py fits the temperature
NOT_IDENTITY = ("results_dir", "force", "fail_fast", "device", "threads", "data_dir", "download", "amp",
                "channels_last", "dataset.source_dir", "dataset.verify_checksums", "pooling.compile", "norm.compile",
                "ood_source_dir",
                "checkpoint_every", "keep_resume", "tune", "trial", "logger", "baseline", "sequential")


class ConfigError(Exception):
    """A user mistake in the config: printed as one paragraph, exit status 2."""


def override_key(override: str) -> str:
    """``+pooling.p=3`` -> ``pooling.p``."""
    return override.lstrip("+~").split("=", 1)[0]


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """The closest candidate (difflib's ratio ≥ 0.6) that also starts alike or contains the word (or is contained
    in it): a typo keeps its first letter, so 'foo' is not offered 'ood', while 'flip' is offered 'crop_flip'."""
    last = word.rsplit(".", 1)[-1]
    close = [c for c in difflib.get_close_matches(word, list(candidates), n=5, cutoff=0.6)
             if c.rsplit(".", 1)[-1][:1] == last[:1] or last in c or c.rsplit(".", 1)[-1] in last]
    return f" Did you mean '{close[0]}'?" if close else ""


def _num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None) -> Any:
    return field(default=default, metadata={k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None})


@dataclass
class DatasetConfig:
    name: str = MISSING  # key in datasets.SPECS
    val_fraction: float = _num(0.1, gt=0, lt=1)  # share of train carved off (stratified) for validation
    split_seed: int = _num(0, ge=0)  # seeds the validation split, the same for every run
    augment: str = "none"  # none | crop_flip
    source_dir: str | None = None  # folder of IDX files to read instead of data_dir (mnist, fashion_mnist)
    verify_checksums: bool = True  # torchvision's md5 check of CIFAR files


@dataclass
class SequentialConfig:
    """A grid whose seeds are added in rounds until each comparison against ``baseline`` is decided."""
    max_seeds: int | None = _num(None, ge=2)  # null: the grid's seeds, as given; a number: add seeds up to it
    step: int = _num(2, ge=1)  # seeds added per round after the first look
    decide_on: str = "test_acc"  # the test metric each comparison is decided on
    rope: float | None = _num(None, ge=0)  # also stop a comparison as equivalent within ±rope


@dataclass
class LoggerConfig:
    kind: str = "none"  # none | tensorboard | mlflow (conf/logger/)
    dir: str | None = None  # tensorboard: where event files go
    uri: str | None = None  # mlflow: the tracking URI
    experiment: str = "runner"  # mlflow: the experiment name


@dataclass
class RunConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: Any = MISSING
    pooling: Any = MISSING
    global_pool: Any = MISSING
    norm: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    seed: int = _num(0, ge=0)
    epochs: int = _num(12, ge=1)
    batch_size: int = _num(64, ge=1)
    lr: float = _num(0.05, gt=0)
    weight_decay: float = _num(5e-4, ge=0)
    warmup_epochs: float = _num(0.0, ge=0)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = _num(0, ge=0)  # 0: the cores this process may use (divided among parallel jobs)
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    data_dir: str = "data"
    download: bool = False
    results_dir: str = "results"
    force: bool = False
    fail_fast: bool = False
    checkpoint_every: int = _num(1, ge=0)  # save what the next epoch needs every this many epochs (0: never)
    keep_resume: bool = False  # keep the last resume state after the run finishes
    teacher: Any = None  # conf/teacher/: the distillation teacher, a run of this runner
    ts_method: str = "ece_grid"  # ece_grid | nll_lbfgs: how the temperature is fitted on validation logits
    skip_test: bool | None = None  # true: no test pass (runner.tune's trials, which read validation only)
    ood: str | None = None  # a dataset whose test split is scored as out-of-distribution
    baseline: str | None = None  # axis=value the summary compares against: the plan says if the seeds can decide
    sequential: SequentialConfig = field(default_factory=SequentialConfig)  # seeds added until decided
    ood_source_dir: str | None = None  # IDX folder for the OOD dataset, as dataset.source_dir
    logger: LoggerConfig = field(
        default_factory=LoggerConfig
    )  # conf/logger/: experiment tracking, not the run's identity
    tune: Any = None  # conf/tune/: read by python -m runner.tune only (runner/tune.py checks it)
    trial: str | None = (
        None  # set by python -m runner.tune on a trial it may prune: "<journal>|<study>|<number>|<step>"
    )


@dataclass
class TeacherConfig:
    overrides: list[str] = field(default_factory=list)  # the teacher run's own settings
    run_id: str | None = None  # a finished run under results_dir
    checkpoint: str | None = None  # a checkpoint.pt written by this runner


ConfigStore.instance().store(name="run_schema", node=RunConfig)
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig))


def _scalar(hint: Any) -> bool:
    inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return len(inner) == 1 and inner[0] in (bool, int, float, str)


# The run-level settings of runs.csv, in schema order: every scalar key that is part of a run's identity. Derived,
# so a new run-level setting gets its column (and the summary tells runs that differ in it apart) by existing.
def run_columns(schema: type = RunConfig) -> tuple[str, ...]:
    return tuple(
        name for name, hint in typing.get_type_hints(schema).items() if _scalar(hint) and name not in NOT_IDENTITY
    )


RUN_COLUMNS = run_columns()


# ---------------------------------------------------------------- ranges

_OPS = {"ge": (">=", lambda v, lim: v >= lim), "gt": (">", lambda v, lim: v > lim),
        "le": ("<=", lambda v, lim: v <= lim), "lt": ("<", lambda v, lim: v < lim)}


def check_range(key: str, value: Any, bounds: Mapping[str, float]) -> None:
    """``bounds`` maps ge/gt/le/lt to limits; a value outside them is a ConfigError naming the key."""
    if value is None or isinstance(value, bool) or not bounds:
        return
    values = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):  # inf passes every one-sided bound: refused here
            allowed = " and ".join(f"{_OPS[op][0]} {lim}" for op, lim in bounds.items())
            raise ConfigError(f"{key}={_show(value)}: not a finite number; allowed: a finite number {allowed}.")
        if isinstance(v, (int, float)) and not all(_OPS[op][1](v, lim) for op, lim in bounds.items()):
            allowed = " and ".join(f"{_OPS[op][0]} {lim}" for op, lim in bounds.items())
            raise ConfigError(f"{key}={_show(value)}: out of range; allowed: {allowed}.")


def check_sweep_ranges(overrides: Sequence[str]) -> None:
    """A top-level key's number outside its range, in any value a command line gives it (``-m seed=0,1,-1``):
    the error planning would give for that cell, found before planning (and importing torch) starts, so a bad
    grid is refused in a second whatever its size. Values that are not plain numbers are left to planning."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    fields = {f.name: f for f in dataclasses.fields(RunConfig) if f.metadata and type(f.default) in (int, float)}
    parser = OverridesParser.create()
    for text in overrides:
        key = override_key(text)
        if key not in fields or "=" not in text:
            continue
        try:
            override = parser.parse_override(text)
            # a range(...) can be huge: its first values here, the rest (if a grid that big is ever planned) later
            values = itertools.islice(override.sweep_iterator(), 100_000) if override.is_sweep_override() else [
                override.value()]
        except HydraException:  # a malformed value, an interval sweep (tune's): planning words that error itself
            continue
        kind = type(fields[key].default)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind, type(value)) == (int, float):
                continue  # not a number of this key's type: planning says what is wrong with it
            check_range(key, kind(value), fields[key].metadata)  # as the typed config holds it: lr=0 is 0.0


def check_dataclass_ranges(node: DictConfig, schema: type, prefix: str = "") -> None:
    for name, bounds in _ranged(schema):  # a missing key is None, as a null one: neither has a range to meet
        check_range(f"{prefix}{name}", node.get(name), bounds)


@functools.lru_cache(maxsize=None)
def _ranged(schema: type) -> tuple[tuple[str, Mapping[str, float]], ...]:
    """The fields of ``schema`` that have bounds (a quarter of them: each key read from a config costs)."""
    return tuple((f.name, f.metadata) for f in dataclasses.fields(schema) if f.metadata)


def _show(value: Any) -> str:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value)
    return str(value)


# ---------------------------------------------------------------- group options: schemas from signatures

@dataclass(frozen=True)
class Param:
    """One keyword of an option's ``_target_``: the type OmegaConf checks, its bounds and allowed values."""
    type: Any
    default: Any
    bounds: Mapping[str, float]
    choices: tuple[Any, ...] | None


def _bounds(metadata: Iterable[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in metadata:
        if isinstance(m, at.Interval):
            out |= {k: getattr(m, k) for k in ("ge", "gt", "le", "lt") if getattr(m, k) is not None}
        for kind, key in ((at.Ge, "ge"), (at.Gt, "gt"), (at.Le, "le"), (at.Lt, "lt")):
            if isinstance(m, kind):
                out[key] = getattr(m, key)
    return out


_SCALARS = (bool, int, float, str)


def _omega_type(hint: Any) -> tuple[Any, dict[str, float], tuple[Any, ...] | None]:
    """(a type OmegaConf can check, numeric bounds, allowed values) for a signature annotation."""
    bounds: dict[str, float] = {}
    if typing.get_origin(hint) is typing.Annotated:
        hint, *meta = typing.get_args(hint)
        bounds = _bounds(meta)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return type(args[0]), bounds, args
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner, b, choices = _omega_type(rest[0])
            return (typing.Optional[inner] if inner is not Any else Any), bounds | b, choices
        return Any, bounds, None
    if hint in _SCALARS:
        return hint, bounds, None
    if origin in (list, tuple, typing.Sequence, collections.abc.Sequence):
        elem = args[0] if args else Any
        inner, b, _ = _omega_type(elem)
        if inner in _SCALARS:
            return typing.List[inner], bounds | b, None
        return Any, bounds, None  # nested sequences (VGG's stages): values checked by the class itself
    return Any, bounds, None


def _signature_params(target: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of ``target`` (a class: its __init__ and, through ``**kwargs``, its bases' up to the
    first class from a library: a library's ``**kwargs`` swallows unknown settings, so they stop there).
    None when a function of this project takes arbitrary keywords that cannot be listed."""
    params: dict[str, inspect.Parameter] = {}
    chain = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    for fn in chain:
        if fn is object.__init__:
            break
        sig = inspect.signature(fn)
        for name, p in sig.parameters.items():
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(name, p)
        ours = (getattr(fn, "__module__", "") or "").split(".")[0] in PACKAGES
        if not ours or not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return params
    return params if inspect.isclass(target) else None


# Settings a whole group accepts besides its target's own keywords (applied by runner/build.py). Their default is
# null, "off", so they leave every existing run id as it was.
GROUP_SETTINGS: dict[str, dict[str, Param]] = {
    "loss": {
        "logit_clip": Param(typing.Optional[float], None, {"gt": 0}, None)
    }  # LogitClip's τ (runner/losses/clip.py)
}


for _group, _settings in GROUP_SETTINGS.items():  # conf/config.yaml lists each as the base of its group's option
    ConfigStore.instance().store(name=f"{_group}_settings", node={k: p.default for k, p in _settings.items()})


@functools.lru_cache(maxsize=None)
def option_params(target: Callable[..., Any]) -> dict[str, Param] | None:
    """The typed keywords of a ``_target_`` (a schema is a function of the code, so it is worked out once)."""
    params = _signature_params(target)
    if params is None:
        return None
    owners = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    hints: dict[str, Any] = {}
    for fn in reversed(owners):
        try:
            hints |= typing.get_type_hints(fn, include_extras=True)
        except (NameError, TypeError):  # an annotation that cannot be evaluated: that parameter stays untyped
            pass
    out = {}
    for name, p in params.items():
        kind, bounds, choices = _omega_type(hints.get(name, Any))
        default = p.default if p.default is not p.empty else None
        out[name] = Param(kind, default, bounds, choices)
    return out


def typed_option(key: str, node: DictConfig, target: Callable[..., Any],
                 params: dict[str, Param] | None) -> DictConfig:
    """``node`` (an option's config, ``_target_`` included) typed by ``target``'s signature (``params``, its
    ``option_params``) and the group's own settings (GROUP_SETTINGS): ints become floats where a float is declared,
    unknown keys and wrong types are ConfigErrors naming ``key.<name>``."""
    if params is None:
        return node
    params = params | GROUP_SETTINGS.get(key, {})
    special = {k for k in node.keys() if str(k).startswith("_") and str(k).endswith("_")}
    unknown = [k for k in node.keys() if k not in special and k not in params]
    if unknown:
        allowed = sorted(k for k, p in params.items() if p.default is not None or k in node)
        raise ConfigError(f"{key}.{unknown[0]}: not a setting of {key} ({target.__module__}.{target.__qualname__}). "
                          f"Allowed: {', '.join(allowed)}.{did_you_mean(str(unknown[0]), params)}")
    fields = [(k, p.type, field(default=MISSING)) for k, p in params.items() if k in node]
    schema = dataclasses.make_dataclass(f"{target.__qualname__}Schema", fields)
    body = OmegaConf.create({k: node._get_node(k) for k in node.keys() if k not in special})
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), body)
    except OmegaConfBaseException as e:
        full = f"{key}.{e.full_key}" if getattr(e, "full_key", None) else key
        value = OmegaConf.select(body, str(e.full_key), default=None) if getattr(e, "full_key", None) else None
        want = params.get(str(e.full_key).split(".")[0].split("[")[0])
        raise ConfigError(f"{full}={_show(value)}: expected {_describe(want.type if want else None)}.") from None
    for k in typed.keys():
        p, v = params[k], typed[k]
        check_range(f"{key}.{k}", v, p.bounds)
        if p.choices is not None and v not in p.choices:
            allowed = ", ".join(map(str, p.choices))
            raise ConfigError(f"{key}.{k}={v}: allowed: {allowed}.{did_you_mean(str(v), map(str, p.choices))}")
    out = OmegaConf.create({k: node._get_node(k) for k in special})
    out.merge_with(typed)
    return out


def _describe(kind: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    inner = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union:
        return _describe(next(a for a in inner if a is not type(None))) + " or null"
    if typing.get_origin(kind) in (list, typing.List):
        return "a list of " + {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(
            inner[0], "values"
        )
    return names.get(kind, "a value of the declared type")
