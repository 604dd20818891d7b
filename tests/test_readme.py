"""The README's generated parts match conf/, and the default run it shows is the default run's plan."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

from conftest import ROOT

from runner.compose import unset_nulls
from runner.plan import make_plan, make_plans


def test_the_option_tables_and_run_level_keys_are_generated_from_conf():
    res = subprocess.run([sys.executable, "scripts/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_default_run_shown_is_the_default_plan():
    block = (ROOT / "README.md").read_text().split("<!-- default-run:start -->")[1].split("<!-- default-run:end -->")[0]
    shown = set(re.findall(r"\b(?:run|ok) ([0-9a-f]{10})\b", block))
    assert shown == {make_plan([]).run_id}


def test_the_recipe_shown_is_the_recipes_plan():
    # the five-minute recipe's ids are those its grid plans today, so its output is what a new user sees
    block = (ROOT / "README.md").read_text().split("<!-- recipe:start -->")[1].split("<!-- recipe:end -->")[0]
    command = unset_nulls(shlex.split(re.search(r"python -m runner -m (.+)\n", block).group(1)))  # as the CLI does
    shown = set(re.findall(r"\b(?:run|ok|skip) ([0-9a-f]{10})\b", block))
    planned = {p.run_id for p in make_plans(command, multirun=True)}
    assert shown and shown <= planned and len(planned) == 12
