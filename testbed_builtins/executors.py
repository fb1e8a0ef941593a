"""Executors: where a grid's jobs run.

- ``serial``: one job after another in the driver's process (and, under torchrun, in step on
  every rank). The default.
- ``dask``: on a Dask cluster (``dask.distributed``): a local cluster of worker processes
  started for the run (``--workers N``), or an existing one (``--scheduler tcp://HOST:8786``,
  e.g. started by dask-jobqueue on SLURM, or by ``dask scheduler`` / ``dask worker``).

Under ``dask``, each job runs ``testbed.jobs.execute_job`` on a worker and reports its events to
the driver through Dask's event log (``Worker.log_event`` / ``Client.subscribe_topic``); the
driver alone writes the results store. Checkpoints go to the run directory, which every worker
must see (a shared filesystem across machines). A worker that dies is replaced by Dask and its
job rescheduled, resuming from its last checkpoint. The driver's stop request reaches running
jobs through a Dask ``Event`` they poll about once a second.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import time
import uuid
from pathlib import Path

import torch

from testbed import hookimpl
from testbed.distributed import Dist
from testbed.errors import BadInput
from testbed.jobs import JobEvents, JobOutcome, JobSpec, execute_job
from testbed.rundir import RUN_MARKER
from testbed.runner import Executor

CONNECT_TIMEOUT_S = 10
POLL_S = 0.2  # how often the driver drains events and looks at its futures
STOP_POLL_S = 1.0  # how often a running job asks the cluster whether to stop


# ---------------------------------------------------------------------------- serial


class Serial(Executor):
    """One job after another in this process. Under torchrun every rank runs the same jobs in
    step: rank 0 decides which are left, and every rank agrees on stopping."""

    def run(self, jobs, driver, stop, dist):
        events = driver if driver is not None else JobEvents()
        for spec in jobs:
            if dist.any(stop.requested, spec.device):
                return True
            outcome = execute_job(spec, events, stop, dist)
            if driver is not None:
                driver.finished(spec, outcome)
            if outcome.status == "interrupted":
                return True
        return False


# ---------------------------------------------------------------------------- dask: the worker side


class _RemoteStop:
    """A StopFlag whose ``requested`` asks the cluster-wide Event, at most once per STOP_POLL_S
    (a round trip to the scheduler; the training loop reads it after every step)."""

    def __init__(self, event):
        self.event, self.checked, self.seen = event, -STOP_POLL_S, False

    @property
    def requested(self) -> bool:
        now = time.monotonic()
        if not self.seen and now - self.checked >= STOP_POLL_S:
            self.checked = now
            try:
                self.seen = bool(self.event.is_set())
            except Exception:  # the driver is gone: stop, keeping the checkpoint
                self.seen = True
        return self.seen


class _Relay(JobEvents):
    """A worker's side of JobEvents: every event goes to the driver through the scheduler."""

    def __init__(self, worker, topic: str):
        self.worker, self.topic = worker, topic

    def _send(self, kind: str, spec: JobSpec, **payload) -> None:
        # through JSON: Dask's event log takes plain msgpack types only (no tuples of floats' subclasses)
        msg = json.loads(json.dumps({"kind": kind, "variant": spec.variant.name, "seed": spec.seed, **payload}, default=str))
        self.worker.log_event(self.topic, msg)

    def started(self, spec, history, components, environment, steps):
        where = {"worker": self.worker.address, "pid": os.getpid()}
        self._send("started", spec, history=history, components=components, environment={**environment, **where}, steps=steps)

    def epoch(self, spec, record):
        self._send("epoch", spec, record=record)

    def progress(self, spec, progress):
        self._send("progress", spec, progress=vars(progress))


def run_on_worker(spec: JobSpec, topic: str, stop_name: str, threads: int) -> JobOutcome | None:
    """One job on a Dask worker. None: the driver asked to stop before it began."""
    from distributed import Event, get_worker

    worker = get_worker()
    stop = _RemoteStop(Event(stop_name))
    if stop.requested:
        return None
    if not (Path(spec.run_dir) / RUN_MARKER).is_file():
        return JobOutcome(
            "failed",
            f"worker {worker.address} on host {platform.node()} cannot see the run directory {spec.run_dir}: "
            f"every worker needs it at the same path, on a filesystem shared with the driver",
        )
    torch.set_num_threads(threads)
    return execute_job(spec, _Relay(worker, topic), stop, Dist())


# ---------------------------------------------------------------------------- dask: the driver side


class Dask(Executor):
    parallel = True

    def __init__(self, workers: int, scheduler: str, threads_per_worker: int):
        self.workers, self.scheduler, self.threads = workers, scheduler, threads_per_worker

    def run(self, jobs, driver, stop, dist):
        from distributed import Event

        threads = self.threads or torch.get_num_threads()  # the serial run's count: the same numbers
        cluster, client = self._connect(jobs, threads)
        try:
            inbox: queue.Queue = queue.Queue()
            topic, stop_name = f"testbed-{uuid.uuid4().hex}", f"testbed-stop-{uuid.uuid4().hex}"
            client.subscribe_topic(topic, inbox.put)  # called on the client's thread: only queue here
            stop_event = Event(stop_name, client=client)
            resources = {"GPU": 1} if any(torch.device(s.device).type == "cuda" for s in jobs) else None
            futures = {
                client.submit(
                    run_on_worker,
                    spec,
                    topic,
                    stop_name,
                    threads,
                    key=f"testbed-{spec.variant.name}-{spec.seed}-{uuid.uuid4().hex[:8]}",
                    resources=resources,
                    pure=False,
                ): spec
                for spec in jobs
            }
            return self._follow(futures, inbox, driver, stop, stop_event, jobs)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()

    def _follow(self, futures: dict, inbox, driver, stop, stop_event, jobs) -> bool:
        """Relay events to the driver and record each finished job until none is left."""
        by_key = {spec.key: spec for spec in jobs}
        stopping = False
        try:
            while futures:
                _drain(inbox, driver, by_key)
                if stop.requested and not stopping:
                    stop_event.set()
                    stopping = True
                time.sleep(POLL_S)
                _drain(inbox, driver, by_key)
                for future in [f for f in futures if f.done()]:
                    spec = futures.pop(future)
                    outcome = _outcome_of(future)
                    if outcome is not None and driver is not None:
                        driver.finished(spec, outcome)
                    stopping = stopping or (outcome is not None and outcome.status == "interrupted")
        except KeyboardInterrupt:  # a second Ctrl-C: no waiting for checkpoints, the last ones stand
            for future in futures:
                future.cancel()
            return True
        return stopping

    def _connect(self, jobs: list[JobSpec], threads: int):
        """(cluster or None, client): a local cluster started here, or the given scheduler's."""
        from distributed import Client

        if self.scheduler:
            try:
                return None, Client(self.scheduler, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise BadInput(
                    f"--scheduler {self.scheduler}: cannot reach a Dask scheduler there ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else 'timed out'}); start one with `dask scheduler`, "
                    f"or leave out --scheduler to start a local cluster"
                ) from None
        cuda = any(torch.device(s.device).type == "cuda" for s in jobs)
        cluster = local_cluster(self.workers, threads, cuda)
        return cluster, Client(cluster)


def local_cluster(workers: int, threads: int, cuda: bool):
    """A Dask cluster of ``workers`` worker processes on this machine, one job at a time each.
    On a CUDA machine worker i sees only GPU i (CUDA_VISIBLE_DEVICES) and offers the resource
    GPU=1, so that there is one job per GPU."""
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = _visible_gpus() if cuda else []
    if cuda and workers > len(gpus):
        raise BadInput(f"--workers {workers}: this machine shows {len(gpus)} GPU(s); use at most one worker per GPU")
    specs = {}
    for i in range(workers):
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        options = {"nthreads": 1, "memory_limit": 0, "silence_logs": logging.ERROR, "env": env}
        if cuda:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i]
            options["resources"] = {"GPU": 1}
        specs[f"testbed-worker-{i}"] = {"cls": Nanny, "options": options}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR)


def _visible_gpus() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _outcome_of(future) -> JobOutcome | None:
    """The job's outcome, or a failure saying what the cluster did to it."""
    try:
        return future.result()
    except Exception as exc:
        name = type(exc).__name__
        if name == "KilledWorker":
            return JobOutcome("failed", f"its worker died every time it ran ({exc}); resume to try again")
        return JobOutcome("failed", f"{name} on the cluster: {str(exc)[:300]}")


def _drain(inbox: queue.Queue, driver, by_key: dict) -> None:
    """Hand every event received so far to the driver, on this (the driver's) thread."""
    from testbed.train import Progress

    while True:
        try:
            _timestamp, msg = inbox.get_nowait()
        except queue.Empty:
            return
        spec = by_key.get((msg["variant"], msg["seed"]))
        if spec is None or driver is None:
            continue
        if msg["kind"] == "started":
            driver.started(spec, msg["history"], msg["components"], msg["environment"], msg["steps"])
        elif msg["kind"] == "epoch":
            driver.epoch(spec, msg["record"])
        elif msg["kind"] == "progress":
            driver.progress(spec, Progress(**msg["progress"]))


# ---------------------------------------------------------------------------- factories


def serial():
    return Serial()


def dask(*, workers: int = 0, scheduler: str = "", threads_per_worker: int = 0):
    """``workers``: local worker processes to start (0: the machine's physical cores divided by the
    threads per job); ``scheduler``: an existing cluster instead; ``threads_per_worker``: torch
    threads per job (0: the driver's, as a serial run uses)."""
    if workers < 0 or threads_per_worker < 0:
        raise ValueError("--workers and --threads-per-worker must be >= 0")
    if workers and scheduler:
        raise ValueError("give --workers (a local cluster started for this run) or --scheduler (an existing one), not both")
    if not scheduler and not workers:
        workers = max(1, (os.cpu_count() or 1) // max(1, threads_per_worker or torch.get_num_threads()))
    return Dask(workers, scheduler, threads_per_worker)


@hookimpl
def register_executors(register):
    register("serial", serial, "one job after another in this process (the default; under torchrun, on every rank in step)")
    register("dask", dask, "jobs in parallel on a Dask cluster: local worker processes (--workers) or a scheduler (--scheduler)")
