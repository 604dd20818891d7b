"""Search spaces of ``python -m runner.tune``: where they are declared, how they merge, what they may hold.

A space maps a config key (``lr``, ``loss.gamma``) to ``{low, high, log?, step?}`` or ``{choices: [...]}``.
An option declares its own beside its settings (``conf/loss/focal.yaml``: ``tune: {gamma: {low: 1, high: 5}}``,
keys relative to the option); the run-level space is ``tune.space`` (conf/tune/, an experiment file or the
shell), whose keys replace an option's: a partial range changes only the bounds it names, null drops the key.
Each key becomes an Optuna distribution, typed by the value the key has in the run's typed config.
"""
from __future__ import annotations

import math

from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from runner.schema import AXES, NOT_IDENTITY, ConfigError, did_you_mean

SPEC_KEYS = ("low", "high", "log", "step", "choices")
OPTION_AXES = tuple(a for a in AXES if a not in ("dataset", "teacher"))  # groups whose options may declare a space
_ABSENT = object()


def _is_spec(node: Mapping[str, Any]) -> bool:
    return bool(node) and set(node) <= set(SPEC_KEYS)


def flatten(node: Any, prefix: str = "", where: str = "tune.space") -> dict[str, dict[str, Any] | None]:
    """``{loss: {gamma: {low: 1, high: 5}}}`` as ``{"loss.gamma": {"low": 1, "high": 5}}``; a null is kept (it drops
    a key)."""
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}={node!r}: expected a mapping of config keys to {{low, high}} or {{choices}}.")
    out: dict[str, dict[str, Any] | None] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if v is None:
            out[key] = None
        elif isinstance(v, Mapping) and _is_spec(v):
            out[key] = dict(v)
        elif isinstance(v, Mapping) and set(v) & set(SPEC_KEYS):  # a range with a key no range has
            unknown = sorted(set(v) - set(SPEC_KEYS), key=str)[0]
            raise ConfigError(f"{where}.{key}.{unknown}: not a key of a search space. Allowed: "
                              f"{', '.join(SPEC_KEYS)}.")
        elif isinstance(v, Mapping) and v:
            out |= flatten(v, f"{key}.", where)
        else:
            raise ConfigError(
                f"{where}.{key}={v!r}: expected {{low: ..., high: ...}} (optionally log: true, step: ...) "
                "or {choices: [...]}, or null to drop the key."
            )
    return out


def declared(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The spaces the run's options declare (``conf/<group>/<option>.yaml``: ``tune:``), keyed by full config key."""
    out: dict[str, dict[str, Any]] = {}
    for axis in OPTION_AXES:
        node = cfg.get(axis)
        if isinstance(node, DictConfig) and node.get("tune") is not None:
            out |= {f"{axis}.{k}": v for k, v in flatten(node.tune, "", f"{axis}.tune").items() if v is not None}
    return out


def method_space(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The options' spaces, then ``tune.space`` over them: a range given there replaces only the bounds it names."""
    space = declared(cfg)
    tune = cfg.get("tune") or {}
    for key, spec in flatten(tune.get("space")).items():
        if spec is None:
            space.pop(key, None)
        elif key in space and "choices" not in spec and "choices" not in space[key]:
            space[key] = space[key] | spec
        else:
            space[key] = spec
    return dict(sorted(space.items()))


def distribution(
    key: str, spec: Mapping[str, Any], cfg: DictConfig, fixed: Mapping[str, str], method: str
) -> BaseDistribution:
    """The Optuna distribution of one key of a method's space, or a ConfigError saying why the key cannot be tuned."""
    where = f"tune.space.{key}"
    head = key.split(".")[0]
    if key == "seed":
        raise ConfigError(f"{where}: the seed is not a setting to tune; tune.seeds are the trials' seeds and seed=... "
                          "the final runs'.")
    if head in ("tune", "trial") or key in NOT_IDENTITY or head in NOT_IDENTITY:
        raise ConfigError(f"{where}: {key} does not change what a run computes (it is not part of the run's identity), "
                          "so every trial would be the same run. Tune a setting of the method or of training.")
    if head in ("dataset", "teacher"):
        raise ConfigError(f"{where}: every method is compared on the same {head}; {head} settings cannot vary between "
                          "trials. Fix them on the command line instead.")
    if key.endswith(("_target_", "_partial_")) or head in AXES and key == head:
        raise ConfigError(f"{where}: an option is chosen by its config group, not tuned; compare options as methods of "
                          f"the grid instead, e.g. -m {head}=a,b.")
    if key in fixed:
        raise ConfigError(f"{where}: {fixed[key]} on the command line fixes it for {method}; drop one of the two.")
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is _ABSENT:
        known = [k for k in _leaf_keys(cfg) if k.split(".")[0] in OPTION_AXES or "." not in k]
        raise ConfigError(f"{where}: {method} has no setting {key}.{did_you_mean(key, known)} "
                          "(`python -m runner --cfg job` with the method's options lists its keys).")
    if isinstance(value, (DictConfig, ListConfig)):
        raise ConfigError(f"{where}: {key} is a group of settings, not one value; tune its keys ({key}.<name>).")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: not a key of a search space. Allowed: {', '.join(SPEC_KEYS)}.")
    try:
        if "choices" in spec:
            choices = spec["choices"]
            if set(spec) != {"choices"} or not isinstance(choices, (list, tuple)) or not choices:
                raise ValueError("expected {choices: [a, b, ...]} with at least one value and nothing else")
            if any(isinstance(c, (list, dict)) for c in choices):
                raise ValueError("each choice must be a single value (number, string, true/false or null)")
            return CategoricalDistribution(list(choices))
        if "low" not in spec or "high" not in spec:
            raise ValueError("a range needs both low and high (or give choices: [...])")
        low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (low, high)):
            raise ValueError(f"low and high must be numbers, got {low!r} and {high!r}")
        if not all(math.isfinite(v) for v in (low, high)) or (step is not None and (
                isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step))):
            raise ValueError(f"low, high and step must be finite numbers, got {low!r}, {high!r} and {step!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) and value is not None:
            raise ValueError(f"{key} is {value!r}, not a number: give its values as choices: [...]")
        if isinstance(value, int):
            if not (
                float(low).is_integer() and float(high).is_integer() and (step is None or float(step).is_integer())
            ):
                raise ValueError(f"{key} is an integer setting: low, high and step must be integers")
            return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))
    except ValueError as e:
        raise ConfigError(f"{where}={dict(spec)}: {' '.join(str(e).split())}.") from None


def _leaf_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            child = node._get_node(k)
            out += _leaf_keys(child, f"{prefix}{k}.") if isinstance(child, DictConfig) else [f"{prefix}{k}"]
    return out


def probes(dists: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Settings that together reach every bound and every choice of a space: each is planned before any trial."""
    out: list[dict[str, Any]] = []
    lows = {k: d.low for k, d in dists.items() if isinstance(d, (FloatDistribution, IntDistribution))}
    highs = {k: d.high for k, d in dists.items() if isinstance(d, (FloatDistribution, IntDistribution))}
    if lows:
        out += [lows, highs]
    for k, d in dists.items():
        if isinstance(d, CategoricalDistribution):
            out += [{k: c} for c in d.choices]
    return out


def describe(d: BaseDistribution) -> dict[str, Any]:
    """A distribution as a space writes it: {low, high, log, step} or {choices}."""
    if isinstance(d, CategoricalDistribution):
        return {"choices": list(d.choices)}
    return {"low": d.low, "high": d.high, "log": d.log, "step": d.step}
