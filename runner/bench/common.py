"""What the sections share: the Fashion-MNIST files, a timer and peak memory."""
from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Callable


FMNIST = "/usr/share/datasets/fashion-mnist"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak resident bytes that ``fn`` adds to the process (Linux only)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = _status_bytes("VmHWM")
    fn()
    return _status_bytes("VmHWM") - before
