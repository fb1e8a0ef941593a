"""The run directory: what `testbed run` creates (the resolved experiment, a marker, the
store, checkpoints, plots) and where each file of it lives."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path

from testbed import __version__
from testbed.errors import BadInput
from testbed.experiment import Experiment

RUN_MARKER = "run.json"
EXPERIMENT_NAME = "experiment.json"
STORE_NAME = "results.sqlite"
LOCK_NAME = ".lock"
TMP_MARK = ".tmp-"  # testbed.checkpoint.save writes ".<name>.tmp-<pid>" and renames it


def default_run_dir(experiment: Experiment) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{experiment.name}-{stamp}"


def checkpoint_path(run_dir: Path, variant: str, seed: int) -> Path:
    return Path(run_dir) / "checkpoints" / variant / f"seed-{seed}.pt"


class RunLock:
    """An exclusive advisory lock (``fcntl.flock``) on a file in the run directory, held by the one
    process that writes the run (the driver: `testbed run` or `testbed resume`). The kernel
    releases it when that process ends, however it ends, so a crashed run never stays locked.
    A second writer is refused with exit 2, naming the process that holds it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock, as before
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace")
            os.close(fd)
            raise BadInput(
                f"{self.path.parent}: in use by another testbed process ({_describe(holder)}); wait for it to end, "
                f"or stop it (Ctrl-C) and then `testbed resume {self.path.parent}`",
                file=str(self.path.parent),
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "argv": sys.argv}).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}: {' '.join(info['argv'])[:120]}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


def remove_stale_temp_files(run_dir: Path) -> int:
    """Checkpoint temp files left by a process killed in mid-write (the rename never came).
    Only the lock's holder calls this, so no temp file can belong to a live writer."""
    stale = list((Path(run_dir) / "checkpoints").glob(f"*/.*{TMP_MARK}*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def prepare_run_dir(run_dir: Path, experiment: Experiment, force: bool) -> None:
    try:
        _prepare_run_dir(run_dir, experiment, force)
    except OSError as exc:  # a file in the way, no permission, a full disk
        raise BadInput(f"--out {run_dir}: cannot write the run directory ({exc.strerror or exc})") from None


def _prepare_run_dir(run_dir: Path, experiment: Experiment, force: bool) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        if not run_dir.is_dir():
            raise BadInput(f"--out {run_dir}: exists and is not a folder")
        if not force:
            raise BadInput(
                f"--out {run_dir}: already holds a run; continue it with `testbed resume {run_dir}`, or pass --force to start over"
            )
        if not (run_dir / RUN_MARKER).is_file():
            raise BadInput(f"--out {run_dir}: not empty and not a testbed run; --force only replaces runs, choose another folder")
        with RunLock(run_dir):  # never delete a run that another process is writing
            shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_experiment(run_dir, experiment)
    source = Path(experiment.path)
    if source.is_file():
        shutil.copyfile(source, run_dir / "experiment.toml")
    marker = {"testbed": __version__, "created": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
    (run_dir / RUN_MARKER).write_text(json.dumps(marker, indent=2))


def write_experiment(run_dir: Path, experiment: Experiment) -> None:
    """The resolved experiment, every variant in full (what `report` and `resume` read back)."""
    (Path(run_dir) / EXPERIMENT_NAME).write_text(json.dumps(experiment.to_json(), indent=2))
