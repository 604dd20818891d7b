"""Grid progress while a launcher runs: ``k/N done, M running, W waiting, ETA ...``, and a line per run that
starts or ends.

The launcher (basic, joblib, submitit) runs the jobs; this thread of the command's own process only reads
the run folders every few seconds, so it sees every job wherever it runs. A run under submitit records its
log file, which is named when the run starts.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Sequence

from runner import rundir
from runner.progress import duration, say

POLL_S = 5.0


class GridProgress:
    """Start with ``with GridProgress(plans):`` around the launch; prints nothing for a single run."""

    def __init__(self, plans: Sequence[Any], poll_s: float = POLL_S) -> None:
        self.plans = list({p.run_id: p for p in plans}.values())
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="grid-progress", daemon=True)

    def __enter__(self) -> "GridProgress":
        if len(self.plans) > 1:
            # a run counts when an attempt that started after this point ends (an earlier record is not news)
            self.before = {p.run_id: (rundir.read_result(p.folder) or {}).get("started_at") for p in self.plans}
            self.started: set[str] = set()
            self.counted: set[str] = set()
            self.t0 = time.monotonic()
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()
        self.poll()

    def poll(self) -> None:
        running, ended = 0, []
        for p in self.plans:
            record = rundir.read_result(p.folder) or {}
            status, started = record.get("status"), record.get("started_at")
            fresh = started is not None and started != self.before[p.run_id]
            if status == "running":
                running += 1
                if fresh and p.run_id not in self.started and record.get("log"):  # a submitit job: say where it logs
                    self.started.add(p.run_id)
                    job = f" as SLURM job {record['slurm_job_id']}" if record.get("slurm_job_id") else ""
                    say(f"started {p.run_id} ({p.label}){job} on {record.get('host', '?')}; log: {record['log']}")
            elif status is not None and fresh and p.run_id not in self.counted:
                self.counted.add(p.run_id)
                ended.append(f"{p.run_id} {status}")
        if ended:
            done, elapsed = len(self.counted), time.monotonic() - self.t0
            left = len(self.plans) - done
            eta = f", ETA {duration(elapsed / done * left)}" if left else ""
            say(f"grid: {done}/{len(self.plans)} done ({', '.join(ended)}), {running} running, "
                f"{left - running} waiting, {duration(elapsed)} elapsed{eta}")
