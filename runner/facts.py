"""What planning reads from the code, the config files and the machine, remembered so that a preview is quick.

Typing an option reads its class's signature, the checks read what a class declares (``needs_teacher``,
``batch_dependent``, ``model_requires``, an attribute a norm asks its model for), and ``device=auto`` asks torch
for CUDA and MPS: each needs the layers' modules, which import torch (1.5 s, half a grid preview); and Hydra takes
about 80 ms to compose each set of group options. Every planning command records what it read and composed in
``$RUNNER_CACHE_DIR`` (default ``$XDG_CACHE_HOME/runner``, else ``~/.cache/runner``) as ``facts.json``, keyed by
what it depends on: the project's sources (each .py file's size and modification time, and the installed torch's,
timm's and OmegaConf's), the config files of the search path (and Hydra's), and the machine (host, boot, the
visible-devices variables). Only a grid preview (``python -m runner ... --dry-run``) reads the record back, inside
``remembered()``, where its key still matches; anything it lacks is read or composed as any command does it. Runs,
their plans and their ids always come from the code itself. Nothing here is worth an error: an unreadable or
unwritable record is no record, and an entry this version cannot read is no entry.

No library remembers derived facts of a code base keyed by its files (pytest's cache and joblib's Memory key by
arguments, not sources), so the record is written here, in a few lines.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.util
import json
import os
import socket
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.schema import Param, RunConfig, option_params

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("runner", "models", "datasets", "hydra_plugins")  # the project's code: classes, schema, checks
DEVICE_FACTS = {"cuda_available": bool, "cuda_count": int, "mps_available": bool}  # what device=... asks torch
MAX_BASES = 256  # compositions kept in the record (a few kB each)
DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES",
                    "PYTORCH_NVML_BASED_CUDA_CHECK")

_remembering: contextvars.ContextVar[tuple[Any, dict[str, Any]] | None] = contextvars.ContextVar("remembering",
                                                                                                  default=None)
_learned: dict[str, Any] = {"targets": {}, "device": None, "configs": {}}  # what this process read, to be saved
_stand_ins: dict[tuple[Any, ...], "Recorded"] = {}  # by the record's file as read, and the target


@contextlib.contextmanager
def remembered() -> Iterator[None]:
    """Within it (a grid preview), ``target`` and ``device`` answer from the record, as read on entering, where it
    is valid."""
    token = _remembering.set(_read())
    try:
        yield
    finally:
        _remembering.reset(token)


# ---------------------------------------------------------------- option classes

class Recorded:
    """An option's class as the record knows it, standing in for the class within ``remembered()``: its name, the
    typed keywords of its signature, its public class attributes with plain values (JSON), and the names of the
    others (``hasattr`` is all the checks ask of them)."""

    def __init__(self, where: tuple[str, str], params: dict[str, Param] | None, attrs: dict[str, Any],
                 names: list[str]) -> None:
        module, qualname = where  # where the class is defined, as messages name it
        self.__dict__.update(__module__=module, __qualname__=qualname, __name__=qualname.rpartition(".")[2],
                             params=params, _attrs=attrs, _names=frozenset(names))

    def __getattr__(self, name: str) -> Any:
        if name in self._attrs:  # a sequence comes back as a tuple (declarations are tuples: model_requires)
            value = self._attrs[name]
            return tuple(value) if isinstance(value, list) else value
        if name in self._names:
            return _OPAQUE
        raise AttributeError(name)


_OPAQUE = object()  # a recorded attribute whose value is code (a method, a class): it exists


def target(home: str, path: str, resolve: Callable[[], Any]) -> Any:
    """The class or function ``path`` names for an option whose code lives under ``home``: ``resolve()`` (the
    allow-listed import, runner/targets.py), or within ``remembered()`` its stand-in where the record has it (it
    was resolved under the same home from the same sources). What was read is kept to be saved."""
    name = f"{home}:{path}"
    _sources_key()  # the sources as they are before the code is read: what is learned is recorded under this key
    record = _remembering.get()
    if record is not None:
        known = _stand_ins.get((record[0], name)) or _stand_in(record, name)
        if known is not None:
            return known
    obj = resolve()
    if name not in _learned["targets"]:
        try:
            _learned["targets"][name] = _describe(obj)
        except Exception:  # recording is never worth a failed command: this one is read from the code each time
            _learned["targets"][name] = None
    return obj


def all_options_recorded() -> bool:
    """Whether the record, for the sources as they are, holds every option class a process had imported
    (``runner.plan._describe_options``): then no command needs to read them all again."""
    return _part(_read(), "sources", _sources_key()).get("all_options") is True


def all_options_read() -> None:
    _learned["all_options"] = True


def params(target: Any) -> dict[str, Param] | None:
    """The typed keywords of ``target`` (runner/schema.py's ``option_params``), recorded or read."""
    return target.params if isinstance(target, Recorded) else option_params(target)


def _describe(obj: Any) -> dict[str, Any] | None:
    """``obj`` as the record keeps it; None when a part of it has no record form (then it is always read)."""
    typed = option_params(obj)
    encoded = None
    if typed is not None:
        encoded = {}
        for name, p in typed.items():
            kind = _TYPE_NAMES.get(p.type)
            if kind is None or not _plain(p.bounds) or not _plain(p.choices):
                return None
            encoded[name] = [kind, p.default if _plain(p.default) else repr(p.default), p.bounds,
                             None if p.choices is None else list(p.choices)]
    attrs, names = {}, []
    for name in dir(obj):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # a descriptor that needs an instance: the name exists
            value = _OPAQUE
        if _plain(value) and not callable(value):
            attrs[name] = value
        else:
            names.append(name)
    return {"where": [obj.__module__, obj.__qualname__], "params": encoded, "attrs": attrs, "names": names}


def _stand_in(record: tuple[Any, dict[str, Any]], name: str) -> Recorded | None:
    try:
        entry = _part(record, "sources", _sources_key())["targets"][name]
        attrs, names, typed, (module, qualname) = entry["attrs"], entry["names"], entry["params"], entry["where"]
        if not (isinstance(attrs, dict) and isinstance(names, list) and isinstance(typed, (dict, type(None)))
                and isinstance(module, str) and isinstance(qualname, str)):
            return None
        if typed is not None:
            typed = {key: Param(_TYPES[kind], default, dict(bounds), None if choices is None else tuple(choices))
                     for key, (kind, default, bounds, choices) in typed.items()}
        made = Recorded((module, qualname), typed, attrs, [str(n) for n in names])
    except (KeyError, TypeError, ValueError):  # no entry, or one this version cannot read: the code is read
        return None
    _stand_ins[(record[0], name)] = made
    return made


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


_SCALARS = (bool, int, float, str)
_TYPES: dict[str, Any] = {"Any": Any} | {t.__name__: t for t in _SCALARS} | {
    f"List[{t.__name__}]": typing.List[t] for t in _SCALARS  # noqa: UP006 (OmegaConf's annotation)
}
_TYPES |= {f"Optional[{name}]": typing.Optional[t] for name, t in list(_TYPES.items()) if t is not Any}
_TYPE_NAMES = {t: name for name, t in _TYPES.items()}


# ---------------------------------------------------------------- the machine

def device(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``probe()`` says of the machine's devices (DEVICE_FACTS), or within ``remembered()`` what it said when
    the machine was as it is now."""
    record = _remembering.get()
    if record is not None:
        known = _part(record, "machine", _machine_key()).get("device")
        if isinstance(known, dict) and set(known) == set(DEVICE_FACTS) and all(
                isinstance(known[k], t) and not (t is int and isinstance(known[k], bool))
                for k, t in DEVICE_FACTS.items()):
            return known
    found = probe()
    _learned["device"] = found
    return found


# ---------------------------------------------------------------- compositions

def composed(sources: list[tuple[str, str]], name: str,
             compose: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """A set of group options as Hydra composes it (the run config, without its hydra node, and the chosen options):
    ``compose()``, or within ``remembered()`` the record of it, while the config files of the search path
    (``sources``: Hydra's scheme and path of each) and the project's code are as they were when it was composed."""
    key = _configs_key(sources)
    record = _remembering.get()
    if record is not None and key is not None:
        try:
            typed, container, choices = _part(record, "configs", key)["bases"][name]
            cfg = OmegaConf.merge(OmegaConf.structured(RunConfig), container) if typed else OmegaConf.create(container)
            OmegaConf.set_struct(cfg, True)  # as Hydra leaves a composed config
            return cfg, dict(choices)
        except (KeyError, TypeError, ValueError, OmegaConfBaseException):  # not recorded, or not readable
            pass
    cfg, choices = compose()
    container = OmegaConf.to_container(cfg, resolve=False)
    if key is not None and _plain(container) and _plain(choices):
        _learned["configs"].setdefault(key, {})[name] = [OmegaConf.get_type(cfg) is RunConfig, container, choices]
    return cfg, choices


def _configs_key(sources: list[tuple[str, str]]) -> str | None:
    """The config files a composition reads, as sizes and times, with the code's key; None where a source is
    neither a folder nor an installed package (nothing to key it by: it is always composed)."""
    found: list[Any] = [_sources_key(), _library("hydra")]
    for scheme, path in sources:
        if scheme == "file":
            found += [_stat(Path(folder) / f) for folder, dirs, files in sorted(os.walk(path))
                      for f in sorted(files) if f.endswith((".yaml", ".yml"))]
        elif scheme == "pkg":
            found.append(_library(path.split(".")[0]))
        elif scheme != "structured":  # the ConfigStore: filled by the code, which the code's key covers
            return None
    return hashlib.sha1(json.dumps(found).encode()).hexdigest()


# ---------------------------------------------------------------- the record

def save() -> None:
    """Write what this process read to the record (each part under its own key); never raises."""
    targets = {k: v for k, v in _learned["targets"].items() if v is not None}
    if not targets and _learned["device"] is None and not _learned["configs"]:
        return
    path = _path()
    old = _read()[1]
    out: dict[str, Any] = {}
    kept = _part((None, old), "sources", _sources_key())
    if kept or targets:
        previous = kept.get("targets") if isinstance(kept.get("targets"), dict) else {}
        out["sources"] = {"key": _sources_key(), "targets": previous | targets}
        if _learned.get("all_options") or kept.get("all_options") is True:
            out["sources"]["all_options"] = True
    machine = old.get("machine") if isinstance(old.get("machine"), dict) else None
    if _learned["device"] is not None:
        machine = {"key": _machine_key(), "device": _learned["device"]}
    if machine is not None:
        out["machine"] = machine
    configs = old.get("configs") if isinstance(old.get("configs"), dict) else None
    for key, bases in _learned["configs"].items():  # the newest key's, with what was recorded under it before
        before = configs.get("bases") if configs and configs.get("key") == key and isinstance(
            configs.get("bases"), dict) else {}
        kept = list((before | bases).items())[-MAX_BASES:]  # the newest: a preview is of a grid planned lately
        configs = {"key": key, "bases": dict(kept)}
    if configs is not None:
        out["configs"] = configs
    if out == old:
        return
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".facts-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f)
        os.replace(tmp, path)  # a reader sees the old record or the new one, never half of one
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _path() -> Path:
    base = os.environ.get("RUNNER_CACHE_DIR")
    if base:
        return Path(base) / "facts.json"
    try:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home (a bare container's user): the temporary folder
        home = Path(tempfile.gettempdir())
    return home / "runner" / "facts.json"


def _part(record: tuple[Any, dict[str, Any]], part: str, key: str) -> dict[str, Any]:
    """The record's ``part`` if it was written under ``key``, else empty."""
    found = record[1].get(part)
    return found if isinstance(found, dict) and found.get("key") == key else {}


def _read() -> tuple[Any, dict[str, Any]]:
    """The record's file as it is now (its path, size and time, which name this reading) and its contents."""
    path = _path()
    return _parsed(tuple(_stat(path)))


@functools.lru_cache(maxsize=4)
def _parsed(stamp: tuple[Any, ...]) -> tuple[Any, dict[str, Any]]:
    try:
        found = json.loads(Path(stamp[0]).read_text())
    except (OSError, ValueError):
        found = {}
    return stamp, found if isinstance(found, dict) else {}


def _stat(path: Path) -> list[Any]:
    try:
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    except OSError:
        return [str(path), None, None]


def _library(name: str) -> list[Any]:
    """Where an installed library is and when it was installed (its __init__'s size and time), without importing
    it."""
    spec = importlib.util.find_spec(name)
    return _stat(Path(spec.origin)) if spec is not None and spec.origin else [name, None, None]


@functools.cache
def _sources_key() -> str:
    found = [sys.version, _library("torch"), _library("timm"), _library("omegaconf")]
    for package in SOURCES:
        for folder, dirs, files in os.walk(ROOT / package):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            found += [_stat(Path(folder) / f) for f in sorted(files) if f.endswith(".py")]
    return hashlib.sha1(json.dumps(found).encode()).hexdigest()


@functools.cache
def _machine_key() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = None
    found = [socket.gethostname(), boot, _library("torch"), [os.environ.get(v) for v in DEVICE_VARIABLES]]
    return hashlib.sha1(json.dumps(found).encode()).hexdigest()
