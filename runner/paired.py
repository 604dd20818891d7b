"""Paired differences of runs image by image: each run's per-image test scores from its saved logits, so that a
comparison can count the test set's own sampling (``stats.var_from_test_set``). Used by the summary and by the
tuner's sequential finals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner import rundir
from runner.metrics import per_image, per_image_column


class PerImage:
    """Each run's per-image test scores (``metrics.per_image``), read once from its saved logits and kept only when
    their mean is the run's recorded metric: a run without logits (read from a table) or whose logits are not those
    of its recorded result has none, and its comparisons speak of this test set only."""

    def __init__(self, ok: pd.DataFrame):
        self.rows = ok.set_index("run_id")
        self.cache: dict[str, dict[str, np.ndarray] | None] = {}

    def scores(self, run_id: str) -> dict[str, np.ndarray] | None:
        if run_id not in self.cache:
            folder = self.rows.at[run_id, "folder"] if "folder" in self.rows else None
            saved = rundir.read_logits(Path(folder)) if isinstance(folder, str) and folder else None
            self.cache[run_id] = None if saved is None else {
                "target": saved["test_target"].numpy(),
                **{k: v.numpy() for k, v in per_image(saved["test_logits"], saved["test_target"]).items()}}
        return self.cache[run_id]

    def differences(self, method_ids: list[str], base_ids: list[str], column: str) -> np.ndarray | None:
        """seeds × images: the method's per-image score minus the baseline's, seed by seed; None unless every
        pair has scores on the same images in the same order."""
        name = per_image_column(column)
        if name is None:
            return None
        rows = []
        for a, b in zip(method_ids, base_ids):
            sa, sb = self.scores(a), self.scores(b)
            if sa is None or sb is None or not np.array_equal(sa["target"], sb["target"]):
                return None
            for rid, s in ((a, sa), (b, sb)):
                recorded = float(self.rows.at[rid, column])
                if not abs(float(s[name].mean()) - recorded) <= 1e-6 * max(1.0, abs(recorded)):
                    return None
            rows.append(sa[name] - sb[name])
        return np.array(rows)
