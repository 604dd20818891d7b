"""A run's identity: everything that can change its numbers, and its id, the hash of that.

runner/plan.py computes both for every plan; runner/earlier.py recomputes them for records of an earlier version.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from runner.schema import NOT_IDENTITY


def identity(cfg: DictConfig | Mapping[str, Any], choices: Mapping[str, str | None], device: str,
             autocast: str | None, teacher_run_id: str | None) -> dict[str, Any]:
    """What can change the numbers: the chosen options, the typed config less NOT_IDENTITY, the device type and
    autocast dtype, and the teacher's run (not how it was named). A key set to null is left out, so a new key
    whose default (null) keeps the old behaviour leaves every existing run id as it was."""
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for dotted in NOT_IDENTITY:  # the mappings on each path copied before a key is dropped: ``cfg``'s stay as they are
        *parents, leaf = dotted.split(".")
        node = config
        for p in parents:
            child = node.get(p)
            if not isinstance(child, dict):
                break
            node[p] = dict(child)
            node = node[p]
        else:
            node.pop(leaf, None)
    config.pop("teacher", None)
    if not config.get("skip_test"):  # false is the default (null): the same run, the same id
        config.pop("skip_test", None)
    config |= {"device_type": device, "autocast": autocast, "teacher_run_id": teacher_run_id}
    chosen = {k: v for k, v in choices.items() if v is not None and k != "teacher"}
    return {"choices": chosen, "config": _without_nulls(config)}


def id_of(ident: Mapping[str, Any]) -> str:
    """A run's id: the first 10 hex digits of the SHA-1 of its identity as canonical JSON."""
    return hashlib.sha1(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def _without_nulls(node: Any) -> Any:
    """``node`` less its null values, every mapping and list new (an identity shares nothing with its config)."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node]
    return node

