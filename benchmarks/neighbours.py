"""What Figure 4's fc7 nearest neighbours cost on this machine (testbed/neighbours.py).

Two parts, as `testbed report DIR --plots` does them for one variant:

1. the search: 6 query vectors against a bank of 50,000 fc7 vectors (4096 wide, the paper's
   width; 1024 wide, width 0.25), testbed's chunked matrix product against torch.cdist + topk,
   in alternating rounds (medians);
2. the features: fc7 of N training images through a width-0.25 cifar-geometry model (centre
   patch, eval mode), timed and given per image, so that 50,000 images can be read off.

    python benchmarks/neighbours.py             # bank 50,000; features of 5,000 images
    python benchmarks/neighbours.py --feature-images 50000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from _common import wait_for_idle

from testbed import plugins
from testbed.neighbours import fc7_features, nearest


def timed(fn) -> float:
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def search(bank_size: int, width: int, queries: int, rounds: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(bank_size, width, generator=gen).relu_()  # fc7 after ReLU: non-negative
    q = torch.randn(queries, width, generator=gen).relu_()
    ours, cdist = [], []
    for _ in range(rounds):
        ours.append(timed(lambda: nearest(q, bank, 6)))
        cdist.append(timed(lambda: torch.cdist(q, bank).topk(6, largest=False)))
    return {
        "bank": bank_size,
        "width": width,
        "queries": queries,
        "testbed_s": statistics.median(ours),
        "cdist_s": statistics.median(cdist),
        "bank_mb": bank.numel() * 4 / 2**20,
    }


def features(images: int, batch: int) -> dict:
    from testbed.assembly import build_pipeline
    from testbed.data import load_dataset
    from testbed.experiment import build_experiment

    registry = plugins.registry()
    config = {
        "name": "bench",
        "data": {"dataset": "synthetic", "train_size": images, "test_size": 10, "preprocess": "standardize"},
        "model": {"geometry": "cifar", "width": 0.25, "init": "kaiming"},
    }
    variant = build_experiment(config, registry, "bench.toml").baseline
    data = load_dataset(variant.config["data"], registry)
    from testbed.model import build_model

    built = build_model(variant.config["model"], 10, 32, registry, "cpu")
    pipeline = build_pipeline(variant, data, built, registry, torch.device("cpu"))
    wait_for_idle()
    seconds = timed(lambda: fc7_features(built.module, pipeline, data.train_images, batch))
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "for_50000_s": 50000 * seconds / images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--feature-images", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "search": [], "features": None}
    for width in (4096, 1024):
        wait_for_idle()
        out["search"].append(search(args.bank, width, 6, args.rounds))
    out["features"] = features(args.feature_images, args.batch)
    for s in out["search"]:
        print(
            f"search: {s['queries']} queries x {s['bank']:,} x {s['width']} ({s['bank_mb']:.0f} MB bank): "
            f"testbed {1000 * s['testbed_s']:.0f} ms, cdist+topk {1000 * s['cdist_s']:.0f} ms (median of {args.rounds})"
        )
    f = out["features"]
    print(
        f"features: fc7 of {f['images']:,} images (width 0.25, 32 px) in {f['seconds']:.1f} s = {f['images_per_s']:.0f} images/s "
        f"-> {f['for_50000_s']:.0f} s for 50,000"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
