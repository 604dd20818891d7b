"""A grid cell's typed config as the template of the cells that differ from it only in run-level scalars.

A grid's seeds and a study's trial values change nothing Hydra composes: such a cell's config is the earlier
cell's typed config with the values set, which OmegaConf checks against the schema's types as composition would.
``runner.plan.Planner`` keeps one Template per set of options and value keys.
"""
from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.targets import TARGET_HOMES


@dataclass(frozen=True)
class Template:
    """A cell's typed config, from which a cell with the same options and other run-level scalars is planned
    without composing and typing again (a grid's seeds; a study's trials): its config is this one with the
    values set, which OmegaConf checks against the schema's types as Hydra's composition would."""
    cfg: DictConfig
    choices: dict[str, str | None]
    referenced: str  # every interpolation of the composed config: a key named there is never filled in

    def fill(self, values: Sequence[Any]) -> DictConfig | None:
        """The config with ``values`` (parsed overrides) set, or None where only composing gives it (a key of
        a method's node, which its target's signature types; a key an interpolation reads; a list; a null)."""
        for o in values:
            key, value = o.key_or_group, o.value()
            plain = o.package is None and not (o.is_delete() or o.is_add() or o.is_force_add())
            if (not plain or key.split(".")[0] in (*TARGET_HOMES, "teacher") or key in self.referenced
                    or not isinstance(value, (bool, int, float, str))
                    or (isinstance(value, str) and ("${" in value or value == "???"))
                    or not isinstance(OmegaConf.select(self.cfg, key, default=None), (bool, int, float, str))):
                return None
        filled = {o.key_or_group.split(".")[0] for o in values}
        cfg = copy.deepcopy(self.cfg, {id(node): node for key, node in self._children.items() if key not in filled})
        try:
            for o in values:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
        except OmegaConfBaseException:
            return None  # composing says what is wrong, as for any cell
        return cfg

    @functools.cached_property
    def _children(self) -> dict[str, Any]:
        """The config's top-level nodes, which a filled cell shares with this one except where its values go (as a
        deep copy's memo): copying them all was most of a seed's planning. A shared node is never changed after
        planning (a plan's config is copied before anything is set in it: runner/machine.py, runner/build.py);
        each keeps the template as its parent, which only interpolations and flags read, and a typed config has
        no interpolations left and the same flags as every cell filled from it."""
        return {str(key): self.cfg._get_node(key) for key in self.cfg.keys()}

    @functools.cached_property
    def _container(self) -> dict[str, Any]:
        return OmegaConf.to_container(self.cfg, resolve=True)

    def plain(self, cfg: DictConfig, values: Sequence[Any]) -> dict[str, Any]:
        """``fill``'s config as a plain container: this one's with the values as ``cfg`` typed them (converting
        the whole config cost as much as filling it). Only the mappings on the filled keys' paths are new; the
        rest is the template's own, for a reader that copies before it changes anything (``plan.identity``)."""
        out = dict(self._container)
        for o in values:
            *parents, leaf = o.key_or_group.split(".")
            node = out
            for k in parents:
                child = node[k] = dict(node[k])  # a new mapping on the path, the template's left as is
                node = child
            node[leaf] = OmegaConf.select(cfg, o.key_or_group)
        return out


def interpolations(cfg: DictConfig) -> str:
    """Every interpolation string of a composed config, joined."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "${" in node:
            found.append(node)

    walk(OmegaConf.to_container(cfg, resolve=False))
    return "\n".join(found)
