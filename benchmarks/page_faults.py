"""What glibc's default malloc costs a CPU training step: the step with and without
testbed.memory.keep_freed_memory (which testbed applies to every job), in child processes,
because the setting holds for a whole process and cannot be undone.

Each child times training steps of the 32 px width-0.25 AlexNet with LRN and without (channels-last,
batch 64, the threads torch uses, one fixed batch) and the first LRN layer alone (forward and
backward, 64 x 24 x 32 x 32), and counts minor page faults and system CPU time per step, and its
resident size at the end. The parent alternates children with TESTBED_MALLOC=system (glibc's defaults) and without, and reports
medians over rounds.

    python benchmarks/page_faults.py [--rounds 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _timed(fn, steps: int) -> dict:
    before, tick = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        fn()
    wall, after = time.perf_counter() - tick, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ms": 1e3 * wall / steps,
        "minor_faults": (after.ru_minflt - before.ru_minflt) / steps,
        "sys_ms": 1e3 * (after.ru_stime - before.ru_stime) / steps,
    }


def child(steps: int) -> None:
    import torch

    from testbed.memory import keep_freed_memory
    from testbed.train import train_step
    from testbed_builtins.normalizations import local_response_norm

    sys.path.insert(0, str(HERE))
    from lrn_overhead import build_three

    kept = keep_freed_memory()
    cl = torch.channels_last
    models = {k: v.to(memory_format=cl).train() for k, v in build_three("cifar", 0.25, 32, 10).items() if k != "torch-lrn"}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen).contiguous(memory_format=cl)
    y = torch.randint(0, 10, (64,), generator=gen)
    out = {"kept": kept}
    for name, model in models.items():
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for _ in range(3):
            train_step(model, opt, x, y)
        out[name] = _timed(lambda m=model, o=opt: train_step(m, o, x, y), steps)
    a = (3 * torch.rand(64, 24, 32, 32, generator=gen)).contiguous(memory_format=cl).requires_grad_()
    g = torch.randn(64, 24, 32, 32, generator=gen).contiguous(memory_format=cl)

    def layer():
        local_response_norm(a, 5, 1e-4, 0.75, 2.0, "divided-by-n", towers=2).backward(g)

    for _ in range(3):
        layer()
    out["lrn-layer"] = _timed(layer, 3 * steps)
    out["rss_mb"] = resident_mb()
    print(json.dumps(out))


def resident_mb() -> float:
    """This process's resident size now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.steps)
    sys.path.insert(0, str(HERE))
    from _common import wait_for_idle

    arms = {"glibc defaults": "system", "kept (testbed)": ""}
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        for arm in arms if r % 2 == 0 else reversed(arms):
            wait_for_idle(10.0)
            env = {**os.environ, "TESTBED_MALLOC": arms[arm]}
            command = [sys.executable, __file__, "--child", "--steps", str(args.steps)]
            run = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            results[arm].append(json.loads(run.stdout.strip().splitlines()[-1]))
            timings = "  ".join(f"{k} {v['ms']:.1f} ms" for k, v in results[arm][-1].items() if isinstance(v, dict))
            print(f"  round {r + 1}/{args.rounds} {arm}: {timings}", file=sys.stderr)
    print(f"median of {args.rounds} rounds, {args.steps} steps each (the layer: {3 * args.steps}); per step:")
    print(f"{'arm':16s} {'what':12s} {'ms':>8s} {'faults':>8s} {'sys ms':>7s}")
    for arm, runs in results.items():
        for what in ("none", "testbed-lrn", "lrn-layer"):
            med = {key: statistics.median(run[what][key] for run in runs) for key in ("ms", "minor_faults", "sys_ms")}
            print(f"{arm:16s} {what:12s} {med['ms']:8.2f} {med['minor_faults']:8.0f} {med['sys_ms']:7.2f}")
        ratio = statistics.median(run["testbed-lrn"]["ms"] / run["none"]["ms"] for run in runs)
        print(f"{arm:16s} {'LRN / none':12s} {ratio:7.2f}x   (kept in force: {all(run['kept'] for run in runs)})")
        print(f"{arm:16s} {'resident':12s} {statistics.median(run['rss_mb'] for run in runs):7.0f} MB at the end of a child")
    print("command: python benchmarks/page_faults.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
