"""One variant x one seed: build, train epoch by epoch, evaluate, checkpoint. Returns the final
metrics and the per-epoch history.

The step does no host synchronisation per batch: losses and errors accumulate on the device
and are read every ``sync_every`` steps (for the progress display and the divergence check)
and at the end of each epoch. The parts a job is made of come from testbed/assembly.py, its
evaluation from testbed/evaluation.py, its checkpoints from testbed/checkpoint.py, and the
agreement between DDP processes from testbed/distributed.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from testbed import analyses, checkpoint
from testbed.assembly import autocast, build_for_training, build_pipeline, make_optimizer
from testbed.data import augmentation_generator
from testbed.distributed import Dist
from testbed.errors import BadInput
from testbed.evaluation import EvaluationStopped, evaluate
from testbed.experiment import Variant
from testbed.faults import phase
from testbed.model import parameter_count
from testbed.seeding import job_seeds, seed_dropout, seed_everything  # noqa: F401  (seed_everything: bench's too)


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


class Interrupted(Exception):
    """The user asked to stop; a checkpoint was written at a safe point."""


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
    seeds: dict | None = None  # per source of variation (testbed/seeding.py); None: from the variant's train.seed_varies

    def __post_init__(self):
        if self.seeds is None:
            cfg = self.variant.config
            self.seeds = job_seeds(self.seed, cfg["train"]["seed_varies"], cfg["data"]["seed"])


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


@dataclass
class EpochSums:
    """What the epoch in progress has added up so far. A checkpoint written mid-epoch keeps it,
    so that a resumed epoch adds in the same order as an uninterrupted one and its numbers come
    out identical."""

    loss_sum: float = 0.0
    wrong: float = 0.0
    seen: float = 0.0
    train_s: float = 0.0


def run_job(ctx: JobContext) -> dict:
    """Train one variant with one seed to the end (resuming from ctx.checkpoint if present)."""
    return Job(ctx).run()


class Job:
    """One job's model, data, optimizer and schedule, where it stands (epoch, step, sums,
    history), and the loop that takes it to the end."""

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        cfg = ctx.variant.config
        self.train_cfg = train_cfg = cfg["train"]
        self.seeds = ctx.seeds
        seed_everything(self.seeds["init"])
        self.built = build_for_training(cfg, ctx.data, ctx.registry, ctx.device)
        self.model = self.built.module
        # same weights everywhere (DDP copies rank 0's), but each rank its own dropout masks
        seed_dropout(self.seeds, ctx.dist.rank, ctx.dist.world)
        self.input_device = self.built.placement.input_device(ctx.device)
        self.devices = {p.device for p in self.model.parameters()} | {self.input_device}  # whose RNG a checkpoint keeps
        self.pipeline = build_pipeline(ctx.variant, ctx.data, self.built, ctx.registry, self.input_device)
        self.parameters = parameter_count(self.model)
        self.optimizer = make_optimizer(train_cfg, self.built, ctx.registry)
        self.schedule = ctx.registry.create("schedule", train_cfg["schedule"], self.optimizer, train_cfg["epochs"], key="train.schedule")
        self.precision = train_cfg["precision"]
        self.scaler = torch.amp.GradScaler(ctx.device.type) if self.precision == "fp16" else None
        self.batch_size = train_cfg["batch_size"]
        if self.batch_size % ctx.dist.world:
            raise BadInput(f"train.batch_size = {self.batch_size}: must divide evenly over {ctx.dist.world} processes")
        self.history: list[dict] = []
        self.next_epoch, self.start_step = 1, 0
        self.sums = EpochSums()
        self.generator = None  # the augmentations' stream of the epoch in progress
        if ctx.checkpoint.exists():
            self.resume(checkpoint.load(ctx.checkpoint, checkpoint.owner(ctx.variant, ctx.seed)))
        self.train_model = self.built.placement.wrap_for_training(self.model, ctx.device)
        if train_cfg["compile"]:
            self.train_model = torch.compile(self.train_model)
        self.steps = self.pipeline.steps_per_epoch(self.batch_size)

    # -- checkpoint and resume -------------------------------------------------------------

    def resume(self, state: dict) -> None:
        checkpoint.unwrap(self.model).load_state_dict(state["model"])
        if "optimizer" in state:  # absent once the job has finished
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.history = list(state["history"])
        self.next_epoch, self.start_step = state["epoch"] + 1, state["step"]
        if state.get("finished"):  # stopped at the target before its last epoch: nothing left to train
            self.next_epoch = self.train_cfg["epochs"] + 1
        by_rank = state.get("rng_by_rank") or []  # each DDP rank draws its own dropout masks
        rank = self.ctx.dist.rank
        checkpoint.set_rng_state(by_rank[rank] if len(by_rank) == self.ctx.dist.world else state["rng"])
        if self.start_step:
            self.sums = EpochSums(**state["partial"])
            self.generator = augmentation_generator(self.input_device, self.seeds["augmentation"], self.next_epoch, rank)
            self.generator.set_state(state["aug_generator"])

    def save(self, epoch_done: int, step: int = 0, finished: bool = False) -> None:
        """Checkpoint after ``epoch_done`` epochs and ``step`` steps of the next. Every process
        takes part (their RNG states are gathered); rank 0 writes."""
        rng = checkpoint.rng_state(self.devices)
        by_rank = self.ctx.dist.gather(rng)
        if self.ctx.dist.rank != 0:
            return
        # A finished job is never resumed: its last checkpoint keeps the weights, not the optimizer
        # state (as large again, and a noticeable part of a short job's time to write).
        checkpoint.save(
            self.ctx.checkpoint,
            {
                **checkpoint.owner(self.ctx.variant, self.ctx.seed),  # variant, seed, config_digest
                "model": checkpoint.unwrap(self.model).state_dict(),
                **({} if finished else {"optimizer": self.optimizer.state_dict()}),
                "schedule": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "epoch": epoch_done,
                "finished": finished,
                "step": step,
                "partial": asdict(self.sums) if step else {},
                "aug_generator": self.generator.get_state() if step else torch.empty(0, dtype=torch.uint8),
                "rng": rng,
                **({"rng_by_rank": by_rank} if self.ctx.dist.active else {}),
                "history": self.history,
            },
        )

    def stuck_at_chance(self, epoch: int, train_error: float) -> bool:
        """train.stop_at_chance = N: end the job after epoch N if its training error is still at chance."""
        after = self.train_cfg["stop_at_chance"]
        return bool(after) and epoch >= after and analyses.at_chance(train_error, len(self.ctx.data.class_names))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> dict:
        for epoch in range(self.next_epoch, self.train_cfg["epochs"] + 1):
            totals, train_s = self.train_epoch(epoch)
            if self.end_epoch(epoch, totals, train_s):
                break
            if self.ctx.dist.any(self.ctx.stop.requested, self.input_device):
                raise Interrupted()
        return {
            "metrics": final_metrics(self.history, self.train_cfg["target_train_error"], self.parameters),
            "history": self.history,
            "model": self.model,
        }

    def train_epoch(self, epoch: int) -> tuple[list[float], float]:
        """The epoch's training steps (from ``start_step`` when resumed mid-epoch). Returns the
        summed [loss * images, wrong, images] over every process, and the training seconds."""
        ctx, device = self.ctx, self.input_device
        if self.generator is None:
            self.generator = augmentation_generator(device, self.seeds["augmentation"], epoch, ctx.dist.rank)
        self.train_model.train()
        loss_sum = torch.tensor(self.sums.loss_sum, device=device, dtype=torch.float64)
        wrong = torch.tensor(self.sums.wrong, device=device, dtype=torch.float64)
        seen, time_before = int(self.sums.seen), self.sums.train_s
        first_bad = torch.zeros((), dtype=torch.long, device=device)  # the first step whose loss is not finite
        bad_loss = torch.zeros((), device=device)
        tick = time.perf_counter()
        batches = self.pipeline.train_batches(
            epoch, self.seeds["order"], self.batch_size, self.generator, self.start_step, ctx.dist.rank, ctx.dist.world
        )
        for step, (x, y) in enumerate(batches, start=self.start_step + 1):
            loss, logits = train_step(self.train_model, self.optimizer, x, y, self.precision, self.scaler)
            loss = loss.detach().to(device)
            newly_bad = (first_bad == 0) & ~torch.isfinite(loss)
            first_bad = torch.where(newly_bad, step, first_bad)
            bad_loss = torch.where(newly_bad, loss.float(), bad_loss)
            loss_sum += loss.to(torch.float64) * len(y)
            wrong += (logits.detach().argmax(1).to(y.device) != y).sum()
            seen += len(y)
            if step % ctx.sync_every == 0 or step == self.steps:
                # every rank stops together, or the others would wait in the next all-reduce
                if ctx.dist.any(int(first_bad) > 0, device):
                    raise Diverged(epoch, int(first_bad) or step, float(bad_loss) if int(first_bad) else float(loss))
                ctx.on_progress(Progress(epoch, self.train_cfg["epochs"], step, self.steps, float(loss), float(wrong) / max(seen, 1)))
            # Stop mid-epoch at the user's request (at the last step, finish the epoch first). Under DDP
            # the ranks agree on stopping at the epoch's end instead, so no collective is left waiting.
            if ctx.stop.requested and step < self.steps and not ctx.dist.active:
                self.sums = EpochSums(float(loss_sum), float(wrong), seen, time_before + time.perf_counter() - tick)
                self.save(epoch - 1, step)
                raise Interrupted()
        train_s = time.perf_counter() - tick + time_before
        totals = ctx.dist.sum([float(loss_sum), float(wrong), seen], device)
        if not math.isfinite(totals[0]):
            raise Diverged(epoch, self.steps, totals[0])
        return totals, train_s

    def analyse(self, record: dict, outputs: list | None) -> None:
        """LRN's divisor statistics into the record; the final per-image outputs beside the checkpoint."""
        divisors = analyses.measure_divisors(self.model, self.pipeline, self.train_cfg["eval_batch_size"], self.precision)
        if divisors:  # LRN's effective strength, on the same first held-out batch
            record["lrn_divisor"] = divisors
        if outputs:
            test_images = getattr(self.ctx.data, "test_images", None)  # in memory: keyed by content, else by position
            analyses.save_outputs(
                analyses.outputs_path(self.ctx.checkpoint),
                torch.cat([p for p, _ in outputs]),
                torch.cat([y for _, y in outputs]),
                record["test_views"],
                analyses.image_keys(test_images) if test_images is not None else None,
            )

    def end_epoch(self, epoch: int, totals: list[float], train_s: float) -> bool:
        """Evaluate, record, step the schedule, checkpoint. True when the job is done (its last
        epoch, or the target reached with ``stop_at_target``)."""
        cfg = self.ctx.variant.config
        phase("evaluate", self.ctx.stop)
        eval_tick = time.perf_counter()
        train_error = totals[1] / max(totals[2], 1)
        reached = self.train_cfg["stop_at_target"] and train_error <= self.train_cfg["target_train_error"]
        final = epoch == self.train_cfg["epochs"] or reached or self.stuck_at_chance(epoch, train_error)
        # the final softmax per test image, for the ensembles (one process: a DDP rank sees a shard)
        outputs = [] if final and not self.ctx.dist.active else None
        # The configured test views (the paper's ten-crop) at the last epoch; the centre patch before.
        # The plain module, not the DDP or compiled wrapper: DDP would sync buffers on every forward
        # (ranks can have unequal test batches) and compiled graphs ignore the probe's hooks.
        try:  # a stop request during evaluation (a single process only: DDP ranks stop at epoch ends together)
            top1, top5, saturation = evaluate(
                self.model,
                self.pipeline,
                self.train_cfg["eval_batch_size"],
                self.precision,
                self.ctx.dist,
                final,
                probe=True,
                stop=None if self.ctx.dist.active else self.ctx.stop,
                keep=outputs,
            )
        except EvaluationStopped:
            # every step of the epoch is done: checkpoint as "all steps, not yet evaluated"; resume evaluates
            self.sums = EpochSums(totals[0], totals[1], totals[2], train_s)
            self.save(epoch - 1, self.steps)
            raise Interrupted() from None
        record = {
            "epoch": epoch,
            "train_loss": totals[0] / max(totals[2], 1),
            "train_error": train_error,
            "test_top1": top1,
            "test_top5": top5,
            "test_views": cfg["augment"]["test"]["name"] if final else "center",
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_s": train_s,
            "eval_s": time.perf_counter() - eval_tick,
            "images": int(totals[2]),
            "images_per_s": totals[2] / train_s if train_s > 0 else None,
            "resumed_mid_epoch": bool(self.start_step),
            "skipped_unreadable": self.pipeline.skipped,  # images a streaming dataset could not read, so far
            "saturation": saturation,  # of the first held-out batch
        }
        self.analyse(record, outputs)
        self.history.append(record)
        self.schedule.step({"test_top1": top1, "test_top5": top5, "train_error": train_error, "train_loss": record["train_loss"]})
        self.sums, self.start_step, self.generator = EpochSums(), 0, None
        self.save(epoch, finished=final)
        self.ctx.on_epoch(record)
        return final
