"""Training throughput of the 227 px paper model on one GPU: fp32 / bf16, NCHW / channels-last,
eager / torch.compile, on synthetic data already on the device (the performance issue's GPU table;
its goal: at least 10,000 images/s in bf16 on one H100).

    python benchmarks/gpu_throughput.py                      # every combination, batch 256
    python benchmarks/gpu_throughput.py --batch 512 --steps 30
    python benchmarks/gpu_throughput.py --device cpu --batch 8 --steps 2 --no-compile   # a dry run anywhere

Each combination builds the model as `testbed run` does (testbed.train.build_for_training: the
paper's grouped towers, LRN, the paper's init) and times `train_step` (forward, cross-entropy,
backward, SGD with momentum) on one fixed batch after warm-up steps (compile's included),
synchronising only around the timed block. Prints one JSON document and a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time

import torch

from testbed import plugins
from testbed.assembly import build_for_training
from testbed.data import InMemoryData
from testbed.experiment import build_experiment
from testbed.train import train_step


def measure(device: torch.device, precision: str, memory_format: str, compile_model: bool, batch: int, steps: int, warmup: int) -> dict:
    registry = plugins.registry()
    raw = {
        "model": {"geometry": "imagenet", "width": 1.0},
        "train": {"precision": precision, "memory_format": memory_format, "batch_size": batch},
    }
    variant = build_experiment(raw, registry).baseline
    images = torch.zeros(1, 3, 227, 227, dtype=torch.uint8)
    data = InMemoryData(images, torch.zeros(1, dtype=torch.long), images, torch.zeros(1, dtype=torch.long), [f"c{i}" for i in range(1000)])
    torch.manual_seed(0)
    built = build_for_training(variant.config, data, registry, device)
    model = torch.compile(built.module) if compile_model else built.module
    optimizer = torch.optim.SGD(built.module.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    fmt = torch.channels_last if memory_format == "channels-last" else torch.contiguous_format
    x = torch.randn(batch, 3, 227, 227, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    tick = time.perf_counter()
    for _ in range(warmup):
        train_step(model, optimizer, x, y, precision, scaler)
    sync()
    warm_s = time.perf_counter() - tick
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tick = time.perf_counter()
    for _ in range(steps):
        loss, _ = train_step(model, optimizer, x, y, precision, scaler)
    sync()
    seconds = time.perf_counter() - tick
    return {
        "precision": precision,
        "memory_format": memory_format,
        "compile": compile_model,
        "batch": batch,
        "images_per_s": batch * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "warmup_s": warm_s,
        "loss": float(loss.detach()),
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--precisions", default="fp32,bf16")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.exit(2, "gpu_throughput.py: no CUDA device here; `--device cpu --batch 8 --steps 2 --no-compile` is a dry run\n")
        torch.backends.cudnn.benchmark = True
    rows = []
    for precision, fmt, compiled in itertools.product(args.precisions.split(","), ("contiguous", "channels-last"), (False, True)):
        if compiled and args.no_compile:
            continue
        row = measure(device, precision, fmt, compiled, args.batch, args.steps, args.warmup)
        rows.append(row)
        print(
            f"{precision:5s} {fmt:14s} compile={str(compiled):5s}  {row['images_per_s']:10.1f} img/s  {row['step_ms']:8.1f} ms/step",
            flush=True,
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
