"""Fault injection, for the tests of what Ctrl-C and SIGTERM do in each phase of a run.

``TESTBED_PAUSE_AT=<phase>`` makes testbed print ``testbed: paused at <phase>`` on stderr when
it reaches that phase and wait there (two minutes at most), so that a test can send a signal
while it is certainly in that phase. The phases, in order: ``start`` (the command has begun),
``load`` (before the data sets are loaded and every job checked), ``evaluate`` (a job is about
to evaluate an epoch), ``summary`` (every job has ended; the table is next), ``plots``.
Unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import os
import sys
import time

PAUSE_ENV = "TESTBED_PAUSE_AT"
PHASES = ("start", "load", "evaluate", "summary", "plots")


def phase(name: str, stop=None) -> None:
    """``stop``: a StopFlag that ends the pause (where a signal sets a flag instead of raising)."""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"testbed: paused at {name}", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (stop is not None and stop.requested):
            time.sleep(0.05)  # short sleeps: a signal handler runs between them
