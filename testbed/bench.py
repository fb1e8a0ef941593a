"""`testbed bench`: how fast each variant trains on this machine, and what limits it.

Per variant, built exactly as training builds it (``build_model``, ``build_pipeline``, the
experiment's optimizer, precision and compile setting):

- the training step alone: forward, loss, backward and optimizer update on one fixed,
  pre-made batch already on the device (images/s; best of a few chunks of steps, so that a
  busy machine's hiccups do not count);
- the data pipeline alone: uint8 batch -> device -> float -> preprocess -> augmentations, as
  ``Pipeline.train_batches`` yields them (images/s), and the train augmentations alone, each
  also as a fraction of the step time;
- the training loop as it runs (next batch from the pipeline, then a step on it): its time per
  iteration less the step's is what the pipeline really costs inside the loop (on a CPU more
  than alone: right after a backward pass the first batch's ops run slower);
- FLOPs per image, counted from the built model (forward hooks on every Conv2d and Linear:
  2 x multiply-adds, groups included, bias and elementwise layers not counted). Training
  FLOPs add, per layer, one forward's worth for the weight gradient and one for the input
  gradient where the layer's input needs one (not for conv1): about 3x forward;
- achieved FLOP/s (training FLOPs x images/s) and utilisation against this machine's peak,
  measured in the same process with the same thread count: the best of a few large matmuls
  and large 3x3 convolutions in the variant's precision (whichever library is faster here);
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the variant; on a CPU the
  process's resident-set high-water mark (VmHWM, reset before each variant where Linux
  allows it): it includes the interpreter, torch and the dataset, not only the model.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.markup import escape
from torch import nn

from testbed.data import InMemoryData, augmentation_generator, center_crop
from testbed.model import build_model
from testbed.train import build_for_training, build_pipeline, seed_everything, train_step

WARMUP_STEPS = 3
WARMUP_STEPS_COMPILED = 6
CHUNKS = 5  # the timed steps are split into this many chunks; the fastest chunk counts
NOISY = 1.25  # chunk-to-chunk or start-to-end variation beyond this: warn that the machine was busy
KEEP_BYTES = 2 * 2**30  # when all variants' training state fits in this, their steps are timed interleaved
FLOP_CONVENTION = (
    "2 x multiply-adds of every Conv2d and Linear (groups included; bias, activations, LRN, pooling "
    "not counted); training = forward + weight gradients + input gradients (none for the first layer)"
)


# ---------------------------------------------------------------------------- machine


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-thread siblings counted once)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def measure_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32, reps: int = 5) -> dict[str, float]:
    """This process's best FLOP rate, with its threads: the best of ``reps`` large square matmuls
    (2 n^3 FLOPs each; BLAS) and of ``reps`` large 3x3 convolutions (the convolution library,
    which on some CPUs, e.g. MKL on AMD, outruns the BLAS). Returns GFLOP/s per kind."""
    cpu = device.type == "cpu"
    gen = torch.Generator(device=device).manual_seed(0)

    def best(fn, flops):
        fn()  # warm-up: library initialisation, thread pool, kernel choice
        synchronize(device)
        fastest = math.inf
        for _ in range(reps):
            tick = time.perf_counter()
            fn()
            synchronize(device)
            fastest = min(fastest, time.perf_counter() - tick)
        return flops / fastest / 1e9

    n = 2048 if cpu else 8192
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    matmul = best(lambda: torch.matmul(a, b, out=out), 2.0 * n**3)
    del a, b, out
    batch, channels, side = (8, 256, 32) if cpu else (64, 256, 56)
    x = torch.randn(batch, channels, side, side, device=device, generator=gen).to(dtype)
    w = torch.randn(channels, channels, 3, 3, device=device, generator=gen).to(dtype)
    with torch.no_grad():
        conv = best(lambda: F.conv2d(x, w, padding=1), 2.0 * batch * channels * channels * 9 * side * side)
    return {"matmul": matmul, "conv3x3": conv}


class Memory:
    """Peak memory of one variant: CUDA allocator peak, or the process's RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.note = ""

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.note = "torch.cuda.max_memory_allocated during the variant"
            return
        try:  # Linux >= 4.0: "5" resets VmHWM to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.note = "process peak RSS (VmHWM) while the variant ran: interpreter, torch and data included"
        except OSError:
            self.note = "process peak RSS since start (ru_maxrss): interpreter, torch, data and earlier variants included"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------- FLOPs


def count_flops(model: nn.Module, x: torch.Tensor) -> dict:
    """Forward and training FLOPs per image of ``model`` on the batch ``x`` (see FLOP_CONVENTION).

    Counted with forward hooks on a real forward pass (grad enabled, so that each layer knows
    whether its input needs a gradient); nothing is stepped."""
    per_layer: dict[str, dict] = {}
    hooks = []

    def hook(name):
        def fn(module, inputs, output):
            inp = inputs[0]
            if isinstance(module, nn.Conv2d):
                per_out = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                macs = output.numel() * per_out
            else:
                macs = output.numel() * module.in_features
            entry = per_layer.setdefault(name, {"forward": 0, "train": 0})
            forward = 2 * macs
            entry["forward"] += forward
            entry["train"] += forward + (forward if module.weight.requires_grad else 0) + (forward if inp.requires_grad else 0)

        return fn

    for path, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(path.rsplit(".", 1)[-1] or path)))
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    b = x.shape[0]
    layers = {name: {k: v / b for k, v in entry.items()} for name, entry in per_layer.items()}
    return {
        "forward": sum(e["forward"] for e in layers.values()),
        "train": sum(e["train"] for e in layers.values()),
        "by_layer": layers,
    }


# ---------------------------------------------------------------------------- timing


def _chunk_sizes(steps: int) -> list[int]:
    steps = max(1, steps)
    chunks = min(CHUNKS, steps)
    return [steps // chunks + (1 if i < steps % chunks else 0) for i in range(chunks)]


def _time_chunk(fn, size: int, device: torch.device) -> float:
    """Seconds per call of ``size`` calls of ``fn`` (one device sync at each end)."""
    synchronize(device)
    tick = time.perf_counter()
    for _ in range(size):
        fn()
    synchronize(device)
    return (time.perf_counter() - tick) / size


def _batches(pipeline, seed: int, batch_size: int, device: torch.device):
    """Training batches forever, epoch after epoch, exactly as the training loop draws them."""
    epoch = 1
    while True:
        yield from pipeline.train_batches(epoch, seed, batch_size, augmentation_generator(device, seed, epoch))
        epoch += 1


def _augment(pipeline, x: torch.Tensor, generator) -> torch.Tensor:
    for aug in pipeline.train_augs:
        x = aug(x, generator)
    if x.shape[-1] != pipeline.input_size:
        x = center_crop(x, pipeline.input_size)
    return x.contiguous()


class VariantBench:
    """One variant built as training builds it, warmed up, with its step ready to be timed."""

    def __init__(self, variant, registry, data, device: torch.device, steps: int, console=None):
        cfg = variant.config
        train_cfg = cfg["train"]
        self.name = variant.name
        self.console = console
        self.precision = train_cfg["precision"]
        seed = train_cfg["seeds"][0]
        memory = Memory(device)
        gc.collect()
        memory.reset()

        seed_everything(seed)
        built = build_for_training(cfg, data, registry, device)
        model = built.module
        self.device = built.placement.input_device(device)
        pipeline = build_pipeline(variant, data, built, registry, self.device)
        optimizer = registry.create("optimizer", train_cfg["optimizer"], model.parameters(), key="train.optimizer")
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.notes = []
        if built.placement.distributed:
            train_model = model  # DDP needs torchrun: one process measures one replica's step
            self.notes.append("measured in one process, without DDP")
        else:
            train_model = built.placement.wrap_for_training(model, device)
        if train_cfg["compile"]:
            train_model = torch.compile(train_model)
        self.batch_size = batch_size = min(train_cfg["batch_size"], pipeline.train_size)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.plan = built.plan

        batches = _batches(pipeline, seed, batch_size, self.device)
        x, y = next(batches)  # the fixed, pre-made batch of the step timing
        self.flops = count_flops(model, x[: min(2, len(x))])
        model.train()

        def step():
            train_step(train_model, optimizer, x, y, self.precision, scaler)

        self.step = step
        if console is not None:
            console.print(f"bench {escape(self.name)}: {self.plan.geometry} {self.plan.input_size} px, batch {batch_size}, "
                          f"{self.flops['train'] / 1e9:.3f} GFLOP/image (train); warming up")
        for _ in range(WARMUP_STEPS_COMPILED if train_cfg["compile"] else WARMUP_STEPS):
            step()
        synchronize(self.device)
        self.peak_memory_mb = memory.peak_mb()
        self.memory_note = memory.note

        # The data pipeline alone: the batches the training loop would draw next, and the train
        # augmentations alone on a preprocessed batch. Timed in chunks beside the step's chunks.
        next(batches)
        self.next_batch = lambda: next(batches)

        def loop():  # what the training loop does: the next batch, then a step on it
            xb, yb = next(batches)
            train_step(train_model, optimizer, xb, yb, self.precision, scaler)

        self.loop = loop
        self.augment = None
        if isinstance(data, InMemoryData):  # streaming data: augmentation happens inside the loader's batches
            generator = augmentation_generator(self.device, seed, 1)
            raw = pipeline.preprocess.apply(data.train_images[:batch_size].to(self.device).float())
            self.augment = lambda: _augment(pipeline, raw, generator)
            self.augment()
        self.step_times: list[float] = []
        self.data_times: list[float] = []
        self.augment_times: list[float] = []
        self.loop_times: list[float] = []

    def time_chunk(self, size: int) -> None:
        """One chunk of ``size`` training steps, then as many pipeline batches and augmentations,
        then as many iterations of the training loop (batch, then step)."""
        self.step_times.append(_time_chunk(self.step, size, self.device))
        self.data_times.append(_time_chunk(self.next_batch, size, self.device))
        if self.augment is not None:
            self.augment_times.append(_time_chunk(self.augment, size, self.device))
        self.loop_times.append(_time_chunk(self.loop, size, self.device))

    def close(self) -> None:
        self.step = self.next_batch = self.augment = self.loop = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def record(self, peak_gflops: float) -> dict:
        step_s = min(self.step_times)
        data_s = min(self.data_times)
        augment_s = min(self.augment_times) if self.augment_times else None
        loop_s = min(self.loop_times)
        images_per_s = self.batch_size / step_s
        achieved = self.flops["train"] * images_per_s / 1e9
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "input_size": self.plan.input_size,
            "precision": self.precision,
            "train_images_per_s": images_per_s,
            "step_ms": 1e3 * step_s,
            "step_ms_median": 1e3 * sorted(self.step_times)[len(self.step_times) // 2],
            "data_images_per_s": self.batch_size / data_s,
            "data_ms": 1e3 * data_s,
            "augment_ms": None if augment_s is None else 1e3 * augment_s,
            "data_fraction_of_step": data_s / step_s,
            "augment_fraction_of_step": None if augment_s is None else augment_s / step_s,
            "loop_ms": 1e3 * loop_s,
            "loop_images_per_s": self.batch_size / loop_s,
            "data_fraction_in_loop": max(0.0, (loop_s - step_s) / loop_s),
            "gflops_per_image": self.flops["forward"] / 1e9,
            "train_gflops_per_image": self.flops["train"] / 1e9,
            "achieved_gflops": achieved,
            "utilisation": achieved / peak_gflops,
            "peak_memory_mb": self.peak_memory_mb,
            "parameters": self.parameters,
            "flops_by_layer": {name: round(e["forward"] / 1e9, 6) for name, e in self.flops["by_layer"].items()},
            "notes": self.notes,
        }


def bench_experiment(experiment, registry, data: dict, device, steps: int = 20, console=None) -> dict:
    """Benchmark every variant of ``experiment`` (``data``: variant name -> its dataset, from
    ``load_dataset``). Returns the JSON document of `testbed bench --json`.

    When every variant's training state fits in memory together (``KEEP_BYTES``), the timings
    are interleaved: round after round, each variant runs one chunk of steps, so that a busy
    machine slows all variants alike and their ratios stay meaningful. Otherwise each variant
    is timed right after its warm-up and freed before the next is built."""
    from testbed.errors import BadInput

    device = torch.device(device)
    if steps < 1:
        raise BadInput(f"--steps {steps}: expected at least 1")
    precisions = sorted({v.config["train"]["precision"] for v in experiment.variants})
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if console is not None:
        console.print(f"bench: measuring the peak ({'/'.join(precisions)} matmul and convolution on {device}, {torch.get_num_threads()} threads)")
    # Measured now, between the chunks and again at the end (the best counts), so that a busy
    # moment during one measurement does not inflate every utilisation.
    measured = {p: measure_peak_gflops(device, dtypes[p]) for p in precisions}
    first_measured = {p: dict(m) for p, m in measured.items()}
    peaks = {p: max(m.values()) for p, m in measured.items()}

    def probe_peaks():  # a few more peak measurements between chunks: the best of all counts
        for p in precisions:
            probe = measure_peak_gflops(device, dtypes[p], reps=2)
            measured[p] = {k: max(v, probe[k]) for k, v in measured[p].items()}
            peaks[p] = max(measured[p].values())

    sizes = _chunk_sizes(steps)
    interleaved = sum(_state_bytes(v, registry, data[v.name]) for v in experiment.variants) <= KEEP_BYTES
    kept: list[VariantBench] = []
    records: dict[str, dict] = {}
    for v in experiment.variants:
        vb = VariantBench(v, registry, data[v.name], device, steps, console)
        memory_note = vb.memory_note
        if interleaved:
            kept.append(vb)
            continue
        for n in sizes:
            vb.time_chunk(n)
        probe_peaks()
        records[vb.name] = vb.record(peaks[vb.precision])
        vb.close()
        _report(console, records[vb.name])
        del vb
    for r, n in enumerate(sizes):
        for vb in kept if r % 2 == 0 else reversed(kept):
            vb.time_chunk(n)
        if kept:
            probe_peaks()
    for vb in kept:
        vb.close()  # frees the batch and the model's state; the timings stay
    again_measured = {}
    for p in precisions:
        again = again_measured[p] = measure_peak_gflops(device, dtypes[p])
        measured[p] = {k: max(v, again[k]) for k, v in measured[p].items()}
        peaks[p] = max(measured[p].values())
    for vb in kept:
        records[vb.name] = vb.record(peaks[vb.precision])
        _report(console, records[vb.name])
    for r in records.values():
        r["utilisation"] = r["achieved_gflops"] / peaks[r["precision"]]
    variants = [records[v.name] for v in experiment.variants]
    base = records.get("baseline", variants[0])
    for r in variants:
        r["step_time_vs_baseline"] = r["step_ms"] / base["step_ms"]
    cores = physical_cores()
    threads = torch.get_num_threads()
    timing = (f"{steps} timed steps per variant after {WARMUP_STEPS} warm-up steps, on one fixed batch already on the device, "
              f"in {len(sizes)} chunks of which the fastest counts; the pipeline and the augmentations timed the same way, "
              f"chunk beside chunk; " + ("chunks interleaved across variants" if interleaved else "variants timed one after another"))
    doc = {
        "experiment": experiment.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": threads,
        "physical_cores": cores,
        "steps": steps,
        "peak_gflops": peaks.get("fp32", next(iter(peaks.values()))),
        "peak_gflops_by_precision": peaks,
        "peak_measurements_gflops": measured,
        "flop_convention": FLOP_CONVENTION,
        "timing": timing,
        "interleaved": interleaved,
        "memory": memory_note + ("; the variants built before it stay alive (their steps are timed interleaved)" if len(kept) > 1 else ""),
        "variants": variants,
    }
    drift = [max(first_measured[p].values()) / max(again_measured[p].values()) for p in precisions]
    doc["noise"] = {
        "step_spread_max": max(r["step_ms_median"] / r["step_ms"] for r in variants),  # median chunk / fastest chunk
        "peak_drift_max": max(max(d, 1 / d) for d in drift),  # peak at the start vs at the end, either way
    }
    if console is not None and max(doc["noise"].values()) > NOISY:
        console.print(f"[yellow]bench: timings varied by more than {100 * (NOISY - 1):.0f}% between chunks or between the peak "
                      f"measurements: something else was running; compare ratios only from a quiet rerun[/yellow]")
    if device.type == "cpu" and threads != cores and console is not None:
        console.print(f"[yellow]bench: torch uses {threads} threads on {cores} physical cores[/yellow]")
    return doc


def _state_bytes(variant, registry, data) -> int:
    """Bytes of a variant's training state (weights, gradients, momentum, slack), from a
    shape-only build on the meta device."""
    with torch.device("meta"):
        built = build_model(variant.config["model"], len(data.class_names), data.image_size, registry, device=None)
    return 16 * sum(p.numel() for p in built.module.parameters())


def _report(console, r: dict) -> None:
    if console is None:
        return
    console.print(
        f"bench {escape(r['name'])}: step {r['step_ms']:.1f} ms ({r['train_images_per_s']:.0f} img/s), data "
        f"{r['data_ms']:.2f} ms ({100 * r['data_fraction_of_step']:.1f}% of a step), "
        f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['utilisation']:.1f}% of peak"
    )


def render_bench(doc: dict, console) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal and not console.record and console.width < 220:  # a file or a log: the whole table
        console = Console(file=console.file, width=max(console.width, 220))

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    table = Table(
        title=f"{doc['experiment']}: training-step and data-pipeline throughput on {doc['device']} ({doc['device_name']})",
        title_justify="left",
    )
    for name, justify in [
        ("variant", "left"), ("batch", "right"), ("step ms", "right"), ("train img/s", "right"), ("vs baseline", "right"),
        ("data img/s", "right"), ("data % of step", "right"), ("augment % of step", "right"), ("loop img/s", "right"),
        ("data % in loop", "right"), ("GFLOP/img fwd", "right"),
        ("GFLOP/img train", "right"), ("GFLOP/s", "right"), ("utilisation", "right"), ("peak MB", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in doc["variants"]:
        table.add_row(
            r["name"], str(r["batch_size"]), num(r["step_ms"], ".1f"), num(r["train_images_per_s"], ".0f"),
            num(r.get("step_time_vs_baseline"), ".2f") + "x", num(r["data_images_per_s"], ".0f"),
            num(100 * r["data_fraction_of_step"], ".1f"),
            "-" if r["augment_fraction_of_step"] is None else num(100 * r["augment_fraction_of_step"], ".1f"),
            num(r["loop_images_per_s"], ".0f"), num(100 * r["data_fraction_in_loop"], ".1f"),
            num(r["gflops_per_image"], ".4f"), num(r["train_gflops_per_image"], ".4f"), num(r["achieved_gflops"], ".1f"),
            num(100 * r["utilisation"], ".1f") + "%", num(r["peak_memory_mb"], ".0f"),
        )
    console.print(table)
    console.print(
        f"peak {doc['peak_gflops']:.1f} GFLOP/s (best of a large fp32 matmul and 3x3 convolution: "
        + ", ".join(f"{k} {v:.1f}" for k, v in doc["peak_measurements_gflops"].get("fp32", {}).items())
        + f"; {doc['threads']} threads, {doc['physical_cores']} physical cores); "
        f"timing: {doc['timing']}.\nFLOPs: {doc['flop_convention']}.\nmemory: {doc['memory']}."
    )
