"""Trackers: where a run's numbers go besides the store (TensorBoard, MLflow, a plugin's W&B).

A tracker is a component kind (``register_trackers``). Trackers run in the driver, the one
process that writes the store, and are fed what the driver hears from the executor: a job
started, each epoch's record, a job finished. So they see the same thing whether jobs run
serially or on a Dask cluster, and ``testbed export`` can replay a finished run's store into
any of them (``replay``). Trackers never decide a run's fate: a tracker that raises is reported
once, on the display, and is not called again; training goes on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import BadInput


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker learns when a run (or its resumption, or an export) starts."""

    experiment: str
    run_dir: Path
    command: list[str]  # the command line that produced the run
    variants: list[str]  # in table order, the baseline first
    testbed_version: str = ""
    kind: str = "run"  # run (new), resume (a run with jobs that started before), export (replayed from the store)


@dataclass(frozen=True)
class TrackedJob:
    """One job: ``params`` is the variant's resolved configuration as flat dotted keys
    (``model.activation = "relu"``, ``train.optimizer.lr = 0.01``) plus the seed; ``components``
    the resolved components with plugin and version (``assembly.component_records``)."""

    variant: str
    seed: int
    params: dict
    components: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int]:
        return self.variant, self.seed


class Tracker:
    """The contract of a tracker component: every method may be left as is (a no-op).

    Called from the driver's thread, in this order: ``run_started`` once, then per job
    ``job_started`` (``history``: the epochs it already has when resumed from a checkpoint, so a
    tracker can write them again), ``epoch`` once per finished epoch, ``job_finished`` (status
    ``ok``, ``diverged``, ``failed``, ``refused`` or ``interrupted``; ``metrics`` the final ones of
    an ok job), and ``run_finished`` once (the run's status: ok, failed, incomplete)."""

    def run_started(self, run: TrackedRun) -> None:
        pass

    def job_started(self, job: TrackedJob, history: list[dict]) -> None:
        pass

    def epoch(self, job: TrackedJob, record: dict) -> None:
        pass

    def job_finished(self, job: TrackedJob, status: str, metrics: dict | None) -> None:
        pass

    def run_finished(self, status: str) -> None:
        pass


def flat_params(config: dict, seed: int) -> dict:
    """A variant's resolved config as dotted keys of scalars: a component is its name under its
    slot and its parameters under ``slot.param``; lists are written as text."""
    out: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(prefix if key == "name" else f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)):
            out[prefix] = ", ".join(str(v["name"] if isinstance(v, dict) and "name" in v else v) for v in value)
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    for key, inner in item.items():
                        if key != "name":
                            walk(f"{prefix}.{i}.{key}", inner)
        else:
            out[prefix] = value

    for section, keys in config.items():
        for key, value in keys.items():
            walk(f"{section}.{key}", value)
    out["seed"] = seed
    return out


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number of an epoch record (nested tables as ``a/b``), not the epoch itself."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in ("epoch", "variant", "seed") and not prefix:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class Trackers:
    """The run's trackers behind one guard each: the first exception of a tracker is reported
    through ``say`` (one line naming it and its plugin) and the tracker is dropped."""

    def __init__(self, named: list[tuple[str, str, Tracker]], say: Callable[[str], None]):
        self.active = list(named)  # (name, plugin, tracker)
        self.say = say
        self.failed: list[str] = []  # the lines reported, in order

    def __bool__(self) -> bool:
        return bool(self.active)

    def _each(self, method: str, *args) -> None:
        for entry in list(self.active):
            name, plugin, tracker = entry
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a tracker never costs a run
                self.active.remove(entry)
                line = (
                    f"tracker '{name}' (plugin {plugin}) failed in {method} and is off for the rest of the run: {type(exc).__name__}: {exc}"
                )
                self.failed.append(line)
                self.say(line)

    def run_started(self, run: TrackedRun) -> None:
        self._each("run_started", run)

    def job_started(self, job: TrackedJob, history: list[dict]) -> None:
        self._each("job_started", job, history)

    def epoch(self, job: TrackedJob, record: dict) -> None:
        self._each("epoch", job, record)

    def job_finished(self, job: TrackedJob, status: str, metrics: dict | None) -> None:
        self._each("job_finished", job, status, metrics)

    def run_finished(self, status: str) -> None:
        self._each("run_finished", status)


def create_trackers(specs: list[dict], registry, say: Callable[[str], None], where: str = "track.use") -> Trackers:
    """Each tracker of ``specs`` (resolved component specs) made by its factory. A factory that
    refuses (a package missing, a bad URI) is bad input: exit 2 before any training."""
    named = []
    for i, spec in enumerate(specs):
        key = f"{where}[{i}]" if where == "track.use" else where
        component, params = registry.resolve("tracker", spec, key)
        tracker = component.create((), params, where=key)
        named.append((component.name, component.plugin, tracker))
    return Trackers(named, say)


def merge_specs(from_file: list[dict], names: list[str], registry) -> list[dict]:
    """The experiment's trackers plus those named by --track (a name already in the file is kept
    with the file's parameters)."""
    out = list(from_file)
    present = {spec["name"] for spec in out}
    for name in names:
        if name in present:
            continue
        component, params = registry.resolve("tracker", name, "--track")
        out.append({"name": component.name, **params})
        present.add(component.name)
    return out


def replay(store, run_dir: Path, trackers: Trackers, command: list[str]) -> int:
    """Write a finished run from its store into the trackers, as if they had followed it: every
    job that has a record, with its epochs and final metrics. Returns the jobs written."""
    from testbed import __version__

    experiment = store.experiment()
    configs = {v.name: v.config for v in experiment.variants}
    jobs = [j for j in store.jobs() if j["variant"] in configs and j["status"] != "pending"]
    if not jobs:
        raise BadInput(f"{run_dir}: no job of this run has started; nothing to export", file=str(run_dir))
    epochs: dict[tuple, list[dict]] = {}
    for row in store.epochs():
        epochs.setdefault((row["variant"], row["seed"]), []).append(row)
    trackers.run_started(TrackedRun(experiment.name, Path(run_dir), command, [v.name for v in experiment.variants], __version__, "export"))
    for job in jobs:
        tracked = TrackedJob(
            job["variant"],
            job["seed"],
            flat_params(configs[job["variant"]], job["seed"]),
            job["components"] or {},
            job["environment"] or {},
        )
        trackers.job_started(tracked, [])
        for row in epochs.get(tracked.key, []):
            trackers.epoch(tracked, {k: v for k, v in row.items() if k not in ("variant", "seed")})
        trackers.job_finished(tracked, job["status"], job["metrics"])
    statuses = {j["status"] for j in store.jobs()}
    trackers.run_finished("ok" if statuses == {"ok"} else "incomplete" if statuses & {"pending", "running", "interrupted"} else "failed")
    return len(jobs)
