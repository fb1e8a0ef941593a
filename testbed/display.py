"""Live progress on stderr while a grid runs: jobs done, and one line per running job (its
epochs with ETA, loss, error, last test error). On a terminal a Rich progress display; in a
log file or CI one unwrapped line per event."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Display:
    def __init__(self, enabled: bool, total_jobs: int, done_jobs: int = 0):
        self.console = Console(stderr=True)
        if not self.console.is_terminal:  # a log file or CI: one unwrapped line per event
            self.console = Console(stderr=True, width=200)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.jobs = self.progress.add_task("jobs", total=total_jobs, completed=done_jobs, info="")
        self.running: dict[tuple[str, int], int] = {}  # (variant, seed) -> its task
        self.last_test: dict[tuple[str, int], str] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def say(self, markup: str) -> None:
        if self.enabled:
            self.console.print(markup)

    def start_job(self, name: str, seed: int, epochs: int, steps: int, done_epochs: int, where: str = ""):
        key = (name, seed)
        if key in self.running:  # restarted (a worker was lost): a fresh line
            self.progress.remove_task(self.running.pop(key))
        self.last_test[key] = ""
        self.running[key] = self.progress.add_task(f"{name} seed {seed}", total=epochs * steps, completed=done_epochs * steps, info="")
        if self.enabled and not self.live:
            self.console.print(f"{escape(name)} seed {seed}: training {epochs} epochs of {steps} steps{escape(where)}")

    def on_progress(self, name: str, seed: int, p):
        task = self.running.get((name, seed))
        if task is not None:
            self.progress.update(
                task,
                completed=(p.epoch - 1) * p.steps + p.step,
                info=f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f} err {100 * p.error:.1f}%{self.last_test[(name, seed)]}",
            )

    def on_epoch(self, name: str, seed: int, record: dict):
        self.last_test[(name, seed)] = f" | test top-1 {100 * record['test_top1']:.1f}%"
        if self.enabled and not self.live:
            self.console.print(
                f"  {escape(name)} seed {seed} epoch {record['epoch']}: loss {record['train_loss']:.3f} train err "
                f"{100 * record['train_error']:.1f}% test top-1 {100 * record['test_top1']:.1f}% "
                f"({record['images_per_s']:.0f} img/s)"
            )

    def finish_job(self, name: str, seed: int, status: str, message: str = ""):
        task = self.running.pop((name, seed), None)
        if task is not None:
            self.progress.remove_task(task)
        self.progress.advance(self.jobs)
        if self.enabled and (status != "ok" or not self.live):
            self.console.print(f"{escape(name)} seed {seed}: {status}{': ' + escape(message) if message else ''}")
