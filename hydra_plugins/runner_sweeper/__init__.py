"""Hydra's basic sweeper, launching only the cells the runner planned to run.

``python -m runner -m ...`` plans every cell before Hydra starts (runner/plan.py): each is composed,
typed and validated, and a cell whose run already completed is skipped there. Hydra's own basic
sweeper would compose every cell twice more (once to check it, once to run it), about 70 ms each,
and launch the completed ones too; this subclass expands the grid the same way and hands the launcher
(basic, joblib or submitit) only the cells that ``runner.launch.TO_LAUNCH`` names.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override

from runner import launch


class PlannedSweeper(BasicSweeper):
    def setup(self, **kwargs: Any) -> None:
        super().setup(**kwargs)
        submit = self.launcher.launch

        def launch_or_say_why(*args: Any, **kw: Any) -> Any:
            try:
                return submit(*args, **kw)
            except Exception as e:  # sbatch refused the jobs (no controller, a bad partition): one line, not
                if type(e).__name__ != "FailedJobError":  # Hydra's traceback and a grid "not recorded"
                    raise
                raise launch.NotSubmitted(" ".join(str(e).split())) from None

        self.launcher.launch = launch_or_say_why  # type: ignore[method-assign]

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:  # type: ignore[override]
        if launch.CELLS is not None:  # runner.tune's trials: cells it chose, not a grid of the command line
            size = max_batch_size or len(launch.CELLS) or 1
            return [launch.CELLS[i:i + size] for i in range(0, len(launch.CELLS), size)]
        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        if launch.TO_LAUNCH is None:  # Hydra started without the runner's plan: launch every cell
            return batches
        keep = [[cell for cell in batch if tuple(cell) in launch.TO_LAUNCH] for batch in batches]
        return [batch for batch in keep if batch]

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        if launch.TO_LAUNCH is None:
            super().validate_batch_is_legal(batch)
