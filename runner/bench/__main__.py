"""``python -m runner.bench [section ...]``: runs the sections (runner/bench/__init__.py says what each measures)."""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import runner.bench
from runner.bench.layers import norm_section, pool_section
from runner.bench.planning import plan_section, records_section
from runner.bench.seeds import seeds_section
from runner.bench.shapes import shapes_section
from runner.bench.training import epoch_section, loop_section, sweep_section, threads_section


SECTIONS = {"seeds": seeds_section, "loop": loop_section, "pool": pool_section, "norm": norm_section,
            "shapes": shapes_section, "epoch": epoch_section,
            "sweep": sweep_section, "plan": plan_section, "records": records_section, "threads": threads_section}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runner.bench", description=runner.bench.__doc__.split("\n")[0])
    parser.add_argument("sections", nargs="*", metavar="section",
                        help=f"sections to run: {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of timed things (default 3)")
    parser.add_argument(
        "--out", default="results/bench.json", help="figures are merged into this file (default %(default)s)"
    )
    args = parser.parse_args()
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    out = Path(args.out)
    figures = json.loads(out.read_text()) if out.exists() else {}
    for name in args.sections or SECTIONS:
        figures |= SECTIONS[name](args.rounds)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
