"""Trackers: a run's numbers in TensorBoard or MLflow, as they are made (``[track] use``,
``--track``) or afterwards from the store (``testbed export DIR --to NAME``).

- ``tensorboard``: event files per job under ``<run>/tensorboard/<variant>/seed-<n>`` (or
  ``logdir``): one scalar per epoch for every number of the epoch's record, and the hparams
  plugin's record of the variant's resolved components with the job's final metrics, so
  TensorBoard's HPARAMS tab lines variants and seeds up.
- ``mlflow``: one parent run per testbed run, one nested run per job whose params are the
  variant's resolved components and whose metrics are the per-epoch values (step = epoch) and
  the final ones. By default MLflow's own tracking URI ($MLFLOW_TRACKING_URI, else MLflow's
  default: a SQLite file ``mlflow.db`` in the current folder); any URI with ``tracking_uri``.

Both packages are optional extras: ``pip install 'testbed[tensorboard]'`` / ``'testbed[mlflow]'``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from testbed import hookimpl
from testbed.tracking import Tracker, scalars


def _require(modules: tuple[str, ...], extra: str, what: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(
            f"{what} needs the package(s) {', '.join(missing)}, which are not installed; install them with: pip install 'testbed[{extra}]'"
        )


def _hparam_value(value):
    """What TensorBoard's hparams plugin takes: bool, int, float or str."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return "none" if value is None else str(value)


# ---------------------------------------------------------------------------- tensorboard


class TensorBoard(Tracker):
    def __init__(self, logdir: str):
        self.logdir = logdir
        self.root: Path | None = None
        self.writers: dict[tuple, object] = {}

    def run_started(self, run):
        self.root = Path(self.logdir) if self.logdir else Path(run.run_dir) / "tensorboard"

    def job_started(self, job, history):
        from torch.utils.tensorboard import SummaryWriter

        old = self.writers.pop(job.key, None)
        if old is not None:  # restarted on another worker: a fresh file
            old.close()
        # purge_step=1: TensorBoard drops what an earlier attempt of this job wrote, and the
        # history (the checkpoint's epochs) is written again below
        writer = SummaryWriter(str(self.root / job.variant / f"seed-{job.seed}"), purge_step=1)
        self.writers[job.key] = writer
        for record in history:
            self.epoch(job, record)

    def epoch(self, job, record):
        writer = self.writers[job.key]
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, global_step=record["epoch"])
        writer.flush()

    def job_finished(self, job, status, metrics):
        from torch.utils.tensorboard.summary import hparams

        writer = self.writers.pop(job.key)
        final = {f"final/{k}": v for k, v in scalars(metrics or {}).items()}
        hparam_dict = {"variant": job.variant, "status": status, **{k: _hparam_value(v) for k, v in job.params.items()}}
        for summary in hparams(hparam_dict, final):
            writer.file_writer.add_summary(summary)
        step = int((metrics or {}).get("epochs") or 0)
        for tag, value in final.items():
            writer.add_scalar(tag, value, global_step=step)
        writer.close()

    def run_finished(self, status):
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def tensorboard(*, logdir: str = ""):
    """``logdir``: where the event files go (default: the run directory's tensorboard/)."""
    _require(("tensorboard",), "tensorboard", "the tensorboard tracker")
    return TensorBoard(logdir)


# ---------------------------------------------------------------------------- mlflow

MAX_BATCH = 100  # MLflow's log_batch takes at most 100 params and 1000 metrics per call
STATUSES = {"ok": "FINISHED", "interrupted": "KILLED"}  # anything else: FAILED


class MLflow(Tracker):
    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri or None)
        self.experiment = experiment
        self.parent: str | None = None
        self.resuming = False
        self.runs: dict[tuple, str] = {}  # job key -> its nested run's id

    def run_started(self, run):
        name = self.experiment or run.experiment
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = found.experiment_id if found is not None else self.client.create_experiment(name)
        run_dir = str(Path(run.run_dir).resolve())
        tags = {"testbed.run_dir": run_dir, "testbed.command": " ".join(run.command)[:5000], "testbed.version": run.testbed_version}
        existing = (
            self._find(f"tags.`testbed.run_dir` = '{_quoted(run_dir)}' AND tags.`testbed.kind` = 'run'") if run.kind == "resume" else None
        )
        self.resuming = existing is not None
        if existing is not None:  # a resumed run: its parent goes on
            self.parent = existing
            self.client.update_run(existing, status="RUNNING")
            return
        self.parent = self.client.create_run(
            self.experiment_id, run_name=f"{run.experiment} ({Path(run_dir).name})", tags={**tags, "testbed.kind": "run"}
        ).info.run_id

    def _find(self, query: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1)
        return runs[0].info.run_id if runs else None

    def job_started(self, job, history):
        from mlflow.entities import Param

        label = f"{job.variant}/seed-{job.seed}"
        existing = (
            self._find(f"tags.`mlflow.parentRunId` = '{self.parent}' AND tags.`testbed.job` = '{_quoted(label)}'")
            if self.resuming
            else None
        )
        if existing is not None:  # resumed: its earlier epochs are there already (params are logged again: the same values)
            run_id, history = existing, []
            self.client.update_run(existing, status="RUNNING")
        else:
            tags = {"mlflow.parentRunId": self.parent, "testbed.job": label, "testbed.variant": job.variant, "testbed.seed": str(job.seed)}
            run_id = self.client.create_run(self.experiment_id, run_name=f"{job.variant} seed {job.seed}", tags=tags).info.run_id
        self.runs[job.key] = run_id
        params = [Param(k, str(v)[:6000]) for k, v in job.params.items()]
        params += [
            Param(f"plugin.{slot}", f"{c['plugin']} {c['version']}".strip()) for slot, c in job.components.items() if isinstance(c, dict)
        ]
        for i in range(0, len(params), MAX_BATCH):
            self.client.log_batch(run_id, params=params[i : i + MAX_BATCH])
        for record in history:
            self.epoch(job, record)

    def _log(self, run_id: str, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i : i + 1000])

    def epoch(self, job, record):
        self._log(self.runs[job.key], scalars(record), int(record["epoch"]))

    def job_finished(self, job, status, metrics):
        run_id = self.runs.pop(job.key)
        self._log(run_id, {f"final.{k}": v for k, v in scalars(metrics or {}).items()}, int((metrics or {}).get("epochs") or 0))
        self.client.set_tag(run_id, "testbed.status", status)
        self.client.set_terminated(run_id, STATUSES.get(status, "FAILED"))

    def run_finished(self, status):
        if self.parent is not None:
            self.client.set_tag(self.parent, "testbed.status", status)
            self.client.set_terminated(self.parent, {"ok": "FINISHED", "incomplete": "KILLED"}.get(status, "FAILED"))


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def mlflow(*, tracking_uri: str = "", experiment: str = ""):
    """``tracking_uri``: where the runs go (default: $MLFLOW_TRACKING_URI, else MLflow's default,
    a SQLite file mlflow.db in the current folder); ``experiment``: the MLflow experiment
    (default: the testbed experiment's name)."""
    _require(("mlflow",), "mlflow", "the mlflow tracker")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:") or not uri:  # MLflow's default is a SQLite file too
        _require(("sqlalchemy", "alembic"), "mlflow", "mlflow's SQLite backend")
    return MLflow(tracking_uri, experiment)


@hookimpl
def register_trackers(register):
    register("tensorboard", tensorboard, "TensorBoard event files per job: scalars per epoch, hparams with the final metrics")
    register("mlflow", mlflow, "MLflow: a parent run per testbed run, a nested run per job (params: its components; metrics per epoch)")
