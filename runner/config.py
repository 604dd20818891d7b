"""The run's config: typed schema, composition, validation, and the run's identity.

Everything here runs before any data is touched. A user mistake becomes a ``ConfigError`` whose
message names the key, the value, what is allowed and, for a near miss, a "did you mean".
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import runner.launch  # noqa: F401  (registers ${machine_jobs:}, which conf/launcher/local.yaml uses)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
AXES = ("dataset", "model", "pooling", "global_pool", "norm", "loss", "optim", "teacher")  # config groups of a run
TARGET_PACKAGES = ("models", "runner", "datasets")  # the only packages a _target_ may name
# Keys that say where files go, where the run executes or how the runner behaves, not what the
# experiment is: they are left out of run_id, so moving data or results does not rerun anything.
NOT_IDENTITY = ("results_dir", "force", "fail_fast", "device", "threads", "data_dir", "download",
                "dataset.source_dir", "dataset.verify_checksums", "pooling.compile", "ood_source_dir")  # how, not what, is computed


class ConfigError(Exception):
    """A user mistake in the config: printed as one paragraph, exit status 2."""


def _num(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None) -> Any:
    return field(default=default, metadata={k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None})


@dataclass
class DatasetConfig:
    name: str = MISSING  # key in datasets.SPECS
    val_fraction: float = _num(0.1, gt=0, lt=1)  # share of train carved off (stratified) for validation
    split_seed: int = 0  # seeds the validation split, the same for every run
    augment: str = "none"  # none | crop_flip
    source_dir: str | None = None  # folder of IDX files to read instead of data_dir (mnist, fashion_mnist)
    verify_checksums: bool = True  # torchvision's md5 check of CIFAR files


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
    threads: int = _num(0, ge=0)  # 0 keeps torch's default
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    data_dir: str = "data"
    download: bool = False
    results_dir: str = "results"
    force: bool = False
    fail_fast: bool = False
    teacher: Any = None  # conf/teacher/: the distillation teacher, a run of this runner
    ts_method: str = "ece_grid"  # ece_grid | nll_lbfgs: how the temperature is fitted on validation logits
    ood: str | None = None  # a dataset whose test split is scored as out-of-distribution
    ood_source_dir: str | None = None  # IDX folder for the OOD dataset, as dataset.source_dir


ConfigStore.instance().store(name="run_schema", node=RunConfig)


# ---------------------------------------------------------------- composition

def groups() -> dict[str, list[str]]:
    """Every config group under conf/ (Hydra's own ``hydra/`` aside) and its options."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONF_DIR.iterdir()) if d.is_dir() and d.name != "hydra"}


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            keys += _dotted_keys(node._get_node(k), f"{full}.")
    return keys


def _check_group_options(parsed: Sequence[Any], options: Mapping[str, list[str]]) -> None:
    for o in parsed:
        key = o.key_or_group
        if key in options and not o.is_delete():
            value = o.value()
            if value is not None and str(value) not in options[key]:
                raise ConfigError(
                    f"{o.get_key_element()}={value}: '{value}' is not an option of config group '{key}'. "
                    f"Allowed: {', '.join(options[key])}.{_did_you_mean(str(value), options[key])}")


def _explain(exc: Exception, cell: Sequence[str], base: DictConfig | None) -> ConfigError:
    """Turn Hydra's / OmegaConf's composition error into one paragraph about the user's override."""
    cause = exc.__cause__ or exc
    m = re.search(r"Could not (?:override|append to config\. An item is already at) '([^']+)'", str(exc))
    key = m.group(1) if m else getattr(cause, "full_key", None)
    value = next((o.split("=", 1)[1] for o in cell if "=" in o and o.lstrip("+~").split("=", 1)[0] == key), None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        known = _dotted_keys(base) if base is not None else []
        return ConfigError(f"{key}={value}: '{key}' is not a config key.{_did_you_mean(key, known)} "
                           f"See `python -m runner --cfg job` for every key.")
    if key and isinstance(cause, OmegaConfBaseException):
        detail = " ".join(str(cause).split("\n")[0].split())
        return ConfigError(f"{key}={value}: {detail}.")
    return ConfigError(" ".join(str(exc).split()))


_KINDS = ((bool, "true or false", "booleans"), (int, "an integer", "integers"), (float, "a number", "numbers"),
          (str, "a string", "strings"), (list, "a list", "lists"))


def _check_group_types(cfg: DictConfig, base: DictConfig) -> None:
    """Each group leaf keeps the type it has in the option's YAML (an int is accepted for a float and
    stored as one, so ``p=3`` and ``p=3.0`` are the same run). The run-level keys and ``dataset``
    are typed by the schema instead."""
    for axis in AXES[1:]:
        for key in _dotted_keys(base[axis]):
            want, full = OmegaConf.select(base, f"{axis}.{key}"), f"{axis}.{key}"
            got = OmegaConf.select(cfg, full)
            if want is None or got is None or isinstance(want, (dict, DictConfig)):
                continue
            want = list(want) if isinstance(want, ListConfig) else want
            got = list(got) if isinstance(got, ListConfig) else got
            kind, label, _ = next(k for k in _KINDS if isinstance(want, k[0]))
            ok = isinstance(got, kind) and (kind is bool or not isinstance(got, bool))
            if kind is float and isinstance(got, int) and not isinstance(got, bool):
                OmegaConf.update(cfg, full, float(got))
                ok = True
            if ok and kind is list and want:  # elements keep the type of the default's elements
                elem = type(want[0])
                ok = all(isinstance(v, elem) and isinstance(v, bool) == (elem is bool) for v in got)
                label = "a list of " + next(plural for k, _, plural in _KINDS if issubclass(elem, k))
            if not ok:
                raise ConfigError(f"{full}={got}: expected {label} (the option's default is {want!r}).")


def _compose_cell(cell: Sequence[str], options: Mapping[str, list[str]], parser: OverridesParser,
                  bases: dict[tuple[str, ...], DictConfig | None]) -> tuple[DictConfig, dict[str, str]]:
    try:
        parsed = parser.parse_overrides(list(cell))
    except HydraException as e:
        raise ConfigError(" ".join(str(e).split())) from None
    _check_group_options(parsed, options)
    group_only = tuple(o for o in cell if o.lstrip("+").split("=", 1)[0] in options)
    if group_only not in bases:  # the chosen options as written, to compare the overrides against
        try:
            bases[group_only] = hydra_compose("config", overrides=list(group_only))
        except (HydraException, OmegaConfBaseException):
            bases[group_only] = None
    try:
        cfg = hydra_compose("config", overrides=list(cell), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise _explain(e, cell, bases[group_only]) from None
    if bases[group_only] is not None:
        _check_group_types(cfg, bases[group_only])
    return detach_choices(cfg)


def chosen(runtime_choices: Mapping[str, Any]) -> dict[str, str]:
    """The chosen option of every axis, and of an option's own sub-options (``norm@norm.block`` as ``norm.block``)."""
    out = {a: str(runtime_choices[a]) for a in AXES}
    for key, value in runtime_choices.items():
        group, _, package = key.partition("@")
        if group in AXES and package.startswith(group + "."):
            out[package] = str(value)
    return out


def detach_choices(cfg: DictConfig) -> tuple[DictConfig, dict[str, str]]:
    """Split a composed config (with its ``hydra`` node) into the run config and the chosen options."""
    choices = chosen(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def compose(overrides: Sequence[str] = ()) -> tuple[DictConfig, dict[str, str]]:
    """Compose and validate one run's config, as ``python -m runner <overrides>`` would."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="runner"):
        cfg, choices = _compose_cell(overrides, groups(), OverridesParser.create(), {})
    validate(cfg, choices)
    return cfg, choices


@dataclass
class Cell:
    overrides: list[str]
    run_id: str
    results_dir: str


def preflight(overrides: Sequence[str], multirun: bool) -> list[Cell]:
    """Expand the grid with Hydra's own sweeper logic, then compose and validate every cell.

    Runs before Hydra starts, so a mistake in any cell of a grid stops it with nothing written.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="runner"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            parsed = parser.parse_overrides(list(overrides))
        except HydraException as e:
            raise ConfigError(" ".join(str(e).split())) from None
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps and not multirun:
            raise ConfigError(f"{sweeps[0]}: a list of values is a sweep; add -m (multirun) to run one job per value.")
        cells = [list(c) for batch in BasicSweeper.split_arguments(parsed, None) for c in batch] if multirun else [list(overrides)]
        options, bases = groups(), {}
        plan = []
        for cell in cells:
            cfg, choices = _compose_cell(cell, options, parser, bases)
            validate(cfg, choices)
            plan.append(Cell(cell, run_id(cfg, choices), cfg.results_dir))
    GlobalHydra.instance().clear()
    return plan


# ---------------------------------------------------------------- validation

def _check_ranges(node: DictConfig, schema: type, prefix: str = "") -> None:
    for f in fields(schema):
        if not f.metadata or f.name not in node:
            continue
        v = node[f.name]
        bad = [f"{op} {lim}" for op, lim in f.metadata.items()
               if not {"ge": v >= lim, "gt": v > lim, "le": v <= lim, "lt": v < lim}[op]]
        if bad:
            allowed = " and ".join({"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}[op] + f" {lim}" for op, lim in f.metadata.items())
            raise ConfigError(f"{prefix}{f.name}={v}: out of range; allowed: {allowed}.")


def _check_targets(node: Any, path: str = "") -> None:
    """Refuse any _target_ outside this project's packages: instantiating it would run foreign code."""
    if isinstance(node, DictConfig):
        for k in node.keys():
            child = node._get_node(k)
            if k == "_target_":
                target = str(node[k])
                if target.split(".")[0] not in TARGET_PACKAGES:
                    raise ConfigError(f"{path}_target_={target}: only targets inside this project's packages "
                                      f"({', '.join(TARGET_PACKAGES)}) are instantiated.")
            else:
                _check_targets(child, f"{path}{k}.")
    elif isinstance(node, ListConfig):
        for i, item in enumerate(node):
            _check_targets(item, f"{path}{i}.")


def validate(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """Types were checked by the schema during composition; here: keys, ranges, values, combinations,
    and that the model builds and runs one forward pass on zeros of the dataset's shape."""
    from datasets import SPECS, DataError, check_available
    from datasets.batches import AUGMENTS

    unknown = sorted(set(cfg.keys()) - {f.name for f in fields(RunConfig)})
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a config key.{_did_you_mean(unknown[0], [f.name for f in fields(RunConfig)])} "
                          f"See `python -m runner --cfg job` for every key.")
    _check_ranges(cfg, RunConfig)
    _check_ranges(cfg.dataset, DatasetConfig, "dataset.")
    ds = cfg.dataset
    if ds.name not in SPECS:
        raise ConfigError(f"dataset.name={ds.name}: unknown dataset. Allowed: {', '.join(SPECS)}.{_did_you_mean(ds.name, SPECS)}")
    if ds.augment not in AUGMENTS:
        raise ConfigError(f"dataset.augment={ds.augment}: allowed: {', '.join(AUGMENTS)}.{_did_you_mean(ds.augment, AUGMENTS)}")
    if ds.source_dir is not None and not SPECS[ds.name].idx_source_dir:
        readers = [n for n, s in SPECS.items() if s.idx_source_dir]
        raise ConfigError(f"dataset.source_dir={ds.source_dir}: only {', '.join(readers)} read IDX files from a folder; "
                          f"dataset={ds.name} reads data_dir.")
    from runner.metrics import TS_METHODS

    if cfg.ts_method not in TS_METHODS:
        raise ConfigError(f"ts_method={cfg.ts_method}: allowed: {', '.join(TS_METHODS)}.{_did_you_mean(cfg.ts_method, TS_METHODS)}")
    if cfg.ood is not None:
        _check_ood(cfg)
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs}: longer than the run (epochs={cfg.epochs}); allowed: 0..{cfg.epochs}.")
    _check_device(cfg.device)
    _check_targets(cfg)
    _check_norm(cfg, choices)
    _check_builds(cfg, choices)
    _check_teacher(cfg, choices)
    try:
        check_available(ds, cfg.data_dir, cfg.download)
    except DataError as e:
        raise ConfigError(str(e)) from None


def ood_dataset(cfg: DictConfig) -> DictConfig:
    """The dataset node of ``ood=<name>``: its option's YAML, with ``ood_source_dir`` as its source_dir."""
    node = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.load(CONF_DIR / "dataset" / f"{cfg.ood}.yaml"))
    node.source_dir = cfg.ood_source_dir
    return node


def _check_ood(cfg: DictConfig) -> None:
    from datasets import SPECS, DataError, check_available

    names = [n for n in groups()["dataset"] if n != cfg.dataset.name]
    if cfg.ood not in names:
        raise ConfigError(f"ood={cfg.ood}: allowed: {', '.join(names)} (a dataset other than dataset={cfg.dataset.name})."
                          f"{_did_you_mean(str(cfg.ood), names)}")
    ours, theirs = SPECS[cfg.dataset.name], SPECS[cfg.ood]
    if (ours.in_channels, ours.image_size) != (theirs.in_channels, theirs.image_size):
        shape = lambda s: f"{s.in_channels}×{s.image_size}×{s.image_size}"  # noqa: E731
        same = [n for n in names if (SPECS[n].in_channels, SPECS[n].image_size) == (ours.in_channels, ours.image_size)]
        raise ConfigError(f"ood={cfg.ood}: its images are {shape(theirs)}, dataset={cfg.dataset.name}'s are {shape(ours)}; "
                          f"the model takes one shape. Same shape: {', '.join(same) or 'none'}.")
    if cfg.ood_source_dir is not None and not theirs.idx_source_dir:
        raise ConfigError(f"ood_source_dir={cfg.ood_source_dir}: ood={cfg.ood} reads data_dir, not IDX files from a folder.")
    try:
        check_available(ood_dataset(cfg), cfg.data_dir, cfg.download)
    except DataError as e:
        raise ConfigError(f"ood={cfg.ood}: {e}") from None


def _check_device(device: str) -> None:
    import torch

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"device={device}: allowed: auto, cpu, cuda, cuda:N, mps.")
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= n:
            raise ConfigError(f"device={device}: this machine has {n} CUDA device(s). Use device=auto or device=cpu.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps: MPS is not available on this machine. Use device=auto or device=cpu.")


def _option_classes(group: str) -> dict[str, type]:
    """Each option of a config group and the class its ``_target_`` names (read from the YAML, not composed)."""
    from hydra.utils import get_class

    return {p.stem: get_class(OmegaConf.load(p)._target_)
            for p in sorted((CONF_DIR / group).glob("*.yaml"))}


def _check_norm(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """What a norm declares about the models and batches it works with (models/norm/__init__.py)."""
    from hydra.utils import get_class, instantiate

    from models import declared

    norm = instantiate(cfg.norm)
    needs = declared(norm, "model_requires")
    if needs is not None:
        attribute, what = needs
        if not hasattr(get_class(cfg.model._target_), attribute):
            able = [name for name, cls in _option_classes("model").items() if hasattr(cls, attribute)]
            raise ConfigError(f"norm={choices['norm']} needs {what}; model={choices['model']} has none. "
                              f"Models that support it: {', '.join(able)}.")
    if cfg.batch_size == 1 and declared(norm, "batch_dependent", False):
        free = [name for name, cls in _option_classes("norm").items() if getattr(cls, "batch_dependent", False) is not True]
        raise ConfigError(f"batch_size=1: norm={choices['norm']} normalizes with statistics over the batch and cannot "
                          f"train on one sample. Use batch_size >= 2, or a norm computed per sample: {', '.join(free)}.")


def _check_builds(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    """Instantiate the loss and optimizer, build the model and run it on two zero images."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    key = json.dumps({a: OmegaConf.to_container(cfg[a], resolve=True) for a in ("model", "pooling", "global_pool", "norm")}
                     | {"dataset": {"name": cfg.dataset.name}}, sort_keys=True)
    where = ", ".join(f"{a}={choices[a]}" for a in ("dataset", "model", "pooling", "global_pool", "norm"))
    try:
        _dry_forward(key)
        instantiate(cfg.loss)
        instantiate(cfg.optim)
    except InstantiationException as e:
        raise ConfigError(f"{' '.join(str(e).split())} ({where}).") from None
    except (TypeError, ValueError, RuntimeError) as e:
        from datasets import SPECS

        hint = ""
        if isinstance(e, _ForwardError) and "downsample_at" in cfg.model:
            size = SPECS[cfg.dataset.name].image_size
            hint = (f" The {size}×{size} images of dataset={choices['dataset']} may be too small for the model's "
                    f"downsampling: model.downsample_at={list(cfg.model.downsample_at)} lists the stages that downsample.")
        raise ConfigError(f"the model does not build or run with {where}: {' '.join(str(e).split())}.{hint}") from None


class _ForwardError(RuntimeError):
    """The model built but failed on an input of the dataset's shape (often too small for its poolings)."""


@functools.lru_cache(maxsize=256)
def _dry_forward(key: str) -> None:
    import torch

    from runner.checkpoint import build_model

    from datasets import SPECS

    parts = OmegaConf.create(json.loads(key))
    model = build_model(parts)
    spec = SPECS[parts.dataset.name]
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):  # checking shapes is no reason to compile
        try:
            out = model.eval()(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size))
        except (ValueError, RuntimeError) as e:
            raise _ForwardError(" ".join(str(e).split())) from None
    if tuple(out.shape) != (2, spec.num_classes):
        raise ValueError(f"the model returns {tuple(out.shape)} for 2 images; expected (2, {spec.num_classes})")


# ---------------------------------------------------------------- the distillation teacher

@dataclass
class TeacherRef:
    run_id: str
    checkpoint: Path
    cfg: DictConfig | None = None  # the teacher run, when it is referenced by its settings (trained if missing)
    choices: dict[str, str] | None = None


def _hydra_ready():
    import contextlib

    if GlobalHydra.instance().is_initialized():  # inside @hydra.main, preflight or compose()
        return contextlib.nullcontext()
    return initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="runner")


def teacher_ref(cfg: DictConfig, choices: Mapping[str, str]) -> TeacherRef | None:
    """Where the teacher of ``cfg`` is (or will be): by its settings, by ``teacher.run_id`` or by ``teacher.checkpoint``.

    Validation, the run id and the run itself all ask; the answer is worked out once per process for
    the parts of the config it depends on (composing the teacher's config or reading its checkpoint).
    """
    if cfg.get("teacher") is None:
        return None
    key = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig) else cfg[k]
           for k in ("teacher", "dataset", "data_dir", "download", "results_dir", "device", "threads")}
    return _teacher_ref(json.dumps(key | {"dataset_choice": choices["dataset"], "teacher_choice": choices.get("teacher")},
                                   sort_keys=True))


@functools.lru_cache(maxsize=64)
def _teacher_ref(key: str) -> TeacherRef:
    import torch

    parts = json.loads(key)
    cfg = OmegaConf.create({k: v for k, v in parts.items() if not k.endswith("_choice")})
    choices = {"dataset": parts["dataset_choice"], "teacher": parts["teacher_choice"]}
    t = cfg.teacher
    ways = [k for k in ("overrides", "run_id", "checkpoint") if t.get(k)]
    if len(ways) != 1:
        raise ConfigError(f"teacher={choices.get('teacher')}: give exactly one of teacher.overrides (the teacher run's "
                          f"settings), teacher.run_id or teacher.checkpoint; got {', '.join(ways) or 'none'}.")
    root = Path(cfg.results_dir)
    if t.get("overrides"):
        with _hydra_ready():
            tcfg, tchoices = _compose_cell([f"dataset={choices['dataset']}", *t.overrides], groups(),
                                           OverridesParser.create(), {})
        with open_dict(tcfg):  # the student's data and where/how it runs
            for key in cfg.dataset:
                tcfg.dataset[key] = cfg.dataset[key]
            for key in ("data_dir", "download", "results_dir", "device", "threads"):
                tcfg[key] = cfg[key]
        if tcfg.get("teacher") is not None:
            raise ConfigError(f"teacher.overrides={list(t.overrides)}: a teacher cannot have a teacher of its own.")
        validate(tcfg, tchoices)
        rid = run_id(tcfg, tchoices)
        return TeacherRef(rid, root / "runs" / rid / "checkpoint.pt", tcfg, tchoices)
    path = Path(t.checkpoint) if t.get("checkpoint") else root / "runs" / str(t.run_id) / "checkpoint.pt"
    key = "teacher.checkpoint" if t.get("checkpoint") else "teacher.run_id"
    if not path.is_file():
        raise ConfigError(f"{key}={t.get('checkpoint') or t.get('run_id')}: no checkpoint at {path}.")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # the weights stay on disk
    _check_teacher_shape(ckpt["config"]["dataset"]["name"], cfg.dataset.name, key)
    return TeacherRef(str(ckpt.get("run_id") or hashlib.sha1(path.read_bytes()).hexdigest()[:10]), path)


def _check_teacher_shape(teacher_dataset: str, dataset: str, key: str) -> None:
    from datasets import SPECS

    t, s = SPECS[teacher_dataset], SPECS[dataset]
    if (t.num_classes, t.in_channels, t.image_size) != (s.num_classes, s.in_channels, s.image_size):
        raise ConfigError(f"{key}: the teacher was trained on {teacher_dataset} ({t.num_classes} classes, "
                          f"{t.in_channels}×{t.image_size}×{t.image_size} images); dataset={dataset} has "
                          f"{s.num_classes} classes and {s.in_channels}×{s.image_size}×{s.image_size} images.")


def _check_teacher(cfg: DictConfig, choices: Mapping[str, str]) -> None:
    from hydra.utils import get_class

    needs = bool(getattr(get_class(cfg.loss._target_), "needs_teacher", False))
    if needs and cfg.get("teacher") is None:
        raise ConfigError(f"loss={choices['loss']} distills from a teacher: add teacher=<{'|'.join(groups()['teacher'])}> "
                          "(a run trained first if missing), or teacher=run teacher.run_id=<id>, "
                          "or teacher=checkpoint teacher.checkpoint=<path>.")
    if not needs and cfg.get("teacher") is not None:
        distill = [o for o in groups()["loss"]
                   if getattr(get_class(OmegaConf.load(CONF_DIR / "loss" / f"{o}.yaml")._target_), "needs_teacher", False)]
        raise ConfigError(f"teacher={choices['teacher']}: loss={choices['loss']} does not use a teacher; "
                          f"the distillation losses are {', '.join(distill)}.")
    teacher_ref(cfg, choices)


# ---------------------------------------------------------------- identity

def identity(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, Any]:
    """What defines the experiment: the chosen options and the resolved config less NOT_IDENTITY."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for dotted in NOT_IDENTITY:
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    chosen = dict(choices)
    ref = teacher_ref(cfg, choices)
    if ref is not None:  # the teacher is part of the experiment: its run, not how it was referenced
        chosen.pop("teacher", None)
        config.pop("teacher", None)
        config["teacher_run_id"] = ref.run_id
    return {"choices": chosen, "config": config}


def run_id(cfg: DictConfig, choices: Mapping[str, str]) -> str:
    """A short hash of ``identity``: the same experiment always gets the same id."""
    blob = json.dumps(identity(cfg, choices), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]
