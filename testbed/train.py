"""One variant x one seed: build, train, evaluate, checkpoint. Returns the final metrics.

The step does no host synchronisation per batch: losses and errors accumulate on the device
and are read every ``SYNC_EVERY`` steps (for the progress display and the divergence check)
and at the end of each epoch.
"""

from __future__ import annotations

import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from testbed.data import AugmentContext, Pipeline, augmentation_generator
from testbed.errors import BadInput
from testbed.experiment import Variant
from testbed.model import BuiltModel, build_model, parameter_count

CHECKPOINT_FORMAT = "testbed-checkpoint"
CHECKPOINT_VERSION = 1


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


class Interrupted(Exception):
    """The user asked to stop; a checkpoint was written at a safe point."""


class UnsafeCheckpoint(BadInput):
    """A checkpoint file that the testbed did not write (or that is damaged)."""


@dataclass
class StopFlag:
    """Set by the SIGINT/SIGTERM handler; the loop checks it after every step."""

    requested: bool = False


@dataclass
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    error: float


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    def sum(self, values: list[float], device) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


@dataclass
class JobContext:
    variant: Variant
    seed: int
    data: object  # InMemoryData | StreamingData
    registry: object
    device: torch.device
    checkpoint: Path
    on_epoch: Callable[[dict], None] = lambda record: None
    on_progress: Callable[[Progress], None] = lambda p: None
    stop: StopFlag = field(default_factory=StopFlag)
    dist: Dist = field(default_factory=Dist)
    sync_every: int = 10


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def memory_format(train_cfg: dict) -> torch.memory_format:
    """'auto' is channels-last: faster on this 2-core CPU at every geometry measured
    (benchmarks/channels_last.py: 0.65-0.91x the step time) and the layout GPU convolutions prefer."""
    return torch.contiguous_format if train_cfg["memory_format"] == "contiguous" else torch.channels_last


def build_for_training(cfg: dict, data, registry, device) -> BuiltModel:
    """The placed model in the memory format training uses."""
    built = build_model(cfg["model"], len(data.class_names), data.image_size, registry, device)
    built.module.to(memory_format=memory_format(cfg["train"]))
    return built


def build_pipeline(variant: Variant, data, built: BuiltModel, registry, device) -> Pipeline:
    cfg = variant.config
    stats = data.stats()
    preprocess = registry.create("preprocess", cfg["data"]["preprocess"], stats, key="data.preprocess")
    ctx = AugmentContext(built.plan.input_size, data.image_size, stats, preprocess.pixel_scale)
    train_augs = [registry.create("augmentation", spec, ctx, key=f"augment.train[{i}]") for i, spec in enumerate(cfg["augment"]["train"])]
    test_views = registry.create("augmentation", cfg["augment"]["test"], ctx, key="augment.test")
    return Pipeline(data, preprocess, train_augs, test_views, built.plan.input_size, device, memory_format(cfg["train"]))


# (dotted key, registry kind) of every component slot in a resolved config
COMPONENT_SLOTS = (
    ("data.dataset", "dataset"),
    ("data.preprocess", "preprocess"),
    ("model.activation", "activation"),
    ("model.normalization", "normalization"),
    ("model.pooling", "pooling"),
    ("model.init", "init"),
    ("model.placement", "placement"),
    ("augment.test", "augmentation"),
    ("train.optimizer", "optimizer"),
    ("train.schedule", "schedule"),
)


def component_records(config: dict, registry) -> dict:
    """slot -> {"name", "params", "plugin", "version"}: what a result records about its components."""

    def record(kind, spec, key):
        component, params = registry.resolve(kind, spec, key)
        return {"name": component.name, "params": params, "plugin": component.plugin, "version": component.version}

    out = {}
    for key, kind in COMPONENT_SLOTS:
        section, slot = key.split(".")
        out[slot if section != "augment" else "augment.test"] = record(kind, config[section][slot], key)
    out["augment.train"] = [record("augmentation", spec, f"augment.train[{i}]") for i, spec in enumerate(config["augment"]["train"])]
    return out


def check_job(variant: Variant, data, registry) -> None:
    """Create every component of a job without training (the model shape-only on the meta device),
    so that a bad parameter of any component is refused before the grid starts."""
    cfg = variant.config
    with torch.device("meta"):
        built = build_model(cfg["model"], len(data.class_names), data.image_size, registry, device=None)
    pipeline = build_pipeline(variant, data, built, registry, "cpu")
    if pipeline.train_size < cfg["train"]["batch_size"]:
        raise BadInput(f"train.batch_size = {cfg['train']['batch_size']}: larger than the {pipeline.train_size} training images")
    optimizer = registry.create("optimizer", cfg["train"]["optimizer"], built.module.parameters(), key="train.optimizer")
    registry.create("schedule", cfg["train"]["schedule"], optimizer, cfg["train"]["epochs"], key="train.schedule")


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, precision: str = "fp32", scaler=None):
    """One training step: forward, cross-entropy, backward, optimizer update. No host sync.

    Returns (loss, logits), still on the device."""
    with autocast(precision, x.device):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y.to(logits.device))
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, logits


class SaturationProbe:
    """Per activation layer, the fraction of outputs in the flat part of the curve, over the forward
    passes made while it is open. Only activations that define ``saturation(y)`` are measured."""

    def __init__(self, model):
        self.fractions: dict[str, list] = {}
        self.hooks = [
            module.register_forward_hook(self._hook(path.rsplit(".", 1)[-1]))
            for path, module in model.named_modules()
            if hasattr(module, "saturation")
        ]

    def _hook(self, name):
        def hook(module, _inputs, out):
            self.fractions.setdefault(name, []).append(module.saturation(out.float()).float().mean())

        return hook

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def result(self) -> dict:
        return {name: round(float(torch.stack(v).mean()), 6) for name, v in self.fractions.items()}


def evaluate(model, pipeline: Pipeline, batch_size: int, precision: str, dist: Dist, views: bool = True, probe: bool = False):
    """(top-1 error, top-5 error, saturation) on the held-out set, softmax averaged over the test
    views (``views=False``: the centre patch only). With ``probe``, the saturation statistics of
    the first batch (see SaturationProbe), else {}."""
    model.eval()
    wrong1 = wrong5 = seen = 0
    saturation = SaturationProbe(model) if probe else None
    try:
        with torch.inference_mode(), autocast(precision, pipeline.device):
            for views, labels in pipeline.test_batches(batch_size, dist.rank, dist.world, views):
                b = views.shape[1]
                # one view at a time: a forward pass over all ten views at once is slower on a CPU
                fmt = pipeline.memory_format
                probs = model(views[0].contiguous(memory_format=fmt)).float().softmax(-1)
                if saturation is not None:
                    saturation.close()  # one batch is enough for a fraction
                for view in views[1:]:
                    probs += model(view.contiguous(memory_format=fmt)).float().softmax(-1)
                probs /= views.shape[0]
                k = min(5, probs.shape[-1])
                top = probs.topk(k, dim=-1).indices
                hit1 = top[:, 0] == labels
                hit5 = (top == labels.unsqueeze(1)).any(1)
                wrong1 += (~hit1).sum()
                wrong5 += (~hit5).sum()
                seen += b
    finally:
        if saturation is not None:
            saturation.close()
    wrong1, wrong5, seen = dist.sum([float(wrong1), float(wrong5), float(seen)], pipeline.device)
    if seen == 0:
        raise BadInput("the held-out set is empty")
    return wrong1 / seen, wrong5 / seen, saturation.result() if saturation is not None else {}


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy

        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a machine with fewer GPUs restores what it has
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def load_checkpoint(path: Path) -> dict:
    """Load with weights_only=True: tensors and plain containers only, no code can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(
            f"{path}: refused: not a checkpoint written by testbed ({first[:160]}). Nothing in it was run. "
            f"Delete it to restart this job from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UnsafeCheckpoint(f"{path}: refused: not a testbed checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if state.get("version") != CHECKPOINT_VERSION:
        raise UnsafeCheckpoint(f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    return state


def _state_module(model):
    return model.module if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module) else model


def final_metrics(history: list[dict], target: float, parameters: int) -> dict:
    last = history[-1]
    reached = next((r for r in history if r["train_error"] <= target), None)
    images = sum(r["images"] for r in history)
    train_time = sum(r["train_s"] for r in history)
    return {
        "top1_error": last["test_top1"],
        "top5_error": last["test_top5"],
        "train_error": last["train_error"],
        "train_loss": last["train_loss"],
        "epochs_to_target": reached["epoch"] if reached else None,
        "time_to_target_s": sum(r["train_s"] for r in history if r["epoch"] <= reached["epoch"]) if reached else None,
        "train_images_per_s": images / train_time if train_time > 0 else None,
        "parameters": parameters,
        "epochs": last["epoch"],
        "train_time_s": train_time,
    }


def run_job(ctx: JobContext) -> dict:
    """Train one variant with one seed to the end (resuming from ctx.checkpoint if present)."""
    cfg = ctx.variant.config
    train_cfg = cfg["train"]
    device = ctx.device
    seed_everything(ctx.seed)
    data = ctx.data
    built = build_for_training(cfg, data, ctx.registry, device)
    model = built.module
    if ctx.dist.active:  # same weights everywhere (DDP copies rank 0's), but each rank its own dropout masks
        torch.manual_seed(ctx.seed * 1_000_003 + ctx.dist.rank)
    input_device = built.placement.input_device(device)
    pipeline = build_pipeline(ctx.variant, data, built, ctx.registry, input_device)
    parameters = parameter_count(model)
    optimizer = ctx.registry.create("optimizer", train_cfg["optimizer"], model.parameters(), key="train.optimizer")
    schedule = ctx.registry.create("schedule", train_cfg["schedule"], optimizer, train_cfg["epochs"], key="train.schedule")
    precision = train_cfg["precision"]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    batch_size = train_cfg["batch_size"]
    if batch_size % ctx.dist.world:
        raise BadInput(f"train.batch_size = {batch_size}: must divide evenly over {ctx.dist.world} processes")

    history: list[dict] = []
    start_epoch, start_step = 1, 0
    partial = {"loss_sum": 0.0, "wrong": 0.0, "seen": 0.0, "train_s": 0.0}
    generator = None
    if ctx.checkpoint.exists():
        state = load_checkpoint(ctx.checkpoint)
        _state_module(model).load_state_dict(state["model"])
        if "optimizer" in state:  # absent once the job has finished
            optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch, start_step = state["epoch"] + 1, state["step"]
        if state.get("finished"):  # stopped at the target before its last epoch: nothing left to train
            start_epoch = train_cfg["epochs"] + 1
        set_rng_state(state["rng"])
        if start_step:
            partial = dict(state["partial"])
            generator = augmentation_generator(input_device, ctx.seed, start_epoch, ctx.dist.rank)
            generator.set_state(state["aug_generator"])

    train_model = built.placement.wrap_for_training(model, device)
    if train_cfg["compile"]:
        train_model = torch.compile(train_model)
    steps = pipeline.steps_per_epoch(batch_size)

    def checkpoint(epoch_done: int, step: int, gen=None, finished: bool = False):
        if ctx.dist.rank != 0:
            return
        # A finished job is never resumed: its last checkpoint keeps the weights, not the optimizer
        # state (as large again, and a noticeable part of a short job's time to write).
        save_checkpoint(
            ctx.checkpoint,
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "variant": ctx.variant.name,
                "seed": ctx.seed,
                "model": _state_module(model).state_dict(),
                **({} if finished else {"optimizer": optimizer.state_dict()}),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "epoch": epoch_done,
                "finished": finished,
                "step": step,
                "partial": partial if step else {},
                "aug_generator": gen.get_state() if (step and gen is not None) else torch.empty(0, dtype=torch.uint8),
                "rng": rng_state(),
                "history": history,
            },
        )

    for epoch in range(start_epoch, train_cfg["epochs"] + 1):
        if generator is None:
            generator = augmentation_generator(input_device, ctx.seed, epoch, ctx.dist.rank)
        train_model.train()
        # Resumed mid-epoch: carry on from the sums at the interruption, so the additions happen
        # in the same order as in an uninterrupted run and the epoch's numbers come out identical.
        loss_sum = torch.tensor(partial["loss_sum"], device=input_device, dtype=torch.float64)
        wrong = torch.tensor(partial["wrong"], device=input_device, dtype=torch.float64)
        seen = int(partial["seen"])
        time_before = partial["train_s"]
        first_step = start_step
        tick = time.perf_counter()
        for step, (x, y) in enumerate(pipeline.train_batches(epoch, ctx.seed, batch_size, generator, start_step, ctx.dist.rank, ctx.dist.world), start=start_step + 1):
            loss, logits = train_step(train_model, optimizer, x, y, precision, scaler)
            loss_sum += loss.detach().to(input_device, torch.float64) * len(y)
            wrong += (logits.detach().argmax(1).to(y.device) != y).sum()
            seen += len(y)
            if step % ctx.sync_every == 0 or step == steps:
                current = float(loss.detach())
                # every rank stops together, or the others would wait in the next all-reduce
                if ctx.dist.sum([0.0 if math.isfinite(current) else 1.0], input_device)[0] > 0:
                    raise Diverged(epoch, step, current)
                ctx.on_progress(Progress(epoch, train_cfg["epochs"], step, steps, current, float(wrong) / max(seen, 1)))
            # Stop mid-epoch at the user's request (at the last step, finish the epoch first). Under DDP
            # the ranks agree on stopping at the epoch's end instead, so no collective is left waiting.
            if ctx.stop.requested and step < steps and not ctx.dist.active:
                partial = {"loss_sum": float(loss_sum), "wrong": float(wrong), "seen": seen, "train_s": time_before + time.perf_counter() - tick}
                checkpoint(epoch - 1, step, generator)
                raise Interrupted()
        train_s = time.perf_counter() - tick + time_before
        totals = ctx.dist.sum([float(loss_sum), float(wrong), seen], input_device)
        if not math.isfinite(totals[0]):
            raise Diverged(epoch, steps, totals[0])
        eval_tick = time.perf_counter()
        # The configured test views (the paper's ten-crop) at the last epoch; the centre patch before.
        train_error = totals[1] / max(totals[2], 1)
        reached = train_cfg["stop_at_target"] and train_error <= train_cfg["target_train_error"]
        final = epoch == train_cfg["epochs"] or reached
        # The plain module, not the DDP or compiled wrapper: DDP would sync buffers on every forward
        # (ranks can have unequal test batches) and compiled graphs ignore the probe's hooks.
        top1, top5, saturation = evaluate(model, pipeline, train_cfg["eval_batch_size"], precision, ctx.dist, final, probe=True)
        record = {
            "epoch": epoch,
            "train_loss": totals[0] / max(totals[2], 1),
            "train_error": train_error,
            "test_top1": top1,
            "test_top5": top5,
            "test_views": cfg["augment"]["test"]["name"] if final else "center",
            "lr": optimizer.param_groups[0]["lr"],
            "train_s": train_s,
            "eval_s": time.perf_counter() - eval_tick,
            "images": int(totals[2]),
            "images_per_s": totals[2] / train_s if train_s > 0 else None,
            "resumed_mid_epoch": bool(first_step),
            "skipped_unreadable": pipeline.skipped,  # images a streaming dataset could not read, so far
            "saturation": saturation,  # of the first held-out batch
        }
        history.append(record)
        schedule.step({"test_top1": top1, "test_top5": top5, "train_error": record["train_error"], "train_loss": record["train_loss"]})
        partial = {"loss_sum": 0.0, "wrong": 0.0, "seen": 0.0, "train_s": 0.0}
        start_step, generator = 0, None
        checkpoint(epoch, 0, finished=final)
        ctx.on_epoch(record)
        if final:
            break
        if ctx.dist.sum([float(ctx.stop.requested)], input_device)[0] > 0:
            raise Interrupted()
    return {"metrics": final_metrics(history, train_cfg["target_train_error"], parameters), "history": history, "model": model}
