"""What LRN costs a training step: torch.nn.LocalResponseNorm vs the testbed's LRN vs no normalization.

Three copies of the same AlexNet (same weights; built by testbed.model.build_model, the paper's
two-tower connectivity, LRN per tower after conv1 and conv2) differ only in the normalization
modules. Their training steps (forward, cross-entropy, backward, SGD with momentum on one
fixed batch) are timed side by side in one process, in alternating rounds, so that a busy
machine slows all three alike. Reported: the median over rounds of images/s, and each
variant's step time over the no-LRN step time (the median of the per-round ratios).

    python benchmarks/lrn_overhead.py                  # 32 px width 0.25 (batch 64) and 227 px width 1 (batch 16)
    python benchmarks/lrn_overhead.py --only cifar --rounds 15
    git show 163bea7:plugins/normalizations.py > /tmp/lrn_before.py   # an earlier LRN, side by side:
    python benchmarks/lrn_overhead.py --compare-with /tmp/lrn_before.py
    python benchmarks/lrn_overhead.py --micro --compare-with /tmp/lrn_before.py   # the layers alone
    python benchmarks/lrn_overhead.py --micro --channels-last [--forward-only]    # testbed's default format; evaluation
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from _common import wait_for_idle
from torch import nn

from testbed import plugins
from testbed.memory import keep_freed_memory
from testbed.model import TowerSplit, build_model
from testbed.train import train_step

GEOMETRIES = {  # name: (geometry, width, image size, batch, classes)
    "cifar": ("cifar", 0.25, 32, 64, 10),
    "imagenet": ("imagenet", 1.0, 227, 16, 1000),
}


def model_config(geometry: str, width: float, normalization: str) -> dict:
    return {
        "geometry": geometry,
        "width": width,
        "activation": "relu",
        "normalization": normalization,
        "pooling": "overlapping",
        "dropout": 0.5,
        "init": "pytorch",
        "placement": "grouped",
        "skip": [],
    }


def load_other_lrn(path: str):
    """The ``lrn`` factory of another normalizations.py (e.g. an older version from git)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("other_normalizations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lrn


def build_three(geometry: str, width: float, size: int, classes: int, other=None) -> dict[str, nn.Module]:
    registry = plugins.registry()
    models = {}
    for name, norm in (("none", "none"), ("testbed-lrn", "lrn")):
        torch.manual_seed(0)
        models[name] = build_model(model_config(geometry, width, norm), classes, size, registry, "cpu").module
    torch.manual_seed(0)
    theirs = build_model(model_config(geometry, width, "none"), classes, size, registry, "cpu").module
    for name in ("norm1", "norm2"):  # the same slots, filled with torch's own module (same k, n, alpha, beta)
        towers = getattr(theirs.features, name).towers
        setattr(theirs.features, name, TowerSplit([nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0) for _ in towers]))
    models["torch-lrn"] = theirs
    if other is not None:
        torch.manual_seed(0)
        alt = build_model(model_config(geometry, width, "none"), classes, size, registry, "cpu").module
        for name in ("norm1", "norm2"):
            towers = getattr(alt.features, name).towers
            setattr(alt.features, name, TowerSplit([other(0) for _ in towers]))
        models["other-lrn"] = alt
    return models


def measure(key: str, rounds: int, steps: int, other=None, fmt=torch.contiguous_format) -> dict:
    geometry, width, size, batch, classes = GEOMETRIES[key]
    models = {k: m.to(memory_format=fmt) for k, m in build_three(geometry, width, size, classes, other).items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,), generator=gen)
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4) for k, m in models.items()}
    for k, m in models.items():
        m.train()
        for _ in range(2):
            train_step(m, optimizers[k], x, y)
    times: dict[str, list[float]] = {k: [] for k in models}
    for r in range(rounds):
        wait_for_idle(10.0)
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for k in order:
            tick = time.perf_counter()
            for _ in range(steps):
                train_step(models[k], optimizers[k], x, y)
            times[k].append((time.perf_counter() - tick) / steps)
        print(f"  {key} round {r + 1}/{rounds}: " + "  ".join(f"{k} {1e3 * times[k][-1]:.1f} ms" for k in models), file=sys.stderr)
    out = {
        "geometry": geometry,
        "width": width,
        "image_size": size,
        "batch": batch,
        "rounds": rounds,
        "steps_per_round": steps,
        "variants": {},
    }
    for k, ts in times.items():
        ratios = [t / n for t, n in zip(ts, times["none"])]
        out["variants"][k] = {
            "images_per_s_median": batch / statistics.median(ts),
            "images_per_s_best": batch / min(ts),
            "step_ms_median": 1e3 * statistics.median(ts),
            "slowdown_vs_none_median": statistics.median(ratios),
            "slowdown_vs_none_best": min(ts) / min(times["none"]),
        }
    return out


MICRO_SHAPES = [(64, 24, 32, 32), (64, 64, 15, 15), (16, 96, 55, 55), (16, 256, 27, 27)]  # after conv1/conv2, both geometries


def micro(other=None, reps: int = 15, fmt=torch.contiguous_format, forward_only: bool = False) -> None:
    """The normalization layers alone (both towers, forward + backward), one thread, CPU time
    of this thread (insensitive to other processes), median of ``reps``."""
    from testbed_builtins.normalizations import lrn

    torch.set_num_threads(1)
    makers = {"none": nn.Identity, "testbed-lrn": lambda: lrn(0), "torch-lrn": lambda: nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)}
    if other is not None:
        makers["other-lrn"] = lambda: other(0)
    what = "forward only (inference_mode)" if forward_only else "forward + backward"
    print(f"normalization layers alone, {what} of both towers, 1 thread, median CPU ms ({fmt}):")
    print(f"  {'input':<18}" + "".join(f"{k:>13}" for k in makers))
    for shape in MICRO_SHAPES:
        gen = torch.Generator().manual_seed(0)
        x0 = (torch.randn(*shape, generator=gen).relu() * 5).contiguous(memory_format=fmt)
        g = torch.randn(*shape, generator=gen).contiguous(memory_format=fmt)
        row = []
        for make in makers.values():
            module = TowerSplit([make(), make()])
            times = []
            for i in range(reps + 2):
                x = x0.clone(memory_format=torch.preserve_format).requires_grad_(not forward_only)
                tick = time.thread_time()
                if forward_only:
                    with torch.inference_mode():
                        module(x)
                else:
                    module(x).backward(g)
                if i >= 2:
                    times.append(time.thread_time() - tick)
            row.append(1e3 * statistics.median(times))
        print(f"  {'x'.join(map(str, shape)):<18}" + "".join(f"{t:>13.2f}" for t in row))


def main() -> None:
    keep_freed_memory()  # as every testbed job does (testbed/memory.py)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(GEOMETRIES), action="append", help="one geometry (repeatable); default both")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant per round (cifar); 227 px uses 1")
    parser.add_argument("--json", action="store_true", help="print the JSON document only")
    parser.add_argument("--compare-with", metavar="PATH", help="another normalizations.py whose lrn() is timed too, as other-lrn")
    parser.add_argument("--micro", action="store_true", help="time the normalization layers alone instead (one thread)")
    parser.add_argument(
        "--channels-last", action="store_true", help="models and inputs in channels-last (testbed's default) instead of NCHW"
    )
    parser.add_argument("--forward-only", action="store_true", help="--micro: the forward pass under inference_mode (evaluation)")
    args = parser.parse_args()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    if args.micro:
        micro(load_other_lrn(args.compare_with) if args.compare_with else None, fmt=fmt, forward_only=args.forward_only)
        return
    doc = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": [],
    }
    for key in args.only or ["cifar", "imagenet"]:
        other = load_other_lrn(args.compare_with) if args.compare_with else None
        doc["results"].append(measure(key, args.rounds, args.steps if key == "cifar" else 1, other, fmt))
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"torch {doc['torch']}, {doc['threads']} threads; median of {args.rounds} alternating rounds")
    for res in doc["results"]:
        print(f"\n{res['geometry']} {res['image_size']} px, width {res['width']}, batch {res['batch']}:")
        print(f"  {'variant':<12} {'img/s':>8} {'step ms':>9} {'vs none':>8}")
        for k, v in res["variants"].items():
            print(f"  {k:<12} {v['images_per_s_median']:>8.1f} {v['step_ms_median']:>9.1f} {v['slowdown_vs_none_median']:>7.2f}x")


if __name__ == "__main__":
    main()
