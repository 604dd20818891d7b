"""Hydra composition for the runner: the search path a command gives, the cells of a grid, one config per cell.

``Composer`` sets Hydra up exactly as ``@hydra.main`` does for the same command line (the project's
``conf/``, ``--config-dir``, ``--config-path``/``--config-name``, ``hydra.searchpath``), so the configs
planned here are the configs Hydra hands to each job. Composing the defaults tree is the slow part
(about 70 ms on a 2-core machine), and in a grid it depends only on the group choices, so each distinct
set of group overrides is composed once and a cell's value overrides are applied to a copy with
Hydra's own override code. Nothing here imports torch.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence


from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobRuntime
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from runner import facts
import runner.machine  # noqa: F401  (registers ${machine_jobs:}, which conf/launcher/local.yaml uses)
from runner.hydra_guard import check_hydra_config, check_hydra_overrides, check_yaml_sizes, config_files, one_paragraph
from runner.schema import AXES, ConfigError, did_you_mean

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
USER_GROUPS = AXES + ("experiment", "launcher", "tune", "logger")  # the groups a user picks options of


OPTIONAL_GROUPS = ("teacher", "experiment", "launcher", "tune")  # unset by default: `group=null` means "none of them"


def unset_nulls(overrides: Sequence[str]) -> list[str]:
    """``teacher=null`` (likewise experiment, launcher) as Hydra spells it, ``~teacher``: Hydra's command line has
    no null for a config group, and config.yaml documents null as these groups' default. And ``baseline=pooling=max``
    quoted for Hydra's grammar, which takes one ``=`` unquoted."""
    out = []
    for o in overrides:
        if re.fullmatch(rf"({'|'.join(OPTIONAL_GROUPS)})=(null|none|None)", o):
            o = f"~{o.split('=', 1)[0]}"
        elif re.fullmatch(r"\+?baseline=[^'\"=]+=[^'\"]*", o):
            key, value = o.split("=", 1)
            o = f"{key}='{value}'"
        out.append(o)
    return out


def chosen(runtime_choices: Mapping[str, Any]) -> dict[str, str | None]:
    """The chosen option of every axis (None where a group is unset, as ``teacher``), and of an option's own
    sub-options (``norm@norm.block`` as ``norm.block``)."""
    out = {a: None if runtime_choices.get(a) is None else str(runtime_choices[a]) for a in AXES}
    for key, value in runtime_choices.items():
        group, _, package = key.partition("@")
        if group in AXES and package.startswith(group + "."):
            out[package] = str(value)
    return out


def dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += dotted_keys(node._get_node(k), f"{full}.")
    return keys


def searchpath(overrides: Sequence[str]) -> list[str]:
    """The folders a ``hydra.searchpath=[file://..., pkg://...]`` override adds, as Hydra reads them."""
    given = [o for o in overrides if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]
    if not given:
        return []
    try:
        value = OverridesParser.create().parse_override(given[-1]).value()
    except HydraException as e:
        raise ConfigError(f"{given[-1]}: {one_paragraph(e)}") from None
    paths = value if isinstance(value, list) else [value]
    bad = [p for p in paths if not isinstance(p, str) or not p.startswith(("file://", "pkg://"))]
    if bad:
        raise ConfigError(f"{given[-1]}: each entry is file://<folder> or pkg://<package>; got {bad[0]!r} "
                          "(--config-dir <folder> does the same for one folder).")
    return paths


class Composer:
    """Hydra, set up for one command line; ``compose(cell)`` gives a cell's run config and chosen options."""

    def __init__(self, config_dir: str | None = None, config_path: str | None = None,
                 config_name: str | None = None, searchpath: Sequence[str] = ()) -> None:
        """``searchpath``: the folders of the command's ``hydra.searchpath=[...]`` (``searchpath(overrides)``),
        whose options the command may name: Hydra adds them when it composes, and the plan must know them before."""
        self.config_name = config_name or "config"
        primary = Path(config_path).resolve() if config_path else CONF_DIR
        if not primary.is_dir():
            raise ConfigError(f"--config-path={config_path}: no such folder ({primary}).")
        if primary != CONF_DIR:
            check_yaml_sizes(primary)
        search_path = create_config_search_path(f"file://{primary}")
        if config_dir is not None:  # as hydra.main's --config-dir: consulted before the primary folder
            folder = Path(config_dir).resolve()
            if not folder.is_dir():
                raise ConfigError(f"--config-dir={config_dir}: no such folder ({folder}).")
            check_yaml_sizes(folder)
            search_path.prepend(
                provider="command-line", path=f"file://{folder}", anchor=SearchPathQuery(provider="schema")
            )
        for path in searchpath:
            if path.startswith("file://"):
                check_yaml_sizes(Path(path.removeprefix("file://")))
            search_path.prepend(provider="hydra.searchpath in command-line", path=path,  # where Hydra puts them:
                                anchor=SearchPathQuery(provider="schema"))  # after the others, before the schema
        self.search_path = search_path
        self._owned = True  # this composer set Hydra up, so it clears Hydra when released
        self._bases: dict[tuple[str, ...], tuple[DictConfig, dict[str, str | None]]] = {}
        self._options: dict[str, list[str]] = {}

    def __enter__(self) -> "Composer":
        GlobalHydra.instance().clear()
        JobRuntime.instance().set("name", "runner")
        self.hydra = Hydra.create_main_hydra2(task_name="runner", config_search_path=self.search_path)
        self.loader = self.hydra.config_loader
        _keep_parses(self.loader.repository)
        self.parser = OverridesParser.create(config_loader=self.loader)
        if not self.loader.repository.config_exists(self.config_name):
            GlobalHydra.instance().clear()  # a with-block whose __enter__ raises never calls __exit__
            raise ConfigError(
                f"--config-name={self.config_name}: no {self.config_name}.yaml in the config search path."
            )
        return self

    def __exit__(self, *exc: object) -> None:
        GlobalHydra.instance().clear()

    @classmethod
    def from_global(cls) -> "Composer":
        """A composer over the Hydra that ``@hydra.main`` set up in this process (a job of a launcher), with its
        search path; outside Hydra, one over the project's conf/ (call ``release()`` when done)."""
        gh = GlobalHydra.instance()
        if not gh.is_initialized():
            return cls().__enter__()
        self = cls.__new__(cls)
        self.config_name, self._bases, self._options, self._owned = "config", {}, {}, False
        self.hydra = gh.hydra
        self.loader = self.hydra.config_loader
        self.parser = OverridesParser.create(config_loader=self.loader)
        return self

    def release(self) -> None:
        if self._owned:
            self.__exit__()

    # ------------------------------------------------------------ what exists

    def options(self, group: str) -> list[str]:
        if group not in self._options:  # what the search path holds does not change during a command
            self._options[group] = sorted(self.loader.get_group_options(group))
        return self._options[group]

    def groups(self) -> dict[str, list[str]]:
        return {g: self.options(g) for g in USER_GROUPS}

    def _is_group(self, o: Override) -> bool:
        if o.package is not None:
            return True
        known = self.__dict__.setdefault("_groups", {})  # the search path's groups do not change during a command
        if o.key_or_group not in known:
            known[o.key_or_group] = self.loader.repository.group_exists(o.key_or_group)
        return known[o.key_or_group]

    # ------------------------------------------------------------ the grid

    def parse(self, overrides: Sequence[str]) -> list[Override]:
        """Hydra's parse of each override; each distinct string is parsed once per command (a grid repeats a
        few dozen strings over its cells, and a parse costs half a millisecond of ANTLR)."""
        cache = self.__dict__.setdefault("_parsed", {})
        todo = [o for o in dict.fromkeys(overrides) if o not in cache]
        if todo:
            try:
                cache.update(zip(todo, self.parser.parse_overrides(todo)))
            except HydraException as e:
                raise ConfigError(one_paragraph(e)) from None
        return [cache[o] for o in overrides]

    def master(self, overrides: Sequence[str], multirun: bool) -> DictConfig:
        """The command's config as Hydra composes it before sweeping (with its ``hydra`` node)."""
        parsed = self.parse(overrides)
        check_hydra_overrides(parsed)
        self._check_options(parsed)
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps and not multirun:
            raise ConfigError(f"{sweeps[0]}: a list of values is a sweep; add -m (multirun) to run one job per value.")
        mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        try:
            with config_files():
                master = self.hydra.compose_config(self.config_name, list(overrides), run_mode=mode)
            try:
                check_hydra_config(master.hydra, [o.key_or_group for o in parsed])
            except OmegaConfBaseException as e:  # an interpolation in Hydra's settings that does not resolve
                raise ConfigError(
                    f"hydra.{getattr(e, 'full_key', '')}: {one_paragraph(str(e).splitlines()[0])}."
                ) from None
            return master
        except (HydraException, OmegaConfBaseException) as e:
            groups_only = [
                o.input_line for o in self.parse(overrides) if self._is_group(o) and not o.is_sweep_override()
            ]
            try:  # the keys that do exist, for a "did you mean"
                base = self.hydra.compose_config(self.config_name, groups_only, run_mode=RunMode.RUN)
            except (HydraException, OmegaConfBaseException):
                base = None
            raise self._explain(e, overrides, base) from None

    def cells(self, overrides: Sequence[str], multirun: bool, master: DictConfig) -> list[list[str]]:
        """Every cell of the command, as Hydra's basic sweeper expands it (``hydra.sweeper.params`` first)."""
        parsed = [o for o in self.parse(overrides) if not o.is_hydra_override()]  # Hydra's own settings are no cell's
        if not multirun:
            return [[o.input_line for o in parsed]]
        params = master.hydra.sweeper.get("params") or {}
        parsed = self.parse([f"{k}={v}" for k, v in params.items()] + [o.input_line for o in parsed])
        for o in parsed:
            if o.is_sweep_override() and not o.is_discrete_sweep():
                raise ConfigError(
                    f"{o.input_line}: an {o.value_type.name.lower().replace('_', ' ')} has no list of values "
                    "to plan, so the runner cannot check its cells before the first run. Give the "
                    "values instead: choice(...), range(...) or a,b,c."
                )
        return [list(c) for batch in BasicSweeper.split_arguments(parsed, None) for c in batch]

    # ------------------------------------------------------------ one cell

    def split(self, cell: Sequence[str]) -> tuple[tuple[str, ...], list[Override]]:
        """A cell's group overrides (``pooling=max``), which Hydra composes, and its value overrides (``seed=3``)."""
        parsed = self.parse(cell)
        self._check_options(parsed)
        group = tuple(o.input_line for o in parsed if self._is_group(o))
        return group, [o for o in parsed if not self._is_group(o) and not o.is_hydra_override()]

    def compose(self, cell: Sequence[str]) -> tuple[DictConfig, dict[str, str | None]]:
        """The run config of one cell (no ``hydra`` node) and its chosen options."""
        group, values = self.split(cell)
        if group not in self._bases:
            def composed() -> tuple[DictConfig, dict[str, str | None]]:
                try:
                    with config_files():
                        full = self.hydra.compose_config(self.config_name, list(group), run_mode=RunMode.RUN)
                except (HydraException, OmegaConfBaseException) as e:
                    raise self._explain(e, cell, None) from None
                choices = chosen(full.hydra.runtime.choices)
                with open_dict(full):
                    del full["hydra"]
                return full, choices

            sources = [(s.scheme(), s.path) for s in self.loader.repository.get_sources()]
            self._bases[group] = facts.composed(sources, json.dumps([self.config_name, group]), composed)
        base, choices = self._bases[group]
        cfg = copy.deepcopy(base)
        try:
            ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        except (HydraException, OmegaConfBaseException) as e:
            raise self._explain(e, cell, base) from None
        return cfg, dict(choices)

    def _check_options(self, parsed: Sequence[Override]) -> None:
        for o in parsed:
            group = o.key_or_group
            if group in USER_GROUPS and not o.is_delete() and not o.is_sweep_override():
                value, options = o.value(), self.options(group)
                if value is not None and str(value) not in options:
                    hint = did_you_mean(str(value), options) or self._known_as(group, str(value))
                    raise ConfigError(
                        f"{o.get_key_element()}={value}: '{value}' is not an option of config group '{group}'. "
                        f"Allowed: {', '.join(options)}.{hint}")
                if value is None and group in ("model", "pooling", "global_pool", "norm", "loss", "optim", "dataset"):
                    none = " (norm=none is the block without normalization)" if group == "norm" else ""
                    raise ConfigError(f"{group}=null: every run needs a {group}; choose one of "
                                      f"{', '.join(options)}{none}.")

    def _known_as(self, group: str, word: str) -> str:
        """A suggestion for an abbreviation (``global_pool=gap``, ``norm=bn``): the options whose description, the
        first comment line of their YAML ("Global average pooling head: ..."), has initials that start with it."""
        if len(word) < 2 or not word.isalpha():
            return ""
        found = []
        for option in self.options(group):
            for source in self.loader.repository.get_sources():
                path = Path(source.path) / group / f"{option}.yaml"
                if source.scheme() == "file" and path.is_file():
                    with path.open(encoding="utf-8", errors="replace") as f:
                        first = f.readline()
                    if first.startswith("#") and initials(first[1:]).startswith(word.lower()):
                        found.append(option)
                    break
        return f" Did you mean '{found[0]}'?" if len(found) == 1 else ""

    def _explain(self, exc: Exception, cell: Sequence[str], base: DictConfig | None) -> ConfigError:
        """Turn Hydra's / OmegaConf's composition error into one paragraph about the user's override."""
        cause = exc.__cause__ or exc
        m = re.search(
            r"(?:Could not (?:override|append to config\. An item is already at)|Error merging override) '?([^'\s]+)'?",
            str(exc),
        )
        key = m.group(1) if m else getattr(cause, "full_key", None)
        if key and "=" in key:
            key = key.lstrip("+~").split("=", 1)[0]
        value = next((o.split("=", 1)[1] for o in cell if "=" in o and o.lstrip("+~").split("=", 1)[0] == key), None)
        if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            known = dotted_keys(base) if base is not None else []
            parent = key.rsplit(".", 1)[0] if "." in key else None
            siblings = [k.rsplit(".", 1)[1] for k in known if parent and k.startswith(f"{parent}.")
                        and "." not in k[len(parent) + 1:] and not k.endswith(("_target_", "_partial_"))]
            if siblings:  # a key of a group: suggested and listed from that group's own keys
                hint = did_you_mean(key.rsplit(".", 1)[1], siblings).replace(" mean '", f" mean '{parent}.")
                return ConfigError(f"{key}={value}: '{key}' is not a config key.{hint} Keys of {parent}: "
                                   f"{', '.join(sorted(siblings))}.")
            return ConfigError(f"{key}={value}: '{key}' is not a config key.{did_you_mean(key, known)} "
                               f"See `python -m runner --cfg job` for every key.")
        if key and isinstance(cause, OmegaConfBaseException):
            detail = one_paragraph(str(cause).split("\n")[0])
            return ConfigError(f"{key}={value}: {detail}.")
        return ConfigError(one_paragraph(exc))


def _keep_parses(repository: Any) -> None:
    """Hydra parses each config file again in every composition (its cache lives for one), and a grid composes each
    distinct set of options, mostly from the same files: each file is parsed once per command here, and every
    composition gets its own copy of the parse (Hydra may change what it loads), a quarter of a composition's time.
    Hydra offers no cache that outlives a composition, so the repository's ``load_config`` is wrapped by hand."""
    load, parsed = repository.load_config, {}

    def load_config(config_path: str) -> Any:
        if config_path not in parsed:
            parsed[config_path] = load(config_path)
        return copy.deepcopy(parsed[config_path])

    repository.load_config = load_config


def initials(description: str) -> str:
    """The initials of an option's description up to its first colon or bracket, CamelCase split: "BatchNorm
    followed by ReLU" -> "bnfbr", "Global average pooling head" -> "gaph"."""
    head = re.split(r"[:(]", description, maxsplit=1)[0]
    return "".join(w[0] for w in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])", head)).lower()


def option_yaml(group: str, option: str, search: Sequence[Path] = (CONF_DIR,)) -> DictConfig:
    """An option's YAML as written (not composed), from the first folder of ``search`` that has it."""
    for folder in search:
        path = Path(folder) / group / f"{option}.yaml"
        if path.is_file():
            return OmegaConf.load(path)
    raise FileNotFoundError(os.fspath(Path(search[0]) / group / f"{option}.yaml"))
