"""Goal 2 of performance round two: evaluation at the throughput the forward pass allows.

The held-out pass as a job runs it (testbed.evaluation.evaluate: test views made from each
batch, one forward pass per view, softmax averaged, top-1/top-5 counted, the saturation probe
on the first batch) against a plain forward-only loop over the same views, made beforehand,
with the same model, batch size and memory format, under torch.inference_mode and nothing
else. Both the centre view and ten-crop; LRN and no normalization. Rounds alternate the two,
and the ratio of medians is reported (evaluate's time over the plain loop's).

Images/s counts held-out images (a ten-crop image costs ten forward passes); the `view/s`
column counts forward-pass images.

    python benchmarks/eval_throughput.py                    # 32 px width 0.25, synthetic held-out set, 1 thread
    TESTBED_DATA=../shared/datasets python benchmarks/eval_throughput.py --dataset cifar10 --rounds 5
    python benchmarks/eval_throughput.py --profile          # where evaluate's time goes (torch.profiler)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import wait_for_idle  # noqa: E402

from testbed import plugins  # noqa: E402
from testbed.assembly import build_for_training, build_pipeline  # noqa: E402
from testbed.data import load_dataset  # noqa: E402
from testbed.distributed import Dist  # noqa: E402
from testbed.evaluation import evaluate  # noqa: E402
from testbed.experiment import build_experiment  # noqa: E402
from testbed.memory import keep_freed_memory  # noqa: E402


def experiment(dataset: str, test_size: int, eval_batch: int) -> dict:
    data = {"dataset": dataset, "train_size": 200, "test_size": test_size, "preprocess": "standardize"}
    if dataset == "synthetic":
        data |= {"image_size": 32, "classes": 10}
    return {
        "name": "eval-throughput",
        "description": "evaluate() vs a plain forward loop",
        "data": data,
        "model": {"geometry": "cifar", "width": 0.25, "normalization": "lrn", "init": "kaiming"},
        "augment": {"train": [], "test": {"name": "ten-crop", "padding": 4}},
        "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": eval_batch, "seeds": 1},
        "variant": [{"name": "no-norm", "model": {"normalization": "none"}}],
    }


class Candidates:
    """One variant's model and pipeline, and the two ways of evaluating it."""

    def __init__(self, variant, registry):
        cfg = variant.config
        self.data = load_dataset(cfg["data"], registry)
        torch.manual_seed(0)
        self.built = build_for_training(cfg, self.data, registry, torch.device("cpu"))
        self.model = self.built.module.eval()
        self.pipeline = build_pipeline(variant, self.data, self.built, registry, torch.device("cpu"))
        self.batch = cfg["train"]["eval_batch_size"]
        fmt = self.pipeline.memory_format
        self.views = {  # made once, outside the timing: the plain loop does forward passes only
            ten: [[v.contiguous(memory_format=fmt) for v in views] for views, _ in self.pipeline.test_batches(self.batch, views=ten)]
            for ten in (False, True)
        }

    def evaluate(self, ten: bool):
        return evaluate(self.model, self.pipeline, self.batch, "fp32", Dist(), views=ten, probe=True)

    def plain(self, ten: bool):
        with torch.inference_mode():
            for views in self.views[ten]:
                for v in views:
                    self.model(v)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def profile(c: Candidates) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    c.evaluate(True)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        c.evaluate(True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    keep_freed_memory()  # as every testbed job does (testbed/memory.py)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", help="synthetic, or cifar10 (needs TESTBED_DATA)")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = plugins.registry()
    exp = build_experiment(experiment(args.dataset, args.test_size, args.eval_batch), registry)
    candidates = {v.name: Candidates(v, registry) for v in exp.variants}
    if args.profile:
        profile(candidates["baseline"])
        return
    times = {(n, ten, how): [] for n in candidates for ten in (False, True) for how in ("evaluate", "plain")}
    for c in candidates.values():  # warm-up
        for ten in (False, True):
            c.evaluate(ten), c.plain(ten)
    for r in range(args.rounds):
        wait_for_idle(10.0)
        for name, c in candidates.items():
            for ten in (False, True):
                order = ("evaluate", "plain") if r % 2 == 0 else ("plain", "evaluate")
                for how in order:
                    times[(name, ten, how)].append(timed(lambda c=c, how=how, ten=ten: getattr(c, how)(ten)))
    n = (
        len(next(iter(candidates.values())).pipeline._test[1])
        if hasattr(next(iter(candidates.values())).pipeline, "_test")
        else args.test_size
    )
    rows = []
    for name in candidates:
        for ten in (False, True):
            e = [t for t in times[(name, ten, "evaluate")]]
            p = [t for t in times[(name, ten, "plain")]]
            row = {
                "variant": name,
                "views": 10 if ten else 1,
                "evaluate_images_per_s": n / statistics.median(w for w, _ in e),
                "plain_images_per_s": n / statistics.median(w for w, _ in p),
                "ratio_wall": statistics.median(w for w, _ in e) / statistics.median(w for w, _ in p),
                "ratio_cpu": statistics.median(c for _, c in e) / statistics.median(c for _, c in p),
            }
            rows.append(row)
    lrn_over_none = {
        views: next(r for r in rows if r["variant"] == "baseline" and r["views"] == views)["plain_images_per_s"] ** -1
        / next(r for r in rows if r["variant"] == "no-norm" and r["views"] == views)["plain_images_per_s"] ** -1
        for views in (1, 10)
    }
    doc = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "setup": vars(args),
        "rows": rows,
        "plain_forward_lrn_over_none": lrn_over_none,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(
        f"evaluation, {args.dataset} {n} held-out images, batch {args.eval_batch}, {args.threads} thread(s), "
        f"median of {args.rounds} alternating rounds"
    )
    print(f"  {'variant':<9}{'views':>6}{'evaluate img/s':>16}{'plain img/s':>13}{'view/s':>9}{'ratio wall':>12}{'ratio cpu':>11}")
    for r in rows:
        print(
            f"  {r['variant']:<9}{r['views']:>6}{r['evaluate_images_per_s']:>16.0f}{r['plain_images_per_s']:>13.0f}"
            f"{r['plain_images_per_s'] * r['views']:>9.0f}{r['ratio_wall']:>11.3f}x{r['ratio_cpu']:>10.3f}x"
        )
    print("  plain forward, LRN / none: " + ", ".join(f"{v} view(s) {x:.3f}x" for v, x in lrn_over_none.items()))


if __name__ == "__main__":
    main()
