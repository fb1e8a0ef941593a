"""The grid: every variant x every seed, baseline first; resume, failure isolation, progress."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
import signal
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from testbed import __version__, plugins
from testbed.data import load_dataset
from testbed.errors import BadInput
from testbed.experiment import Experiment, Variant
from testbed.results import EXPERIMENT_NAME, FINISHED, Store, summarize
from testbed.train import Diverged, Dist, Interrupted, JobContext, StopFlag, check_job, component_records, load_checkpoint, run_job

RUN_MARKER = "run.json"


@dataclass
class RunOptions:
    device: str = "auto"
    json: bool = False
    quiet: bool = False


@dataclass
class Outcome:
    doc: dict
    exit_code: int
    interrupted: bool = False


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
        variants = [dataclasses.replace(v, config={**v.config, "train": {**v.config["train"], "seeds": list(range(seeds))}}) for v in variants]
    return dataclasses.replace(experiment, variants=tuple(variants))


def placements(experiment: Experiment, registry) -> dict:
    """variant name -> its Placement object."""
    return {v.name: registry.create("placement", v.config["model"]["placement"], key="model.placement") for v in experiment.variants}


def distributed_from_env(experiment: Experiment, registry) -> Dist:
    """torchrun sets WORLD_SIZE/RANK. Data-parallel variants need them; and under torchrun every
    variant must be data-parallel, since every process runs every job in step with the others."""
    placed = placements(experiment, registry)
    distributed = [name for name, p in placed.items() if p.distributed]
    if distributed and "RANK" not in os.environ:
        raise BadInput(
            f"{experiment.path}: variant '{distributed[0]}' uses placement 'data-parallel', which runs one process per device: "
            f"launch it with torchrun, e.g. `torchrun --standalone --nproc_per_node=2 -m testbed run {experiment.path}`"
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    others = [name for name, p in placed.items() if not p.distributed]
    if world > 1 and others:
        raise BadInput(
            f"{experiment.path}: variant '{others[0]}' is not data-parallel, but this is a torchrun launch of {world} processes; "
            f"run it without torchrun, or leave it out with --only, or give it model.placement = \"data-parallel\""
        )
    return Dist(int(os.environ.get("RANK", "0")), world)


def init_process_group(experiment: Experiment, registry, dist: Dist, device: torch.device) -> None:
    if not dist.active or torch.distributed.is_initialized():
        return
    backends = {p.process_group_backend(device) for p in placements(experiment, registry).values()}
    backend = backends.pop() if len(backends) == 1 else ("nccl" if device.type == "cuda" else "gloo")
    options = {"device_id": device} if device.type == "cuda" else {}
    torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=2), **options)


def validate(experiment: Experiment, registry) -> None:
    """Load every variant's data and build every model shape-only, so that bad input surfaces
    before any training. A component that raises anything else fails its own job later, where
    the failure is recorded with the plugin's name, instead of stopping the grid here."""
    for v in experiment.variants:
        try:
            check_job(v, load_dataset(v.config["data"], registry), registry)
        except BadInput as exc:
            where = "" if v.name == "baseline" else f"variant '{v.name}': "
            raise BadInput(f"{experiment.path}: {where}{exc}") from None
        except Exception:
            continue


def default_run_dir(experiment: Experiment) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{experiment.name}-{stamp}"


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
    (run_dir / EXPERIMENT_NAME).write_text(json.dumps(experiment.to_json(), indent=2))
    source = Path(experiment.path)
    if source.is_file():
        shutil.copyfile(source, run_dir / "experiment.toml")
    marker = {"testbed": __version__, "created": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
    (run_dir / RUN_MARKER).write_text(json.dumps(marker, indent=2))


def checkpoint_path(run_dir: Path, variant: str, seed: int) -> Path:
    return run_dir / "checkpoints" / variant / f"seed-{seed}.pt"


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
    }


class Display:
    """Live progress on stderr: jobs done, the current job's epochs with ETA, loss and error."""

    def __init__(self, enabled: bool, total_jobs: int):
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
        self.jobs = self.progress.add_task("jobs", total=total_jobs, info="")
        self.job = None
        self.last_test = ""

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def start_job(self, name: str, seed: int, epochs: int, steps: int, done_epochs: int):
        if self.job is not None:
            self.progress.remove_task(self.job)
        self.last_test = ""
        self.job = self.progress.add_task(f"{name} seed {seed}", total=epochs * steps, completed=done_epochs * steps, info="")
        self.steps = steps
        if self.enabled and not self.live:
            self.console.print(f"{name} seed {seed}: training {epochs} epochs of {steps} steps")

    def on_progress(self, p):
        self.progress.update(
            self.job,
            completed=(p.epoch - 1) * p.steps + p.step,
            info=f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f} err {100 * p.error:.1f}%{self.last_test}",
        )

    def on_epoch(self, name: str, seed: int, record: dict):
        self.last_test = f" | test top-1 {100 * record['test_top1']:.1f}%"
        if self.enabled and not self.live:
            self.console.print(
                f"  {name} seed {seed} epoch {record['epoch']}: loss {record['train_loss']:.3f} train err "
                f"{100 * record['train_error']:.1f}% test top-1 {100 * record['test_top1']:.1f}% "
                f"({record['images_per_s']:.0f} img/s)"
            )

    def finish_job(self, name: str, seed: int, status: str, message: str = ""):
        self.progress.advance(self.jobs)
        if self.enabled and (status != "ok" or not self.live):
            self.console.print(f"{name} seed {seed}: {status}{': ' + message if message else ''}")


@dataclass
class _Signals:
    stop: StopFlag = field(default_factory=StopFlag)
    previous: dict = field(default_factory=dict)

    def install(self, console: Console, quiet: bool):
        def handler(signum, _frame):
            if self.stop.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop.requested = True
            if not quiet:
                console.print("[yellow]stopping at the next safe point (a checkpoint is written); Ctrl-C again to abort now[/yellow]")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass

    def restore(self):
        for sig, old in self.previous.items():
            signal.signal(sig, old)


def execute(experiment: Experiment, run_dir: Path, registry, options: RunOptions, dist: Dist) -> Outcome:
    """Run every unfinished job of the experiment into run_dir; return the summary and exit code."""
    rank0 = dist.rank == 0
    device = resolve_device(options.device, dist)
    store = Store(run_dir / "results.sqlite") if rank0 else None
    jobs = [(v, seed) for v in experiment.variants for seed in v.config["train"]["seeds"]]
    if rank0:
        for position, (v, seed) in enumerate(jobs):
            store.add_job(v.name, seed, position)
    display = Display(rank0 and not options.quiet, len(jobs))
    signals = _Signals()
    signals.install(display.console, options.quiet or not rank0)
    interrupted = False
    try:
        with display:
            for v, seed in jobs:
                status = store.job_status(v.name, seed) if rank0 else None
                stop = signals.stop.requested
                if dist.active:  # rank 0 decides for every process, so all run the same jobs
                    status, stop = _broadcast((status, stop), dist)
                if status in FINISHED:
                    display.progress.advance(display.jobs)
                    continue
                if stop:
                    interrupted = True
                    break
                try:
                    run_one(v, seed, registry, device, run_dir, store, display, signals.stop, dist)
                except Interrupted:
                    interrupted = True
                    break
    finally:
        signals.restore()
    if not rank0:
        return Outcome({}, 0, interrupted)
    doc = summarize(store, run_dir)
    try:
        make_learning_curves(store, run_dir, experiment)
    except Exception as exc:  # a plot must never cost the results
        display.console.print(f"[yellow]learning-curve plot failed: {exc}[/yellow]")
    store.close()
    if interrupted:
        return Outcome(doc, 130, True)
    return Outcome(doc, 0 if doc["status"] == "ok" else 1)


def _broadcast(value, dist: Dist):
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def run_one(v: Variant, seed: int, registry, device, run_dir: Path, store, display: Display, stop: StopFlag, dist: Dist) -> None:
    rank0 = store is not None
    ckpt = checkpoint_path(run_dir, v.name, seed)
    done = 0
    if rank0:
        # The store's epoch rows follow the checkpoint (they may be ahead of it after a crash,
        # or belong to a deleted one).
        history = load_checkpoint(ckpt)["history"] if ckpt.exists() else []
        store.sync_history(v.name, seed, history)
        done = len(history)
        store.start_job(v.name, seed, component_records(v.config, registry), environment(device, dist))

    def on_epoch(record):
        if rank0:
            store.record_epoch(v.name, seed, record)
            display.on_epoch(v.name, seed, record)

    try:
        data = load_dataset(v.config["data"], registry)  # loaded (and cached) by validate()
        if rank0:
            steps = max(1, len(data) // v.config["train"]["batch_size"])
            display.start_job(v.name, seed, v.config["train"]["epochs"], steps, done)
        ctx = JobContext(v, seed, data, registry, device, ckpt, on_epoch=on_epoch,
                         on_progress=display.on_progress if rank0 else (lambda p: None), stop=stop, dist=dist)
        result = run_job(ctx)
    except Interrupted:
        if rank0:
            store.finish_job(v.name, seed, "interrupted", message="stopped by the user; resume to continue")
        raise
    except Diverged as exc:
        if rank0:
            store.finish_job(v.name, seed, "diverged", message=str(exc), epoch=exc.epoch, step=exc.step)
            display.finish_job(v.name, seed, "diverged", str(exc))
        return
    except KeyboardInterrupt:  # a second Ctrl-C: no safe point, the last epoch-end checkpoint stands
        if rank0:
            store.finish_job(v.name, seed, "interrupted", message="aborted; resume restarts it from its last checkpoint")
        raise Interrupted() from None
    except BadInput as exc:
        if rank0:
            store.finish_job(v.name, seed, "failed", message=str(exc), plugin=getattr(exc, "plugin", None) or plugins.blame(exc))
            display.finish_job(v.name, seed, "failed", str(exc))
        return
    except Exception as exc:  # a component that raises fails its job, not the grid
        if rank0:
            plugin = plugins.blame(exc)
            message = f"{type(exc).__name__}: {exc}"
            store.finish_job(v.name, seed, "failed", message=message, plugin=plugin)
            display.finish_job(v.name, seed, "failed", f"{message} [plugin {plugin}]")
            if os.environ.get("TESTBED_TRACEBACK"):
                traceback.print_exc()
        return
    if rank0:
        store.finish_job(v.name, seed, "ok", metrics=result["metrics"], epoch=len(result["history"]))
        display.finish_job(v.name, seed, "ok")
        if seed == v.config["train"]["seeds"][0]:
            try:
                from testbed.plots import conv1_kernels

                conv1_kernels(result["model"], result["model"].plan.towers, run_dir / "plots" / f"conv1-{v.name}.png",
                              f"{v.name}: conv1 kernels (seed {seed})")
            except Exception as exc:
                display.console.print(f"[yellow]conv1 plot for {v.name} failed: {exc}[/yellow]")


def make_learning_curves(store: Store, run_dir: Path, experiment: Experiment) -> None:
    from testbed.plots import learning_curves

    epochs = store.epochs()
    if not epochs:
        return
    target = experiment.baseline.config["train"]["target_train_error"]
    learning_curves(epochs, [v.name for v in experiment.variants], target, run_dir / "plots" / "learning-curves.png",
                    f"{experiment.name}: training error (mean over seeds)")
    if experiment.compare:
        from testbed.plots import figure1

        figure1(epochs, experiment, run_dir / "plots" / "figure1.png")


def redraw_plots(run_dir: Path, registry, console: Console) -> list[Path]:
    """Draw a run's plots again from its store and its checkpoints (`testbed report DIR --plots`)."""
    from testbed.describe import data_shape
    from testbed.model import build_model
    from testbed.plots import conv1_kernels

    store = Store.open_run(run_dir)
    try:
        experiment = store.experiment()
        make_learning_curves(store, run_dir, experiment)
    finally:
        store.close()
    drawn = sorted((run_dir / "plots").glob("*.png"))
    for v in experiment.variants:
        ckpt = checkpoint_path(run_dir, v.name, v.config["train"]["seeds"][0])
        if not ckpt.exists():
            continue
        try:
            state = load_checkpoint(ckpt)
            size, classes = data_shape(v.config["data"], registry)
            built = build_model(v.config["model"], classes, size, registry, "cpu")
            built.module.load_state_dict(state["model"])
        except Exception as exc:  # e.g. towers on GPUs this machine does not have: skip that picture
            console.print(f"[yellow]conv1 plot for {v.name} skipped: {exc}[/yellow]")
            continue
        path = run_dir / "plots" / f"conv1-{v.name}.png"
        conv1_kernels(built.module, built.plan.towers, path, f"{v.name}: conv1 kernels (seed {state['seed']})")
        drawn.append(path)
    return sorted(set(drawn))
