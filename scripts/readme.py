"""Regenerate the README's parts that conf/ determines: the options of every group and the run-level keys.

    python scripts/readme.py          # rewrite the marked blocks of README.md
    python scripts/readme.py --check  # exit 1 if they are stale (tests/test_readme.py runs this)

Each block sits between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``. An option's description is the
first comment line of its YAML; a run-level key's is the comment beside it in conf/config.yaml.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = (
    "dataset",
    "model",
    "pooling",
    "global_pool",
    "norm",
    "loss",
    "teacher",
    "optim",
    "experiment",
    "launcher",
    "logger",
    "tune",
)


def _defaults() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]:
        if isinstance(item, dict):
            (key, value), = item.items()
            out[key] = value
    return out


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def options_block() -> str:
    defaults = _defaults()
    lines = ["| group | options (`group=option`; the default in bold) |", "|---|---|"]
    detail = ["| option | what it is (the first line of its YAML) |", "|---|---|"]
    for group in GROUPS:
        names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        shown = [f"**`{n}`**" if defaults.get(group) == n else f"`{n}`" for n in names]
        none = " (default: none)" if defaults.get(group, "x") is None else ""
        lines.append(f"| `{group}` | {', '.join(shown)}{none} |")
        detail += [f"| `{group}={n}` | {_first_comment(CONF / group / f'{n}.yaml').replace('|', '/')} |" for n in names]
    return "\n".join(
        lines + ["", "<details><summary>Every option in one line</summary>", "", *detail, "", "</details>"]
    )


def keys_block() -> str:
    lines = ["| key | default | what |", "|---|---|---|"]
    body = (CONF / "config.yaml").read_text().split("\nhydra:")[0]
    for line in body.splitlines():
        m = re.match(r"^([a-z_]+):\s*(.*?)\s+#\s*(.*)$", line)
        if m and m.group(1) != "defaults":
            lines.append(f"| `{m.group(1)}` | `{m.group(2)}` | {m.group(3).replace('|', '/')} |")
    return "\n".join(lines)


BLOCKS = {"options": options_block, "keys": keys_block}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name}:start --> … <!-- {name}:end --> block")
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    readme = ROOT / "README.md"
    old = readme.read_text()
    new = render(old)
    if "--check" in sys.argv:
        if new != old:
            print("README.md is stale: run `python scripts/readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
