"""The README's generated parts match conf/, and the default run it shows is the default run's plan."""
from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

from runner.plan import make_plan


def test_the_option_tables_and_run_level_keys_are_generated_from_conf():
    res = subprocess.run([sys.executable, "scripts/readme.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_the_default_run_shown_is_the_default_plan():
    block = (ROOT / "README.md").read_text().split("<!-- default-run:start -->")[1].split("<!-- default-run:end -->")[0]
    shown = set(re.findall(r"\b(?:run|ok) ([0-9a-f]{10})\b", block))
    assert shown == {make_plan([]).run_id}
