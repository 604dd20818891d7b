"""The security boundary of a config: which code a ``_target_`` may name, and how each option is typed.

A config from the shell, a YAML, a user's ``--config-dir`` or a checkpoint may choose among the project's
methods but never name other code: ``resolve_target`` imports only modules under the group's own package
and accepts only a class or function *defined* there. ``typed_config`` types the run-level keys by the
schema and each group option by its target's signature (runner/schema.py). Nothing here builds a model.
"""
from __future__ import annotations

import importlib
import inspect
import json
import re
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from runner import facts
from runner.compose import dotted_keys
from runner.schema import RUN_KEYS, ConfigError, RunConfig, TeacherConfig, did_you_mean, typed_option

TARGET_HOMES = {"model": "models", "pooling": "models.pooling", "global_pool": "models.pooling", "norm": "models.norm",
                "loss": "runner.losses", "optim": "runner.optim"}
SPECIAL_KEYS = ("_target_", "_partial_")  # Hydra's other instantiate keys (_args_, _recursive_, _convert_) are refused


def typed_config(cfg: DictConfig | Mapping[str, Any], typed_options: dict[str, DictConfig]) -> DictConfig:
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
            raw = OmegaConf.merge(
                OmegaConf.structured(RunConfig), {k: raw._get_node(k) for k in raw.keys() if k != "teacher"}
            )
            raw["teacher"] = teacher
        except OmegaConfBaseException as e:
            raise ConfigError(f"{e.full_key}: {_first_line(e)}.") from None
    try:
        OmegaConf.resolve(raw)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or next((k for k in dotted_keys(raw) if not _resolves(raw, k)), "?")
        raise ConfigError(f"{key}: its value cannot be resolved ({_first_line(e)}). "
                          "Check the interpolation (${...}) and any environment variable it reads.") from None
    missing = sorted(OmegaConf.missing_keys(raw))
    if missing:  # OmegaConf's mark for a value still to be given: read later, it would be a traceback mid-run
        raise ConfigError(f"{missing[0]}=???: no value given (??? is OmegaConf's mark for a value still to be "
                          f"given); give one, e.g. {missing[0]}=<value>.")
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
        raise ConfigError(
            f"{key}: expected a config with a _target_ (an option of conf/{key.split('.')[0]}/), got {node!r}."
        )
    extra = [k for k in node.keys() if str(k).startswith("_") and str(k).endswith("_") and k not in SPECIAL_KEYS]
    if extra:
        raise ConfigError(f"{key}.{extra[0]}: not allowed; an option may set {' and '.join(SPECIAL_KEYS)} only.")
    target = option_target(key, str(node._target_), home)
    typed = typed_option(key, node, target, facts.params(target))
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


def option_target(key: str, path: str, home: str) -> Any:
    """What ``key._target_=path`` names: the class ``resolve_target`` allows, or within a preview its record
    (runner/facts.py), which was resolved under the same home from the same sources."""
    return facts.target(home, path, lambda: resolve_target(f"{key}._target_", path, home))


def resolve_target(key: str, path: str, home: str) -> Callable[..., Any]:
    """The class or function ``path`` names, if it is defined under ``home`` (a package of this project).

    Only modules under ``home`` are ever imported, and the object must be *defined* there (its
    ``__module__``), so a path that walks from a project module into a library it imports is refused.
    """
    refuse = ConfigError(f"{key}={path}: not allowed; a {key.split('.')[0]} option instantiates only classes and "
                         f"functions defined in this project's {home} package.")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", path) or not (path + ".").startswith(
        home + "."
    ):
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



