"""This LRN against another normalizations.py's, layer by layer, interleaved repetition by repetition.

The two implementations run one after the other inside every repetition (same input, same
thread), so a busy machine slows both alike; reported per shape: the median CPU time of each
(one thread, time.thread_time) and new / other, by the medians and by the fastest repetitions.
The shapes are the normalized layers of AlexNet (32 px width 0.25 batch 64; 227 px batch 16)
and of the conv-local net (24 px crops, batch 128, window 9).

    git show 3cdbff1:testbed_builtins/normalizations.py > /tmp/lrn_before.py
    python benchmarks/lrn_ab.py --compare-with /tmp/lrn_before.py [--reps 30]
    python benchmarks/lrn_ab.py --paths [--threads 2]   # the channels-last window sum's ways, side by side

``--paths`` times the ways a channels-last window sum can be computed (a matrix product, a 1x1
convolution with the whole window matrix, a grouped one, one whose pixels are each tower's
channels, shifted adds along the channels): the
measurements behind TOWERS_AS_PIXELS_FROM and SHIFTED_FROM in testbed_builtins/normalizations.py.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from lrn_overhead import load_other_lrn

from testbed.memory import keep_freed_memory
from testbed_builtins import normalizations
from testbed_builtins.normalizations import lrn

SHAPES = [  # (N, C, H, W), window size, towers
    ((64, 24, 32, 32), 5, 2),
    ((64, 64, 15, 15), 5, 2),
    ((16, 96, 55, 55), 5, 2),
    ((16, 256, 27, 27), 5, 2),
    ((128, 64, 12, 12), 9, 1),  # conv-local's norm1 and norm2 both normalize 64 x 12 x 12
]


def time_pair(modules: dict, shape, towers: int, reps: int, forward_only: bool) -> dict[str, list[float]]:
    gen = torch.Generator().manual_seed(0)
    x0 = (torch.randn(*shape, generator=gen).relu() * 5).contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape, generator=gen).contiguous(memory_format=torch.channels_last)
    times: dict[str, list[float]] = {k: [] for k in modules}
    for i in range(reps + 2):
        for k, m in modules.items():
            x = x0.clone(memory_format=torch.preserve_format).requires_grad_(not forward_only)
            tick = time.thread_time()
            if forward_only:
                with torch.inference_mode():
                    m.forward_towers(x, towers)
            else:
                m.forward_towers(x, towers).backward(g)
            if i >= 2:  # the first two warm the caches
                times[k].append(time.thread_time() - tick)
    return times


def window_paths(x: torch.Tensor, half: int, towers: int) -> dict:
    """Each way to compute the window sum of channels-last x (all give the same sums)."""
    n, c, h, w = x.shape
    per = c // towers
    F = torch.nn.functional
    full = normalizations._cached_window(c, half, towers, 1.0, x.dtype, x.device, conv=True)
    one_tower = normalizations._cached_window(per, half, 1, 1.0, x.dtype, x.device, conv=True)
    grouped = one_tower.repeat(towers, 1, 1, 1)
    matrix = normalizations._cached_window(c, half, towers, 1.0, x.dtype, x.device, conv=False)
    flat = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    pixels = x.permute(0, 2, 3, 1).reshape(n, h, w * towers, per).permute(0, 3, 1, 2)  # each tower's channels as pixels
    return {
        "matrix product": lambda: torch.mm(flat, matrix),
        "1x1 conv": lambda: F.conv2d(x, full),
        "grouped conv": lambda: F.conv2d(x, grouped, groups=towers),
        "towers as pixels": lambda: F.conv2d(pixels, one_tower),
        "shifted adds": lambda: normalizations._shifted_adds(x.permute(0, 2, 3, 1).reshape(n * h * w * towers, per, 1), half),
    }


def paths(reps: int) -> None:
    print(f"channels-last window sums, {torch.get_num_threads()} thread(s), median wall ms of {reps} interleaved repetitions")
    for shape, size, towers in SHAPES:
        x = (torch.rand(*shape) * 5).contiguous(memory_format=torch.channels_last)
        ways = window_paths(x, size // 2, towers)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for i in range(reps + 2):
            for k, f in ways.items():
                tick = time.perf_counter()
                f()
                if i >= 2:
                    times[k].append(time.perf_counter() - tick)
        label = f"{'x'.join(map(str, shape))} window {size} towers {towers}"
        print(f"  {label:<34}" + "  ".join(f"{k} {1e3 * statistics.median(t):.2f}" for k, t in times.items()))


def main() -> None:
    keep_freed_memory()  # as every testbed job does (testbed/memory.py)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-with", metavar="PATH", help="another normalizations.py (e.g. from git show)")
    parser.add_argument("--paths", action="store_true", help="time the channels-last window sum's ways instead")
    parser.add_argument("--threads", type=int, default=1, help="--paths: torch threads (the comparison always uses 1)")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    if args.paths:
        torch.set_num_threads(args.threads)
        paths(args.reps)
        return
    if not args.compare_with:
        parser.error("give --compare-with PATH or --paths")
    torch.set_num_threads(1)
    other = load_other_lrn(args.compare_with)
    print(f"this LRN against {args.compare_with}, channels-last, 1 thread, {args.reps} interleaved repetitions")
    for forward_only in (False, True):
        print("forward only (evaluation)" if forward_only else "forward + backward (training)")
        for shape, size, towers in SHAPES:
            modules = {"new": lrn(0, size=size), "other": other(0, size=size)}
            t = time_pair(modules, shape, towers, args.reps, forward_only)
            new, old = statistics.median(t["new"]) * 1e3, statistics.median(t["other"]) * 1e3
            best = min(t["new"]) / min(t["other"])
            label = f"{'x'.join(map(str, shape))} window {size} towers {towers}"
            print(f"  {label:<34} new {new:7.2f} ms  other {old:7.2f} ms  new/other {new / old:.2f} (fastest: {best:.2f})")


if __name__ == "__main__":
    main()
