"""One job of a grid (a variant x a seed) as an executor runs it, wherever that is: load the
data, train, and turn whatever happens into an outcome. A job that diverges, raises or refuses
its input fails alone; the grid goes on. Only the user's stop request and a second Ctrl-C end
the grid (``JobOutcome.status == "interrupted"``). A job refused for bad input met while it ran
(``refused``) makes the run's exit code 2 once the rest of the grid has run.

What the driver (the process that owns the results store and the display) hears of a running
job goes through ``JobEvents``: started (with the checkpoint's history, so the store can catch
up after a crash), each epoch, progress within an epoch.
"""

from __future__ import annotations

import os
import platform
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from testbed import __version__, checkpoint, plugins
from testbed.assembly import component_records
from testbed.data import load_dataset
from testbed.distributed import Dist
from testbed.errors import BadInput
from testbed.experiment import Variant
from testbed.memory import freed_memory_kept, keep_freed_memory
from testbed.rundir import checkpoint_path
from testbed.seeding import job_seeds
from testbed.train import Diverged, Interrupted, JobContext, Progress, StopFlag, run_job


@dataclass(frozen=True)
class JobSpec:
    """What a process needs to run one job: everything is plain data, so it can travel."""

    variant: Variant
    seed: int
    run_dir: str
    device: str
    position: int = 0  # its place in the grid (the store lists jobs in this order)

    @property
    def key(self) -> tuple[str, int]:
        return self.variant.name, self.seed

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(Path(self.run_dir), self.variant.name, self.seed)


@dataclass
class JobOutcome:
    status: str  # ok, diverged, failed, refused (bad input met while running), interrupted
    message: str | None = None
    plugin: str | None = None  # the plugin whose code failed
    epoch: int | None = None
    step: int | None = None
    metrics: dict | None = None
    history: list | None = None  # an ok job's epoch records, so the driver's store is complete whatever came late


class JobEvents:
    """What a running job tells the driver; the base class ignores everything (DDP ranks > 0)."""

    def started(self, spec: JobSpec, history: list[dict], components: dict, environment: dict, steps: int) -> None:
        pass

    def epoch(self, spec: JobSpec, record: dict) -> None:
        pass

    def progress(self, spec: JobSpec, progress: Progress) -> None:
        pass


def environment(device: torch.device, dist: Dist) -> dict:
    return {
        "testbed": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "world_size": dist.world,
        "freed_memory_kept": freed_memory_kept(),  # testbed/memory.py
    }


def execute_job(spec: JobSpec, events: JobEvents, stop: StopFlag, dist: Dist, registry=None) -> JobOutcome:
    """Run one job to its end and say how it ended. Never raises for what happens inside the job."""
    registry = registry if registry is not None else plugins.registry()
    keep_freed_memory()  # before the first tensor of the job is allocated
    v, device = spec.variant, torch.device(spec.device)
    try:
        ckpt = spec.checkpoint
        history = checkpoint.load(ckpt, checkpoint.owner(v, spec.seed))["history"] if ckpt.exists() else []
        seeds = job_seeds(spec.seed, v.config["train"]["seed_varies"], v.config["data"]["seed"])
        data = load_dataset(v.config["data"], registry, seed=seeds["subset"])  # cached per process
        steps = max(1, len(data) // v.config["train"]["batch_size"])
        events.started(
            spec,
            history,
            component_records(v.config, registry),
            {**environment(device, dist), "seeds": seeds, "seed_varies": list(v.config["train"]["seed_varies"])},
            steps,
        )
        ctx = JobContext(
            v,
            spec.seed,
            data,
            registry,
            device,
            ckpt,
            on_epoch=lambda record: events.epoch(spec, record),
            on_progress=lambda p: events.progress(spec, p),
            stop=stop,
            dist=dist,
            seeds=seeds,
        )
        result = run_job(ctx)
    except Interrupted:
        return JobOutcome("interrupted", "stopped by the user; resume to continue")
    except KeyboardInterrupt:  # a second Ctrl-C: no safe point, the last epoch-end checkpoint stands
        return JobOutcome("interrupted", "aborted; resume restarts it from its last checkpoint")
    except Diverged as exc:
        return JobOutcome("diverged", str(exc), epoch=exc.epoch, step=exc.step)
    except BadInput as exc:  # a checkpoint testbed did not write, a component refusing what it was given
        return JobOutcome("refused", str(exc), plugin=getattr(exc, "plugin", None) or plugins.blame(exc))
    except Exception as exc:  # a component that raises fails its job, not the grid
        if os.environ.get("TESTBED_TRACEBACK"):
            traceback.print_exc()
        return JobOutcome("failed", f"{type(exc).__name__}: {exc}", plugin=plugins.blame(exc))
    result["metrics"]["classes"] = len(data.class_names)
    _add_colourfulness(result["metrics"], result["model"])
    if dist.rank == 0 and spec.seed == v.config["train"]["seeds"][0]:
        _draw_conv1(result["model"], spec)
    return JobOutcome("ok", metrics=result["metrics"], epoch=len(result["history"]), history=result["history"])


def _draw_conv1(model, spec: JobSpec) -> None:
    from testbed.plots import conv1_kernels

    try:
        conv1_kernels(
            model,
            model.plan.towers,
            Path(spec.run_dir) / "plots" / f"conv1-{spec.variant.name}.png",
            f"{spec.variant.name}: conv1 kernels (seed {spec.seed})",
        )
    except Exception as exc:  # a picture must never cost the results
        print(f"warning: conv1 plot for {spec.variant.name} failed: {exc}", file=sys.stderr, flush=True)


def _add_colourfulness(metrics: dict, model) -> None:
    """Each tower's conv1 colourfulness (testbed/analyses.py) into the job's metrics."""
    from testbed.analyses import tower_colourfulness

    try:
        metrics["conv1_colourfulness"] = tower_colourfulness(model)
    except Exception as exc:  # an analysis must never cost the results
        print(f"warning: conv1 colourfulness failed: {exc}", file=sys.stderr, flush=True)
