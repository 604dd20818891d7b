"""Everything checked about a typed config before any data is touched, then the smoke build and the data check.

A user mistake is a ConfigError (one paragraph, exit 2): a value out of range or not allowed, a combination
a method declares it cannot run in (models/norm/__init__.py), a model that cannot take the dataset's images,
data that cannot be had. A bug in a layer is not a user mistake: it raises with its traceback.
"""
from __future__ import annotations

import dataclasses

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from datasets.specs import AUGMENTS, SPECS, DataError, cache_path, check_available
from runner import rundir
from runner.machine import devices
from runner.compose import CONF_DIR, option_yaml
from runner.schema import (TS_METHODS, ConfigError, DatasetConfig, RunConfig, SequentialConfig,
                           check_dataclass_ranges, did_you_mean)
from runner.targets import TARGET_HOMES, option_target, resolve_target

if TYPE_CHECKING:
    import torch

# torch, the models and the builder are imported by the checks that build (check_builds), not by those on values:
# a grid preview checks every cell's values and imports no torch (runner/facts.py)

def check_values(cfg: DictConfig, choices: Mapping[str, str | None], ood: DictConfig | None = None,
                 dataset_options: Sequence[str] = ()) -> None:
    """Types aside (runner/targets.py), everything about the values that needs neither data nor a model build."""
    check_dataclass_ranges(cfg, RunConfig)
    check_dataclass_ranges(cfg.dataset, DatasetConfig, "dataset.")
    check_dataclass_ranges(cfg.sequential, SequentialConfig, "sequential.")
    known = [f.name for f in dataclasses.fields(DatasetConfig)]
    unknown = sorted(set(cfg.dataset.keys()) - set(known))
    if unknown:  # `+dataset.foo=1` would otherwise train, and a typo make a second copy of an identical run
        raise ConfigError(f"dataset.{unknown[0]}: not a setting of a dataset. Allowed: {', '.join(known)}."
                          f"{did_you_mean(str(unknown[0]), known)}")
    ds = cfg.dataset
    if ds.name not in SPECS:
        raise ConfigError(
            f"dataset.name={ds.name}: unknown dataset. Allowed: {', '.join(SPECS)}.{did_you_mean(ds.name, SPECS)}"
        )
    if ds.augment not in AUGMENTS:
        raise ConfigError(
            f"dataset.augment={ds.augment}: allowed: {', '.join(AUGMENTS)}.{did_you_mean(ds.augment, AUGMENTS)}"
        )
    if ds.source_dir is not None and not SPECS[ds.name].idx_source_dir:
        readers = [n for n, s in SPECS.items() if s.idx_source_dir]
        raise ConfigError(
            f"dataset.source_dir={ds.source_dir}: only {', '.join(readers)} read IDX files from a folder; "
            f"dataset={ds.name} reads data_dir."
        )
    if cfg.ts_method not in TS_METHODS:
        raise ConfigError(
            f"ts_method={cfg.ts_method}: allowed: {', '.join(TS_METHODS)}.{did_you_mean(cfg.ts_method, TS_METHODS)}"
        )
    if cfg.skip_test and cfg.ood is not None:
        raise ConfigError(f"ood={cfg.ood} with skip_test=true: out-of-distribution scores are computed on the test "
                          "split, which skip_test leaves out; drop one of them.")
    if cfg.ood is not None:
        _check_ood(cfg, ood, [o for o in dataset_options if o != choices.get("dataset")])
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(
            f"warmup_epochs={cfg.warmup_epochs}: longer than the run (epochs={cfg.epochs}); allowed: 0..{cfg.epochs}."
        )
    _check_device(cfg.device)
    _check_logger(cfg.logger)
    _check_norm(cfg, choices)
    needs = bool(getattr(_target(cfg.loss, "loss"), "needs_teacher", False))
    if needs and cfg.teacher is None:
        raise ConfigError(
            f"loss={choices['loss']} distills from a teacher: add teacher=<{'|'.join(_teacher_options())}> "
            "(a run trained first if missing), or teacher=run teacher.run_id=<id>, "
            "or teacher=checkpoint teacher.checkpoint=<path>."
        )
    if not needs and cfg.teacher is not None:
        distill = [o for o, cls in option_targets("loss").items() if getattr(cls, "needs_teacher", False)]
        raise ConfigError(f"teacher={choices.get('teacher')}: loss={choices['loss']} does not use a teacher; "
                          f"the distillation losses are {', '.join(distill)}.")


TRACKERS = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger.kind: the package it needs


def _check_logger(logger: DictConfig) -> None:
    if logger.kind not in TRACKERS:
        raise ConfigError(
            f"logger.kind={logger.kind}: allowed: {', '.join(TRACKERS)}.{did_you_mean(logger.kind, TRACKERS)}"
        )
    package = TRACKERS[logger.kind]
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"logger={logger.kind}: the {package} package is not installed; install the tracking extras: "
                          ".venv/bin/pip install -e '.[tracking]' (make installs them).")


def _teacher_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "teacher").glob("*.yaml"))


def option_targets(group: str) -> dict[str, Any]:
    """The project's options of ``group`` and the class each one's ``_target_`` names (for messages)."""
    out = {}
    for p in sorted((CONF_DIR / group).glob("*.yaml")):
        target = option_yaml(group, p.stem).get("_target_")
        if target:
            out[p.stem] = resolve_target(f"{group}._target_", target, TARGET_HOMES[group])
    return out


def _check_ood(cfg: DictConfig, ood: DictConfig | None, options: Sequence[str]) -> None:
    """``ood=<option>``: any dataset option the composer sees (the user's --config-dir too; ``options`` leaves out the
    run's own), of another dataset than the run's, with images of the run's shape."""
    if ood is None or ood.name == cfg.dataset.name:
        names = [o for o in options if o != cfg.ood]
        raise ConfigError(
            f"ood={cfg.ood}: allowed: {', '.join(names)} (a dataset other than dataset={cfg.dataset.name})."
            f"{did_you_mean(str(cfg.ood), names)}"
        )
    if ood.name not in SPECS:
        raise ConfigError(f"ood={cfg.ood}: dataset.name={ood.name} is not a dataset. Allowed: {', '.join(SPECS)}.")
    ours, theirs = SPECS[cfg.dataset.name], SPECS[ood.name]
    if (ours.in_channels, ours.image_size) != (theirs.in_channels, theirs.image_size):
        def shape(s):
            return f"{s.in_channels}×{s.image_size}×{s.image_size}"
        raise ConfigError(
            f"ood={cfg.ood}: its images are {shape(theirs)}, dataset={cfg.dataset.name}'s are {shape(ours)}; "
            f"the model takes one shape."
        )
    if cfg.ood_source_dir is not None and not theirs.idx_source_dir:
        raise ConfigError(
            f"ood_source_dir={cfg.ood_source_dir}: ood={cfg.ood} reads data_dir, not IDX files from a folder."
        )


def _check_device(device: str) -> None:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"device={device}: allowed: auto, cpu, cuda, cuda:N, mps.")
    if device.startswith("cuda"):
        n = devices()["cuda_count"]
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise ConfigError(f"device={device}: this machine has {n} CUDA device(s). Use device=auto or device=cpu.")
    if device == "mps" and not devices()["mps_available"]:
        raise ConfigError("device=mps: MPS is not available on this machine. Use device=auto or device=cpu.")


def device_type(device: str, launcher: Mapping[str, Any] | None = None) -> str:
    """What ``device`` resolves to. Under a submitit launcher the job runs on another machine, so ``auto``
    follows the GPUs the launcher asks for; elsewhere it is what this machine has (cuda, then mps, then cpu)."""
    if device != "auto":
        return device.split(":")[0]
    if "submitit" in str((launcher or {}).get("_target_", "")):
        gpus = (launcher or {}).get("gpus_per_node") or (launcher or {}).get("gpus_per_task") or 0
        return "cuda" if isinstance(gpus, int) and gpus > 0 else "cpu"
    found = devices()
    if found["cuda_available"]:
        return "cuda"
    return "mps" if found["mps_available"] else "cpu"


def _target(node: DictConfig, axis: str) -> Any:
    """The class (or function) a typed option node names, as the allow-list resolves it (in a preview, its record:
    runner/facts.py). A ``_target_`` is never a partial, so a class's declarations are its attributes."""
    return option_target(axis, str(node._target_), TARGET_HOMES[axis])


def _check_norm(cfg: DictConfig, choices: Mapping[str, str | None]) -> None:
    """What a norm declares about the models and batches it works with (models/norm/__init__.py)."""
    norm = _target(cfg.norm, "norm")
    needs = getattr(norm, "model_requires", None)
    if needs is not None:
        attribute, what = needs
        if not hasattr(_target(cfg.model, "model"), attribute):
            able = [name for name, cls in option_targets("model").items() if hasattr(cls, attribute)]
            raise ConfigError(f"norm={choices['norm']} needs {what}; model={choices['model']} has none. "
                              f"Models that support it: {', '.join(able)}.")
    if cfg.batch_size == 1 and _batch_dependent(cfg.norm):
        free = [
            name for name, cls in option_targets("norm").items() if getattr(cls, "batch_dependent", False) is not True
        ]
        raise ConfigError(
            f"batch_size=1: norm={choices['norm']} normalizes with statistics over the batch and cannot "
            f"train on one sample. Use batch_size >= 2, or a norm computed per sample: {', '.join(free)}."
        )


def _batch_dependent(node: DictConfig) -> bool:
    """Whether the norm block (or the block a reparametrization wraps) uses batch statistics."""
    if getattr(_target(node, "norm"), "batch_dependent", False) is True:
        return True
    return "block" in node and isinstance(node.block, DictConfig) and _batch_dependent(node.block)


# torch's own words for an input smaller than a layer's window: a size the user chose, whatever the input size
TORCH_TOO_SMALL = re.compile(r"Output size is too small|Kernel size can't be greater than actual input size|"
                             r"padded input size per channel")


def _show(value: Any) -> str:
    return json.dumps(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


class _TooSmall(Exception):
    """The model built, failed on images of the dataset's shape, and runs on larger ones: the images are too small
    for its downsampling (a user's choice of model and dataset, not a bug)."""


def check_builds(cfg: DictConfig, choices: Mapping[str, str | None], checked: set[str]) -> None:
    """Build the loss, the optimizer and the model (once per distinct one in a command) and run the model on two
    zero images of the dataset's shape. A config error is what the user can fix: a value the class refuses (a
    ValueError from its constructor, the classes' convention) or images too small for the model. Any other
    exception is a bug in the code and raises with its traceback."""
    where = ", ".join(f"{a}={choices[a]}" for a in ("dataset", "model", "pooling", "global_pool", "norm"))
    arch = json.dumps({a: OmegaConf.to_container(cfg[a]) for a in ("model", "pooling", "global_pool", "norm")}
                      | {"dataset": cfg.dataset.name}, sort_keys=True)
    loss_key, loss_what = json.dumps(OmegaConf.to_container(cfg.loss), sort_keys=True), f"loss={choices['loss']}"
    from runner import build

    sized = getattr(build.target(cfg.loss), "needs_mid_features", False)
    if sized:  # the loss is sized by the model: checked once per architecture
        loss_key, loss_what = loss_key + arch, f"{loss_what} with {where}"
    for key, check, what in ((arch, lambda: _dry_forward(cfg), f"the model does not build or run with {where}"),
                             (loss_key, lambda: build.loss(cfg, _uncompiled_model(cfg) if sized else None), loss_what),
                             (json.dumps(OmegaConf.to_container(cfg.optim), sort_keys=True),
                              lambda: build.check_optimizer(cfg), f"optim={choices['optim']}")):
        if key in checked:
            continue
        try:
            check()
        except (InstantiationException, ValueError, _TooSmall) as e:
            cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ else e
            if not isinstance(cause, (ValueError, _TooSmall)):
                raise
            raise ConfigError(f"{what}: {' '.join(str(cause).split())}.") from None
        checked.add(key)


def _uncompiled_model(cfg: DictConfig) -> torch.nn.Module:
    from runner import build

    return build.model(build.eager(cfg))  # checking shapes is no reason to compile (importing dynamo takes 1.5 s)


def _dry_forward(cfg: DictConfig) -> None:
    import torch

    model = _uncompiled_model(cfg).eval()
    spec = SPECS[cfg.dataset.name]
    with torch.no_grad():
        try:
            out = model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
        except (ValueError, RuntimeError) as e:
            if not TORCH_TOO_SMALL.search(str(e)):
                try:  # the same model on 8× larger images: if it runs there, the images are too small for it
                    model(torch.zeros(2, spec.in_channels, 8 * spec.image_size, 8 * spec.image_size))
                except Exception:
                    raise e from None  # it fails whatever the size: a bug, with its traceback
            sizes = [f"{node}.{k}={_show(cfg[node][k])}" for node in ("pooling", "model")
                     for k in ("kernel_size", "stride", "downsample_at", "widths") if k in cfg[node]]
            raise _TooSmall(f"{' '.join(str(e).split())}. The {spec.image_size}×{spec.image_size} images of "
                            f"dataset={cfg.dataset.name} are too small for the model's downsampling"
                            + (f" (set by {', '.join(sizes)})" if sizes else "")) from None
    if tuple(out.shape) != (2, spec.num_classes):
        raise ValueError(f"the model returns {tuple(out.shape)} for 2 images; expected (2, {spec.num_classes})")


def check_data(cfg: DictConfig, ood: DictConfig | None, checked: set[str]) -> None:
    """The data folder is writable where the decoded tensors will be cached, and the data can be read: its files
    are there, or download=true will fetch them (``fetch_data``). Reads only: a grid preview runs it too."""
    for ds, where in _data_sets(cfg, ood):
        key = json.dumps(["data", cfg.data_dir, ds.name, ds.get("source_dir")])
        if key in checked:
            continue
        try:
            if not cache_path(ds.name, cfg.data_dir).exists():
                check_writable("data_dir", cfg.data_dir)  # the decoded tensors are cached there
            check_available(ds, cfg.data_dir, cfg.download)
        except DataError as e:
            raise ConfigError(f"{where}{e}") from None
        checked.add(key)


def fetch_data(cfg: DictConfig, ood: DictConfig | None, checked: set[str]) -> None:
    """With download=true, the missing files fetched now, once per command, so that an offline machine is a setup
    error before anything trains (a preview, which writes nothing, does not call it)."""
    if not cfg.download:
        return
    for ds, where in _data_sets(cfg, ood):
        key = json.dumps(["fetch", cfg.data_dir, ds.name, ds.get("source_dir")])
        if key in checked or cache_path(ds.name, cfg.data_dir).exists():
            continue
        from datasets.registry import load_cached  # torch: only a command that fetches data imports it here

        try:
            load_cached(ds, cfg.data_dir, download=True)
        except DataError as e:
            raise ConfigError(f"{where}{e}") from None
        checked.add(key)


def _data_sets(cfg: DictConfig, ood: DictConfig | None) -> list[tuple[DictConfig, str]]:
    """The run's dataset and its OOD one, each with how a message names it."""
    return [(cfg.dataset, "")] + ([(ood, f"ood={cfg.ood}: ")] if ood is not None else [])


def check_launch(hydra: DictConfig, overrides: Sequence[str], multirun: bool) -> None:
    """What Hydra itself needs before it starts jobs: the folder it writes, where a command names one, and for
    launcher=slurm a SLURM to submit to (submitit's traceback otherwise comes after the plan)."""
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if key in given:
        try:
            folder = str(OmegaConf.select(hydra, key.removeprefix("hydra."), throw_on_resolution_failure=True))
        except Exception:  # an interpolation Hydra resolves only at launch (hydra:runtime...): Hydra checks it
            folder = None
        if folder:
            check_writable(key, folder)
    if multirun and "SlurmLauncher" in str(hydra.launcher.get("_target_", "")) and shutil.which("sbatch") is None:
        raise ConfigError("launcher=slurm: this machine has no sbatch (SLURM's client) on its PATH, so the grid "
                          "cannot be submitted. Run it from a SLURM login node, or use launcher=local.")


def check_writable(key: str, folder: str) -> None:
    why = rundir.cannot_write(Path(folder))
    if why:
        raise ConfigError(f"{key}={folder}: {why}")
