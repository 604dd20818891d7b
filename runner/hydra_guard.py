"""What the runner accepts of Hydra's input: YAML files it can read in bounded time, and of Hydra's own settings
only those that cannot run code or change where and how runs execute (runner/compose.py checks every command
and composition with these)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from runner.schema import ConfigError


@contextlib.contextmanager
def config_files() -> Iterator[None]:
    """A YAML file that cannot be read (a syntax error, a duplicate key, bytes that are not UTF-8) as a ConfigError
    naming the file and line where PyYAML says, instead of its traceback."""
    try:
        yield
    except yaml.YAMLError as e:
        raise ConfigError(f"a config file is not valid YAML: {one_paragraph(e)}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"a config file is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          "save it as UTF-8") from None


# PyYAML builds an aliased node once and shares it, but OmegaConf copies it at every use: 300 bytes of nested
# aliases ("billion laughs") become 10^6 values and minutes of CPU before any check can run. No library bounds
# that, so each YAML of a user's folder that has an anchor is measured on PyYAML's node graph (each shared node
# counted once per use, memoized) before Hydra reads it. The project's own conf/ has no anchors and is not read.
MAX_YAML_VALUES = 100_000


def check_yaml_sizes(folder: Path) -> None:
    for path in sorted(folder.rglob("*.yaml")):
        if b"&" not in path.read_bytes():  # no anchor, no alias
            continue
        with config_files(), path.open(encoding="utf-8") as f:
            try:
                root = yaml.compose(f, Loader=yaml.SafeLoader)
            except yaml.composer.ComposerError:  # several documents: Hydra's own read says what is wrong
                continue
        size: dict[int, int] = {}

        def values(node: yaml.Node) -> int:
            if id(node) not in size:
                size[id(node)] = 0  # a node that contains itself counts once, not forever
                if isinstance(node, yaml.SequenceNode):
                    size[id(node)] = 1 + sum(values(v) for v in node.value)
                elif isinstance(node, yaml.MappingNode):
                    size[id(node)] = 1 + sum(values(k) + values(v) for k, v in node.value)
                else:
                    size[id(node)] = 1
            return size[id(node)]

        try:
            n = values(root) if root is not None else 0
        except RecursionError:
            n = MAX_YAML_VALUES + 1
        if n > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: its aliases (*name) expand to more than {MAX_YAML_VALUES:,} values; a config "
                              "file this large is refused. Write the values out, or use ${...} interpolation.")


def one_paragraph(text: str) -> str:
    return " ".join(str(text).split())


# What a command line may change of Hydra's own settings: the launcher's and sweeper's knobs, verbosity and the
# folders Hydra writes into. Everything else (callbacks, the job's environment, logging factories, chdir, the
# sweeper itself) could run code or change what the runner does, and is refused.
HYDRA_SETTINGS = ("hydra.launcher.", "hydra.sweeper.params", "hydra.sweeper.max_batch_size", "hydra.verbose",
                  "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.run.dir", "hydra.searchpath", "hydra.output_subdir",
                  "hydra/launcher", "hydra/job_logging", "hydra/hydra_logging")
LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
             "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
             "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
             "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
SWEEPER = "hydra_plugins.runner_sweeper.PlannedSweeper"


def check_hydra_overrides(parsed: Sequence[Override]) -> None:
    for o in parsed:
        key = o.key_or_group
        if key in ("hydra/sweeper", "hydra.sweeper._target_"):
            raise ConfigError(f"{o.input_line}: the runner does not let a command change its sweeper, which "
                              "launches the cells the runner planned; "
                              "to tune with Optuna, run python -m runner.tune with the same overrides (plus tune.*, "
                              "e.g. tune.trials=8): every method gets the same budget on validation data.")
        if o.is_hydra_override() and not any(key == a.rstrip(".") or key.startswith(a) for a in HYDRA_SETTINGS) \
                or key.endswith("._target_") and key.startswith("hydra"):
            allowed = ", ".join(a + ("*" if a.endswith(".") else "") for a in HYDRA_SETTINGS)
            raise ConfigError(f"{o.input_line}: the runner does not let a command change this Hydra setting "
                              f"(it could run other code or change where and how runs execute). Allowed: {allowed}.")


SHELL_SETTINGS = ("setup", "srun_args", "additional_parameters")  # submitit puts these into the job script


def check_hydra_config(hydra_node: DictConfig, given: Sequence[str] = ()) -> None:
    """Hydra's settings as composed (the command line and every YAML, a --config-dir's included); ``given`` are
    the keys the command line itself set."""
    def refuse(key: str, why: str) -> ConfigError:
        return ConfigError(f"hydra.{key}: {why}; the runner refuses it, whichever config file or override set it.")

    if hydra_node.get("callbacks"):
        raise refuse("callbacks", "Hydra callbacks run code around every job")
    if hydra_node.job.get("env_set") or hydra_node.job.get("env_copy"):
        raise refuse("job.env_set", "it changes the environment the runner (and the git it calls) runs in")
    if hydra_node.job.get("chdir"):
        raise refuse("job.chdir", "runs write under results_dir, relative to where the command starts")
    launcher = str(hydra_node.launcher.get("_target_"))
    if launcher not in LAUNCHERS:
        raise refuse("launcher._target_", f"{launcher} is not one of Hydra's launchers that conf/launcher/ selects")
    if str(hydra_node.sweeper.get("_target_")) != SWEEPER:
        raise refuse("sweeper", "the runner's planned sweeper launches only cells it has checked")
    for section in ("job_logging", "hydra_logging"):
        for key, value in _walk(OmegaConf.to_container(hydra_node.get(section) or {}, resolve=False), section):
            if key.endswith("()") or (key.endswith(".class") and not str(value).startswith("logging.")):
                raise refuse(key, "a logging factory outside the logging module runs code")
    for key in SHELL_SETTINGS:  # shell lines for the job script: the user's own command may give them, a file not
        if hydra_node.launcher.get(key) and not any(g.startswith(f"hydra.launcher.{key}") for g in given):
            raise ConfigError(
                f"hydra.launcher.{key}: set by a config file; it puts shell commands into the job "
                "script, so the runner takes it only from the command line (give it there if you mean it)."
            )
    n_jobs = hydra_node.launcher.get("n_jobs")
    if "joblib" in launcher and (not isinstance(n_jobs, int) or n_jobs == 0):
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs}: allowed: a whole number of parallel runs >= 1, or -1 for "
                          "one per core (launcher=local's default is one per usable core).")


def _walk(node: Any, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}.{k}", v
            yield from _walk(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{prefix}[{i}]")
