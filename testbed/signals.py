"""Ctrl-C and SIGTERM while a grid runs: the first asks the running job to stop at its next
step and checkpoint; a second Ctrl-C aborts at once (the last checkpoint stands)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from testbed.train import StopFlag


@dataclass
class StopSignals:
    stop: StopFlag = field(default_factory=StopFlag)
    previous: dict = field(default_factory=dict)

    def install(self, say) -> None:
        """``say(markup)`` tells the user what happens (a no-op when quiet)."""

        def handler(signum, _frame):
            if self.stop.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop.requested = True
            say("[yellow]stopping at the next safe point (a checkpoint is written); Ctrl-C again to abort now[/yellow]")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        for sig, old in self.previous.items():
            signal.signal(sig, old)
        self.previous.clear()
