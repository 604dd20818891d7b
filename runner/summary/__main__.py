"""``python -m runner.summary``."""
import sys

from runner.summary.cli import main

sys.exit(main())
