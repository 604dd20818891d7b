"""The grid's progress line: what it counts as done and running, and its time estimate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runner import monitor, rundir


@dataclass
class FakePlan:
    run_id: str
    folder: Path
    label: str = "cell"


def _record(plan: FakePlan, status: str, started: str, **extra) -> None:
    rundir.write_json(plan.folder / "result.json", {"run_id": plan.run_id, "status": status, "config": {},
                                                     "choices": {}, "started_at": started} | extra)


def test_progress_counts_new_attempts_and_estimates_the_rest(tmp_path, monkeypatch, capsys):
    plans = [FakePlan(f"{i:010x}", tmp_path / "runs" / f"{i:010x}") for i in range(4)]
    for p in plans:
        p.folder.mkdir(parents=True)
    _record(plans[3], "failed", "earlier")  # a record from before this launch is not progress
    clock = iter([100.0, 130.0, 160.0, 170.0])
    monkeypatch.setattr(monitor.time, "monotonic", lambda: next(clock))
    progress = monitor.GridProgress(plans, poll_s=3600)
    progress.__enter__()  # the clock reads 100
    lock = rundir.run_lock(tmp_path, plans[1].run_id)  # a running run holds its lock (else it reads as killed)
    lock.acquire()
    try:
        _record(plans[0], "ok", "now")
        _record(plans[1], "running", "now", log="/logs/7_0_log.out", slurm_job_id="7_0", host="node1")
        progress.poll()  # 130: 1 of 4 done in 30 s, so 3 more take about 90 s
        _record(plans[1], "ok", "now")
        _record(plans[3], "failed", "later")
        progress.poll()  # 160: 3 done in 60 s, 1 left: 20 s
    finally:
        lock.release()
        progress.__exit__()  # stops the thread after a last look, which finds nothing new
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "started 0000000001 (cell) as SLURM job 7_0 on node1; log: /logs/7_0_log.out"
    assert out[1] == "grid: 1/4 done (0000000000 ok), 1 running, 2 waiting, 30s elapsed, ETA 1m30s"
    assert out[2] == "grid: 3/4 done (0000000001 ok, 0000000003 failed), 0 running, 1 waiting, 1m00s elapsed, ETA 20s"
    assert len(out) == 3


def test_a_single_run_prints_no_progress(tmp_path, capsys):
    with monitor.GridProgress([FakePlan("0000000000", tmp_path)]):
        pass
    assert capsys.readouterr().out == ""
