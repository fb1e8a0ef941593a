"""Does channels-last memory format pay on this device? Training steps of the same AlexNet in
NCHW (torch's default) and in channels-last, with and without LRN, side by side in one process
(alternating rounds, medians).

    python benchmarks/channels_last.py                     # cpu, or --device cuda
    python benchmarks/channels_last.py --only cifar-w0.25 --rounds 11
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import wait_for_idle

from testbed import plugins
from testbed.bench import synchronize
from testbed.memory import keep_freed_memory
from testbed.model import build_model
from testbed.train import train_step

CASES = {  # name: (geometry, width, image size, batch)
    "cifar-w0.25": ("cifar", 0.25, 32, 64),
    "cifar-w1": ("cifar", 1.0, 32, 128),
    "imagenet-w1": ("imagenet", 1.0, 227, 16),
}


def main() -> None:
    keep_freed_memory()  # as every testbed job does (testbed/memory.py)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="steps per candidate per round")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    registry = plugins.registry()
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; median step ms over {args.rounds} rounds")
    for case in args.only or list(CASES):
        geometry, width, size, batch = CASES[case]
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        runs = {}
        for norm in ("lrn", "none"):
            for fmt in ("nchw", "channels-last"):
                cfg = {
                    "geometry": geometry,
                    "width": width,
                    "activation": "relu",
                    "normalization": norm,
                    "pooling": "overlapping",
                    "dropout": 0.5,
                    "init": "pytorch",
                    "placement": "grouped",
                    "skip": [],
                }
                torch.manual_seed(0)
                model = build_model(cfg, 10, size, registry, device).module
                xin = x
                if fmt == "channels-last":
                    model = model.to(memory_format=torch.channels_last)
                    xin = x.contiguous(memory_format=torch.channels_last)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                for _ in range(2):
                    train_step(model, opt, xin, y)
                runs[(norm, fmt)] = (model, opt, xin)
        times = {k: [] for k in runs}
        for r in range(args.rounds):
            wait_for_idle(10.0)
            for k in list(runs) if r % 2 == 0 else list(reversed(list(runs))):
                model, opt, xin = runs[k]
                synchronize(device)
                tick = time.perf_counter()
                for _ in range(args.steps):
                    train_step(model, opt, xin, y)
                synchronize(device)
                times[k].append((time.perf_counter() - tick) / args.steps)
            print(f"  {case} round {r + 1}/{args.rounds}", file=sys.stderr)
        print(f"\n{case} ({geometry} {size} px, width {width}, batch {batch}):")
        for norm in ("lrn", "none"):
            a, b = statistics.median(times[(norm, "nchw")]), statistics.median(times[(norm, "channels-last")])
            print(f"  {norm:<5} NCHW {1e3 * a:8.1f} ms   channels-last {1e3 * b:8.1f} ms   channels-last / NCHW {b / a:.2f}")
        del runs


if __name__ == "__main__":
    main()
