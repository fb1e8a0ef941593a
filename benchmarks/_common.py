"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from pathlib import Path


def _running_here() -> int:
    """Threads of this process that are running right now (this one, spinning OpenMP workers)."""
    count = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            count += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            pass
    return count


def wait_for_idle(limit_s: float = 30.0) -> None:
    """On a shared machine, wait (at most ``limit_s``) until no other process has been running
    for three samples in a row, so that a timed run starts on idle cores. It cannot stop another
    process from starting mid-run: the scripts alternate their candidates and report medians.
    Linux only; elsewhere it returns at once."""
    deadline = time.monotonic() + limit_s
    calm = 0
    while time.monotonic() < deadline and calm < 3:
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return
        calm = calm + 1 if running - _running_here() <= 0 else 0
        time.sleep(0.2)
