"""The grid: every variant x every seed, baseline first, run by an executor into a run directory.

The process that calls ``execute`` is the driver: it owns the results store (the only writer
of the SQLite file), the live display and the final table, and hears of every job through
``Driver`` (a ``JobEvents``). An executor (a component kind: ``serial`` runs the jobs one after
another in this process, ``dask`` on a Dask cluster) decides where jobs run: see ``Executor``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from testbed import distributed, rounds
from testbed.assembly import check_job
from testbed.data import load_dataset
from testbed.display import Display
from testbed.distributed import Dist
from testbed.errors import BadInput
from testbed.experiment import Experiment
from testbed.faults import phase
from testbed.jobs import JobEvents, JobOutcome, JobSpec
from testbed.results import FINISHED, Store, summarize
from testbed.rundir import RunLock, remove_stale_temp_files, write_experiment
from testbed.signals import StopSignals
from testbed.tracking import TrackedJob, TrackedRun, Trackers, create_trackers, flat_params
from testbed.train import StopFlag


@dataclass
class RunOptions:
    device: str = "auto"
    json: bool = False
    quiet: bool = False
    executor: dict = dataclasses.field(default_factory=lambda: {"name": "serial"})  # a component spec
    statistics: dict = dataclasses.field(default_factory=dict)  # confidence / correction for the summary (default: the run's)


@dataclass
class Outcome:
    doc: dict
    exit_code: int
    interrupted: bool = False


# ---------------------------------------------------------------------------- before the grid


def resolve_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInput(f"--device {name}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: no CUDA device is available here; use --device cpu")
        if dist.active:  # one GPU per process, and it must be the current one for NCCL's collectives
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def select(experiment: Experiment, only: list[str], seeds: int | None) -> Experiment:
    """Keep the baseline and the --only variants; --seeds N replaces every variant's seeds by 0..N-1."""
    variants = list(experiment.variants)
    if only:
        wanted = {experiment.variant(name).name for name in only}
        variants = [v for v in variants if v.name == "baseline" or v.name in wanted]
    if seeds is not None:
        if not 1 <= seeds <= 1000:
            raise BadInput(f"--seeds {seeds}: expected 1..1000")
        variants = [
            dataclasses.replace(v, config={**v.config, "train": {**v.config["train"], "seeds": list(range(seeds))}}) for v in variants
        ]
    return dataclasses.replace(experiment, variants=tuple(variants))


def placements(experiment: Experiment, registry) -> dict:
    """variant name -> its Placement object."""
    return {v.name: registry.create("placement", v.config["model"]["placement"], key="model.placement") for v in experiment.variants}


def distributed_from_env(experiment: Experiment, registry) -> Dist:
    return distributed.from_env(placements(experiment, registry), experiment.path)


def init_process_group(experiment: Experiment, registry, dist: Dist, device: torch.device) -> None:
    distributed.init_process_group(placements(experiment, registry), dist, device)


def validate(experiment: Experiment, registry, dist: Dist = Dist(), device: torch.device | None = None) -> None:
    """Load every variant's data and build every model shape-only, so that bad input surfaces
    before any training. A component that raises anything else fails its own job later, where
    the failure is recorded with the plugin's name, instead of stopping the grid here."""
    phase("load")
    for v in experiment.variants:
        try:
            check_job(v, load_dataset(v.config["data"], registry), registry, dist.world, device)
        except BadInput as exc:
            where = "" if v.name == "baseline" else f"variant '{v.name}': "
            raise BadInput(f"{experiment.path}: {where}{exc}", file=experiment.path) from None
        except Exception:
            continue


def check_executor(spec: dict, registry, dist: Dist) -> None:
    """The --executor options, refused before any work if wrong (an unknown executor, a bad value,
    a parallel executor under torchrun)."""
    executor = registry.create("executor", spec, key="--executor")
    if executor.parallel and dist.active:
        raise BadInput(
            f"--executor {spec['name']}: a grid of DDP jobs is not supported; under torchrun the grid runs "
            f"serially (every process trains every job together), so leave out --workers / --scheduler"
        )


def warn_untrainable(variants, registry) -> None:
    """On stderr, once per variant about to train: a geometry and width known not to train with
    its init and preprocessing (testbed/analyses.py)."""
    from testbed.analyses import known_not_to_train
    from testbed.model import geometry_for

    for v in {v.name: v for v in variants}.values():
        geometry = v.config["model"]["geometry"]
        if geometry == "auto":
            geometry = geometry_for(load_dataset(v.config["data"], registry).image_size)  # loaded (cached) by validate
        warning = known_not_to_train(v.config, geometry)
        if warning:
            print(f"warning: variant '{v.name}': {warning}", file=sys.stderr, flush=True)


def grid(experiment: Experiment, run_dir: Path, device: torch.device) -> list[JobSpec]:
    """Every job, in the order the table lists them: variant by variant, seed by seed."""
    jobs = [(v, seed) for v in experiment.variants for seed in v.config["train"]["seeds"]]
    return [JobSpec(v, seed, str(run_dir), str(device), position) for position, (v, seed) in enumerate(jobs)]


# ---------------------------------------------------------------------------- the driver


class Driver(JobEvents):
    """What the driver does as jobs report: the store follows every epoch, the display and the
    trackers too (after the store: the store is the source of truth)."""

    def __init__(self, store: Store, display: Display, trackers: Trackers | None = None):
        self.store, self.display = store, display
        self.trackers = trackers if trackers is not None else Trackers([], display.say)
        self.tracked: dict[tuple, TrackedJob] = {}

    def started(self, spec, history, components, environment, steps):
        name, seed = spec.key
        # The store's epoch rows follow the checkpoint (they may be ahead of it after a crash,
        # or belong to a deleted one).
        self.store.sync_history(name, seed, history)
        self.store.start_job(name, seed, components, environment)
        self.display.start_job(name, seed, spec.variant.config["train"]["epochs"], steps, len(history))
        if self.trackers:
            self.tracked[spec.key] = TrackedJob(name, seed, flat_params(spec.variant.config, seed), components, environment)
            self.trackers.job_started(self.tracked[spec.key], history)

    def epoch(self, spec, record):
        self.store.record_epoch(*spec.key, record)
        self.display.on_epoch(*spec.key, record)
        if spec.key in self.tracked:
            self.trackers.epoch(self.tracked[spec.key], record)

    def progress(self, spec, progress):
        self.display.on_progress(*spec.key, progress)

    def finished(self, spec: JobSpec, outcome: JobOutcome) -> None:
        name, seed = spec.key
        self.store.finish_job(
            name,
            seed,
            outcome.status,
            metrics=outcome.metrics,
            message=outcome.message,
            plugin=outcome.plugin,
            epoch=outcome.epoch,
            step=outcome.step,
        )
        shown = outcome.message or ""
        if outcome.status == "failed" and outcome.plugin and f"[plugin {outcome.plugin}]" not in shown:
            shown += f" [plugin {outcome.plugin}]"
        if outcome.history:  # the job's own record of its epochs wins over events that may arrive late
            self.store.sync_history(name, seed, outcome.history)
        if outcome.status != "interrupted":
            self.display.finish_job(name, seed, outcome.status, shown)
        if spec.key in self.tracked:
            self.trackers.job_finished(self.tracked.pop(spec.key), outcome.status, outcome.metrics)

    def say(self, markup: str) -> None:
        self.display.say(markup)


class Executor:
    """Where a grid's jobs run: the contract of an executor component.

    ``run(jobs, driver, stop, dist)`` runs every job of ``jobs`` (the unfinished ones, in grid
    order) and tells ``driver`` what happens, from the driver's own thread: ``started``,
    ``epoch``, ``progress`` while a job runs (a ``JobEvents``), then ``finished(spec, outcome)``
    once per job that ran (``jobs.execute_job`` produces both). When ``stop.requested`` turns
    true (Ctrl-C, SIGTERM) it asks every running job to stop at its next step, waits for their
    checkpoints, starts nothing new, and returns True; a job never started is simply not
    reported. It returns False when every job has ended. ``driver`` is None on the DDP ranks
    other than 0, which run the same jobs in step (only a ``parallel = False`` executor can
    run under torchrun: ``dist`` describes the processes)."""

    parallel = False  # runs jobs in other processes, several at once (then not under torchrun)

    def run(self, jobs: list[JobSpec], driver: Driver | None, stop: StopFlag, dist: Dist) -> bool:
        raise NotImplementedError


def check_trackers(experiment: Experiment, registry) -> None:
    """Every tracker made once, so that a missing package or a bad parameter is refused (exit 2)
    before any training."""
    create_trackers(list(experiment.track), registry, lambda line: None)


def execute(experiment: Experiment, run_dir: Path, registry, options: RunOptions, dist: Dist) -> Outcome:
    """Run every unfinished job of the experiment into run_dir with the options' executor; then,
    where the experiment plans rounds (``--until-resolved``), one more seed for the baseline and
    each still-inconclusive variant per round (testbed.rounds), until none is open or each has
    the maximum. Return the summary and the exit code. The run directory is locked throughout,
    and the seed lists of a round are written to it before the round starts, so an interrupted
    round resumes like any run."""
    executor = registry.create("executor", options.executor, key="--executor")
    device = resolve_device(options.device, dist)
    lock = RunLock(run_dir).acquire() if dist.rank == 0 else None
    try:
        if dist.rank == 0:
            remove_stale_temp_files(run_dir)
            write_experiment(run_dir, experiment)  # the seeds `resume --seeds` added
        outcome = _execute(experiment, run_dir, registry, executor, options, dist, device)
        while "max_seeds" in experiment.report and not outcome.interrupted:
            step = rounds.next_round(experiment, outcome.doc) if dist.rank == 0 else None
            seeds = dist.broadcast(rounds.seeds_of(step[0]) if step else None)
            if seeds is None:
                break
            experiment = rounds.with_seeds(experiment, seeds)
            if dist.rank == 0:
                write_experiment(run_dir, experiment)
                _say_round(step[1], experiment, options)
            outcome = _execute(experiment, run_dir, registry, executor, options, dist, device)
        return outcome
    finally:
        if lock is not None:
            lock.release()


def _say_round(grow: list[str], experiment: Experiment, options: RunOptions) -> None:
    if not options.quiet:
        report = experiment.report
        Console(stderr=True).print(
            f"[bold]next round[/bold]: {escape(', '.join(grow))} still inconclusive: one more seed for "
            f"the baseline and each (at most {report['max_seeds']} seeds; {report['looks']} planned looks)"
        )


def _execute(experiment: Experiment, run_dir: Path, registry, executor, options: RunOptions, dist: Dist, device: torch.device) -> Outcome:
    rank0 = dist.rank == 0
    store = Store(run_dir / "results.sqlite") if rank0 else None
    jobs = grid(experiment, run_dir, device)
    if rank0:
        for spec in jobs:
            store.add_job(*spec.key, spec.position)
    left = [spec.key for spec in jobs if store.job_status(*spec.key) not in FINISHED] if rank0 else None
    left = set(dist.broadcast(left))
    pending = [spec for spec in jobs if spec.key in left]
    if rank0:  # every check passed: the run starts here
        warn_untrainable([spec.variant for spec in pending], registry)
    display = Display(rank0 and not options.quiet, len(jobs), len(jobs) - len(pending))
    resumed = rank0 and any(store.job_status(*spec.key) != "pending" for spec in jobs)
    trackers = _start_trackers(experiment, run_dir, registry, display, resumed) if rank0 else None
    signals = StopSignals()
    signals.install(display.say if rank0 and not options.quiet else (lambda markup: None))
    try:
        with display:
            interrupted = executor.run(pending, Driver(store, display, trackers) if rank0 else None, signals.stop, dist)
    except KeyboardInterrupt:  # a second Ctrl-C between two jobs
        interrupted = True
    finally:
        signals.restore()
    if not rank0:
        return Outcome({}, 0, interrupted)
    phase("summary")
    doc = summarize(store, run_dir, **options.statistics)
    trackers.run_finished(doc["status"])
    try:
        from testbed.plots import make_learning_curves

        phase("plots")
        make_learning_curves(store, run_dir, experiment)
    except Exception as exc:  # a plot must never cost the results
        display.say(f"[yellow]learning-curve plot failed: {exc}[/yellow]")
    store.close()
    if interrupted:
        return Outcome(doc, 130, True)
    refused = any(p["status"] == "refused" for v in doc["variants"] for p in v["problems"])
    return Outcome(doc, 0 if doc["status"] == "ok" else 2 if refused else 1)


def _start_trackers(experiment: Experiment, run_dir: Path, registry, display: Display, resumed: bool) -> Trackers:
    from rich.markup import escape

    from testbed import __version__

    def say(line: str) -> None:  # shown even with --quiet or --json: the run is missing what the user asked for
        if display.enabled:
            display.say(f"[yellow]warning: {escape(line)}[/yellow]")
        else:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    trackers = create_trackers(list(experiment.track), registry, say)
    trackers.run_started(
        TrackedRun(
            experiment.name,
            Path(run_dir),
            list(sys.argv),
            [v.name for v in experiment.variants],
            __version__,
            "resume" if resumed else "run",
        )
    )
    return trackers
