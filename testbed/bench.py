"""`testbed bench`: how fast each variant trains on this machine, and what limits it.

Per variant, built exactly as training builds it (``build_model``, ``build_pipeline``, the
experiment's optimizer, precision and compile setting):

- the training step alone: forward, loss, backward and optimizer update on one fixed,
  pre-made batch already on the device (images/s; best of a few chunks of steps, so that a
  busy machine's hiccups do not count);
- the data pipeline alone: uint8 batch -> device -> float -> preprocess -> augmentations, as
  ``Pipeline.train_batches`` yields them (images/s), and the train augmentations alone, each
  also as a fraction of the step time;
- for a streaming dataset whose train_set measures it (``decode_rate``; imagefolder does), the
  images/s one CPU core decodes and resizes, and how many DataLoader workers the measured step
  rate needs; per variant, which of the step and the pipeline limits the loop;
- the training loop as it runs (next batch from the pipeline, then a step on it): its time per
  iteration less the step's is what the pipeline really costs inside the loop (on a CPU more
  than alone: right after a backward pass the first batch's ops run slower);
- FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real forward
  and backward pass of the built model (matrix products and convolutions; bias and elementwise
  layers not counted), with one correction: torch's formula for a grouped convolution's
  weight gradient counts it as if ``groups`` were 1 (conv2/4/5 of the two-tower net), so
  testbed counts that backward as one forward's worth per gradient computed. The image needs
  no gradient, so conv1 costs two forwards' worth in training, every other layer three;
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

from testbed.assembly import build_for_training, build_pipeline, make_optimizer
from testbed.data import InMemoryData, StreamingData, augmentation_generator, center_crop, workers_needed
from testbed.memory import freed_memory_kept, keep_freed_memory
from testbed.model import build_model
from testbed.seeding import seed_everything
from testbed.train import train_step

WARMUP_STEPS = 3
WARMUP_STEPS_COMPILED = 6
CHUNKS = 5  # the timed steps are split into this many chunks; the fastest chunk counts
NOISY = 1.25  # chunk-to-chunk or start-to-end variation beyond this: warn that the machine was busy
KEEP_BYTES = 2 * 2**30  # when all variants' training state fits in this, their steps are timed interleaved
FLOP_CONVENTION = (
    "torch's FlopCounterMode: 2 x multiply-adds of the convolution and linear layers (groups included; bias, "
    "activations, LRN, pooling not counted); training = forward + weight gradients + input gradients (none "
    "for the first layer), grouped convolutions' weight gradients counted per group"
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


def _conv_backward_flops(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    out_shape=None,
    **_kwargs,
) -> int:
    """One forward's worth for each gradient the backward computes (input, weight). The weight
    shape already holds in_channels / groups, so this is right for grouped convolutions too."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, depth=64, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def _by_layer(counts: dict) -> dict[str, int]:
    """FLOPs per innermost module that did any (by its last name: both towers' conv2 are "conv2")."""
    named = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global" and sum(ops.values())}
    out: dict[str, int] = {}
    for name, flops in named.items():
        if not any(other.startswith(name + ".") for other in named):
            last = name.rsplit(".", 1)[-1]
            out[last] = out.get(last, 0) + flops
    return out


def _weight_layers(model: nn.Module) -> set[str]:
    """FlopCounterMode's names of the convolution and linear layers: only their products count
    (a normalization may use a matrix product internally, e.g. the LRN's window sum)."""
    root = type(model).__name__
    return {f"{root}.{path}" for path, m in model.named_modules() if path and isinstance(m, (nn.Conv2d, nn.Linear))}


def _layer_counts(counter, layers: set[str]) -> dict:
    counts = {name: ops for name, ops in counter.get_flop_counts().items() if name in layers}
    return counts or {"all": {"total": counter.get_total_flops()}}  # names not found: count everything


def count_flops(model: nn.Module, x: torch.Tensor) -> dict:
    """Forward and training FLOPs per image of ``model`` on the batch ``x`` (see FLOP_CONVENTION):
    one forward pass, then a forward and backward pass, counted by FlopCounterMode. Gradients
    are cleared afterwards; nothing is stepped."""
    with torch.no_grad(), _flop_counter() as forward:
        model(x)
    with torch.enable_grad(), _flop_counter() as train:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    b, layers = x.shape[0], _weight_layers(model)
    fwd, trn = _layer_counts(forward, layers), _layer_counts(train, layers)
    by_layer = {name: {"forward": flops / b} for name, flops in _by_layer(fwd).items()}
    total = lambda counts: sum(sum(ops.values()) for ops in counts.values())  # noqa: E731
    return {"forward": total(fwd) / b, "train": total(trn) / b, "by_layer": by_layer}


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
    """One variant built as training builds it, warmed up, with its step, its pipeline, its
    augmentations and its training loop ready to be timed chunk by chunk."""

    def __init__(self, variant, registry, data, device: torch.device, console=None):
        cfg, train_cfg = variant.config, variant.config["train"]
        self.name, self.precision = variant.name, train_cfg["precision"]
        seed = train_cfg["seeds"][0]
        memory = Memory(device)
        gc.collect()
        memory.reset()
        seed_everything(seed)
        built = build_for_training(cfg, data, registry, device)
        self.plan, model = built.plan, built.module
        self.device = built.placement.input_device(device)
        self.pipeline = build_pipeline(variant, data, built, registry, self.device)
        self.optimizer = make_optimizer(train_cfg, built, registry)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.notes = []
        self.train_model = self._training_module(built, device, train_cfg["compile"])
        self.batch_size = min(train_cfg["batch_size"], self.pipeline.train_size)
        self.parameters = sum(p.numel() for p in model.parameters())
        self.batches = _batches(self.pipeline, seed, self.batch_size, self.device)
        self.x, self.y = next(self.batches)  # the fixed, pre-made batch of the step timing
        self.flops = count_flops(model, self.x[: min(2, len(self.x))])
        model.train()
        if console is not None:
            console.print(
                f"bench {escape(self.name)}: {self.plan.geometry} {self.plan.input_size} px, batch {self.batch_size}, "
                f"{self.flops['train'] / 1e9:.3f} GFLOP/image (train); warming up"
            )
        for _ in range(WARMUP_STEPS_COMPILED if train_cfg["compile"] else WARMUP_STEPS):
            self.step()
        synchronize(self.device)
        self.peak_memory_mb, self.memory_note = memory.peak_mb(), memory.note
        next(self.batches)
        # The train augmentations alone, on a preprocessed batch (streaming data: augmentation
        # happens inside the loader's batches, so only the whole pipeline is timed).
        self.raw = None
        if isinstance(data, InMemoryData):
            self.augment_generator = augmentation_generator(self.device, seed, 1)
            self.raw = self.pipeline.preprocess.apply(data.train_images[: self.batch_size].to(self.device).float())
            self.augment()
        self.times: dict[str, list[float]] = {"step": [], "data": [], "augment": [], "loop": []}
        # What a streaming loader can feed: one core's decoding rate, if the dataset measures it
        self.decode_per_core = data.decode_rate() if isinstance(data, StreamingData) else None
        self.workers = data.workers if isinstance(data, StreamingData) else None

    def _training_module(self, built, device, compile_it: bool):
        if built.placement.distributed:
            self.notes.append("measured in one process, without DDP")  # DDP needs torchrun: one replica's step
            module = built.module
        else:
            module = built.placement.wrap_for_training(built.module, device)
        return torch.compile(module) if compile_it else module

    def step(self) -> None:
        """The training step alone, on the fixed batch."""
        train_step(self.train_model, self.optimizer, self.x, self.y, self.precision, self.scaler)

    def next_batch(self):
        """The data pipeline alone: the batch the training loop would draw next."""
        return next(self.batches)

    def augment(self):
        return _augment(self.pipeline, self.raw, self.augment_generator)

    def loop(self) -> None:
        """What the training loop does: the next batch, then a step on it."""
        xb, yb = next(self.batches)
        train_step(self.train_model, self.optimizer, xb, yb, self.precision, self.scaler)

    def time_chunk(self, size: int) -> None:
        """One chunk of ``size`` training steps, then as many pipeline batches and augmentations,
        then as many iterations of the training loop (batch, then step)."""
        self.times["step"].append(_time_chunk(self.step, size, self.device))
        self.times["data"].append(_time_chunk(self.next_batch, size, self.device))
        if self.raw is not None:
            self.times["augment"].append(_time_chunk(self.augment, size, self.device))
        self.times["loop"].append(_time_chunk(self.loop, size, self.device))

    def close(self) -> None:
        """Free the model, its optimizer state and the batches; the timings stay."""
        self.train_model = self.optimizer = self.batches = self.x = self.y = self.raw = self.pipeline = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def record(self, peak_gflops: float) -> dict:
        step_s, data_s, loop_s = min(self.times["step"]), min(self.times["data"]), min(self.times["loop"])
        augment_s = min(self.times["augment"]) if self.times["augment"] else None
        images_per_s = self.batch_size / step_s
        achieved = self.flops["train"] * images_per_s / 1e9
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "input_size": self.plan.input_size,
            "precision": self.precision,
            "train_images_per_s": images_per_s,
            "step_ms": 1e3 * step_s,
            "step_ms_median": 1e3 * sorted(self.times["step"])[len(self.times["step"]) // 2],
            "data_images_per_s": self.batch_size / data_s,
            "data_ms": 1e3 * data_s,
            "augment_ms": None if augment_s is None else 1e3 * augment_s,
            "data_fraction_of_step": data_s / step_s,
            "augment_fraction_of_step": None if augment_s is None else augment_s / step_s,
            "loop_ms": 1e3 * loop_s,
            "loop_images_per_s": self.batch_size / loop_s,
            "data_fraction_in_loop": max(0.0, (loop_s - step_s) / loop_s),
            "limited_by": "data pipeline" if self.batch_size / data_s < images_per_s else "training step",
            "workers": self.workers,
            "decode_images_per_s_per_core": self.decode_per_core,
            "workers_needed": workers_needed(images_per_s, self.decode_per_core) if self.decode_per_core else None,
            "gflops_per_image": self.flops["forward"] / 1e9,
            "train_gflops_per_image": self.flops["train"] / 1e9,
            "achieved_gflops": achieved,
            "utilisation": achieved / peak_gflops,
            "peak_memory_mb": self.peak_memory_mb,
            "parameters": self.parameters,
            "flops_by_layer": {name: round(e["forward"] / 1e9, 6) for name, e in self.flops["by_layer"].items()},
            "notes": self.notes,
        }


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Peaks:
    """This machine's best FLOP rate per precision and kind (matmul, 3x3 convolution), measured
    at the start, between chunks and at the end: the best of all counts (a busy moment during
    one measurement must not inflate every utilisation), and the start against the end says
    whether something else was running."""

    def __init__(self, device: torch.device, precisions: list[str]):
        self.device, self.precisions = device, precisions
        self.first = {p: measure_peak_gflops(device, DTYPES[p]) for p in precisions}
        self.best = {p: dict(m) for p, m in self.first.items()}
        self.last: dict[str, dict[str, float]] = {}

    def _take(self, p: str, measured: dict) -> None:
        self.best[p] = {kind: max(value, measured[kind]) for kind, value in self.best[p].items()}

    def probe(self) -> None:
        """A short measurement between chunks."""
        for p in self.precisions:
            self._take(p, measure_peak_gflops(self.device, DTYPES[p], reps=2))

    def finish(self) -> None:
        for p in self.precisions:
            self.last[p] = measure_peak_gflops(self.device, DTYPES[p])
            self._take(p, self.last[p])

    def peak(self, precision: str) -> float:
        return max(self.best[precision].values())

    def drift(self) -> float:
        """The peak at the start against the end, either way (1: steady)."""
        ratios = [max(self.first[p].values()) / max(self.last[p].values()) for p in self.precisions]
        return max(max(r, 1 / r) for r in ratios)


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
    keep_freed_memory()  # as every job does (testbed/memory.py)
    precisions = sorted({v.config["train"]["precision"] for v in experiment.variants})
    if console is not None:
        console.print(
            f"bench: measuring the peak ({'/'.join(precisions)} matmul and convolution on {device}, {torch.get_num_threads()} threads)"
        )
    peaks = Peaks(device, precisions)
    sizes = _chunk_sizes(steps)
    interleaved = sum(_state_bytes(v, registry, data[v.name]) for v in experiment.variants) <= KEEP_BYTES
    benches = [VariantBench(v, registry, data[v.name], device, console) for v in experiment.variants] if interleaved else []
    timed = (
        _time_interleaved(benches, sizes, peaks)
        if interleaved
        else _time_one_by_one(experiment, registry, data, device, sizes, peaks, console)
    )
    peaks.finish()
    records = {}
    for vb in timed:
        records[vb.name] = vb.record(peaks.peak(vb.precision))
        _report(console, records[vb.name])
    variants = [records[v.name] for v in experiment.variants]
    base = records.get("baseline", variants[0])
    for r in variants:
        r["step_time_vs_baseline"] = r["step_ms"] / base["step_ms"]
    doc = _document(experiment, device, steps, sizes, interleaved, peaks, variants, timed)
    _warn_if_noisy(doc, device, console)
    return doc


def _time_interleaved(benches: list[VariantBench], sizes: list[int], peaks: Peaks) -> list[VariantBench]:
    """Chunk by chunk, every variant in turn (alternating the order), a peak probe between rounds."""
    for r, n in enumerate(sizes):
        for vb in benches if r % 2 == 0 else reversed(benches):
            vb.time_chunk(n)
        peaks.probe()
    for vb in benches:
        vb.close()
    return benches


def _time_one_by_one(experiment, registry, data, device, sizes, peaks: Peaks, console) -> list[VariantBench]:
    """Variants too large to keep alive together: each built, timed and freed before the next."""
    out = []
    for v in experiment.variants:
        vb = VariantBench(v, registry, data[v.name], device, console)
        for n in sizes:
            vb.time_chunk(n)
        peaks.probe()
        vb.close()
        out.append(vb)
    return out


def _document(experiment, device, steps, sizes, interleaved, peaks: Peaks, variants, timed) -> dict:
    timing = (
        f"{steps} timed steps per variant after {WARMUP_STEPS} warm-up steps, on one fixed batch already on the device, "
        f"in {len(sizes)} chunks of which the fastest counts; the pipeline and the augmentations timed the same way, "
        f"chunk beside chunk; " + ("chunks interleaved across variants" if interleaved else "variants timed one after another")
    )
    by_precision = {p: peaks.peak(p) for p in peaks.precisions}
    memory = timed[-1].memory_note + (
        "; the variants built before it stay alive (their steps are timed interleaved)" if interleaved and len(timed) > 1 else ""
    )
    return {
        "experiment": experiment.name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "physical_cores": physical_cores(),
        "freed_memory_kept": freed_memory_kept(),
        "steps": steps,
        "peak_gflops": by_precision.get("fp32", next(iter(by_precision.values()))),
        "peak_gflops_by_precision": by_precision,
        "peak_measurements_gflops": peaks.best,
        "flop_convention": FLOP_CONVENTION,
        "timing": timing,
        "interleaved": interleaved,
        "memory": memory,
        "variants": variants,
        "noise": {
            "step_spread_max": max(r["step_ms_median"] / r["step_ms"] for r in variants),  # median chunk / fastest chunk
            "peak_drift_max": peaks.drift(),
        },
    }


def _warn_if_noisy(doc: dict, device, console) -> None:
    if console is None:
        return
    if max(doc["noise"].values()) > NOISY:
        console.print(
            f"[yellow]bench: timings varied by more than {100 * (NOISY - 1):.0f}% between chunks or between the peak "
            f"measurements: something else was running; compare ratios only from a quiet rerun[/yellow]"
        )
    if device.type == "cpu" and doc["threads"] != doc["physical_cores"]:
        console.print(f"[yellow]bench: torch uses {doc['threads']} threads on {doc['physical_cores']} physical cores[/yellow]")


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
        f"{r['achieved_gflops']:.1f} GFLOP/s = {100 * r['utilisation']:.1f}% of peak; the loop is limited by the {r['limited_by']}"
        + (
            f"; decoding {r['decode_images_per_s_per_core']:.0f} img/s per core: {r['workers_needed']} worker(s) feed this step, "
            f"{r['workers']} configured"
            if r["workers_needed"]
            else ""
        )
    )


def _num(value, fmt):
    return "-" if value is None else format(value, fmt)


def bench_row(r: dict, streaming: bool) -> list[str]:
    """One variant's cells of the bench table."""
    num = _num
    return [
        r["name"],
        str(r["batch_size"]),
        num(r["step_ms"], ".1f"),
        num(r["train_images_per_s"], ".0f"),
        num(r.get("step_time_vs_baseline"), ".2f") + "x",
        num(r["data_images_per_s"], ".0f"),
        num(100 * r["data_fraction_of_step"], ".1f"),
        "-" if r["augment_fraction_of_step"] is None else num(100 * r["augment_fraction_of_step"], ".1f"),
        num(r["loop_images_per_s"], ".0f"),
        num(100 * r["data_fraction_in_loop"], ".1f"),
        *(
            [
                num(r["decode_images_per_s_per_core"], ".0f"),
                "-" if r["workers_needed"] is None else f"{r['workers']}/{r['workers_needed']}",
            ]
            if streaming
            else []
        ),
        num(r["gflops_per_image"], ".4f"),
        num(r["train_gflops_per_image"], ".4f"),
        num(r["achieved_gflops"], ".1f"),
        num(100 * r["utilisation"], ".1f") + "%",
        num(r["peak_memory_mb"], ".0f"),
    ]


def render_bench(doc: dict, console) -> None:
    from rich.console import Console
    from rich.table import Table

    if not console.is_terminal and not console.record and console.width < 220:  # a file or a log: the whole table
        console = Console(file=console.file, width=max(console.width, 220))

    streaming = any(r.get("decode_images_per_s_per_core") for r in doc["variants"])  # a loader that decodes files
    table = Table(
        title=f"{doc['experiment']}: training-step and data-pipeline throughput on {doc['device']} ({doc['device_name']})",
        title_justify="left",
    )
    for name, justify in [
        ("variant", "left"),
        ("batch", "right"),
        ("step ms", "right"),
        ("train img/s", "right"),
        ("vs baseline", "right"),
        ("data img/s", "right"),
        ("data % of step", "right"),
        ("augment % of step", "right"),
        ("loop img/s", "right"),
        ("data % in loop", "right"),
        *([("decode img/s/core", "right"), ("workers have/need", "right")] if streaming else []),
        ("GFLOP/img fwd", "right"),
        ("GFLOP/img train", "right"),
        ("GFLOP/s", "right"),
        ("utilisation", "right"),
        ("peak MB", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)
    for r in doc["variants"]:
        table.add_row(*bench_row(r, streaming))
    console.print(table)
    console.print(
        f"peak {doc['peak_gflops']:.1f} GFLOP/s (best of a large fp32 matmul and 3x3 convolution: "
        + ", ".join(f"{k} {v:.1f}" for k, v in doc["peak_measurements_gflops"].get("fp32", {}).items())
        + f"; {doc['threads']} threads, {doc['physical_cores']} physical cores); "
        f"timing: {doc['timing']}.\nFLOPs: {doc['flop_convention']}.\nmemory: {doc['memory']}."
    )
