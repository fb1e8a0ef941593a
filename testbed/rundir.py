"""The run directory: what `testbed run` creates (the resolved experiment, a marker, the
store, checkpoints, plots) and where each file of it lives."""

from __future__ import annotations

import datetime
import json
import shutil
import sys
from pathlib import Path

from testbed import __version__
from testbed.errors import BadInput
from testbed.experiment import Experiment

RUN_MARKER = "run.json"
EXPERIMENT_NAME = "experiment.json"
STORE_NAME = "results.sqlite"


def default_run_dir(experiment: Experiment) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{experiment.name}-{stamp}"


def checkpoint_path(run_dir: Path, variant: str, seed: int) -> Path:
    return Path(run_dir) / "checkpoints" / variant / f"seed-{seed}.pt"


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
            raise BadInput(f"--out {run_dir}: already holds a run; continue it with `testbed resume {run_dir}`, or pass --force to start over")
        if not (run_dir / RUN_MARKER).is_file():
            raise BadInput(f"--out {run_dir}: not empty and not a testbed run; --force only replaces runs, choose another folder")
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
