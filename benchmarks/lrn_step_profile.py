"""Where a training step's LRN time goes: torch.profiler over 10 training steps of the 32 px
width-0.25 AlexNet with and without LRN (channels-last, batch 64, the threads torch uses), the
self CPU time of every operator side by side, sorted by what LRN adds.

    python benchmarks/lrn_step_profile.py
"""

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lrn_overhead import build_three  # noqa: E402

from testbed.memory import keep_freed_memory  # noqa: E402
from testbed.train import train_step  # noqa: E402


def self_times(model, x, y, steps: int = 10) -> dict[str, float]:
    """Operator -> self CPU ms per training step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for _ in range(5):
        train_step(model, opt, x, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(model, opt, x, y)
    return {e.key: e.self_cpu_time_total / steps / 1e3 for e in prof.key_averages()}


def main() -> None:
    keep_freed_memory()  # as every testbed job does (testbed/memory.py)
    models = build_three("cifar", 0.25, 32, 10)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,), generator=gen)
    res = {name: self_times(models[name].to(memory_format=torch.channels_last).train(), x, y) for name in ("none", "testbed-lrn")}
    none, lrn = res["none"], res["testbed-lrn"]
    keys = sorted(set(none) | set(lrn), key=lambda k: -(lrn.get(k, 0) - none.get(k, 0)))
    print(f"{torch.get_num_threads()} threads; self CPU ms per step")
    print(f"{'operator':50s} {'none':>9s} {'lrn':>9s} {'added':>8s}")
    for k in keys[:20]:
        a, b = none.get(k, 0), lrn.get(k, 0)
        print(f"{k[:50]:50s} {a:9.3f} {b:9.3f} {b - a:8.3f}")
    print(f"{'total':50s} {sum(none.values()):9.3f} {sum(lrn.values()):9.3f} {sum(lrn.values()) / sum(none.values()):7.2f}x")


if __name__ == "__main__":
    main()
