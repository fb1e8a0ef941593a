"""Acceptance 2: the whole `testbed run` process vs a plain hand-written PyTorch script doing the same.

Both train the paper's 227 px AlexNet (width 1, two towers as conv groups, LRN after conv1 and
conv2, PyTorch's default init) on 128 generated images for one epoch in batches of 32, with no
augmentation, standardized inputs, SGD with momentum, and then measure top-1 error on the same
number of test images through the centre view. Each is a fresh process, timed from launch to
exit; the two alternate, several rounds, and the medians are compared.

    python benchmarks/runner_overhead.py                      # 3 rounds: testbed vs plain (torch's LRN)
    python benchmarks/runner_overhead.py --rounds 5 --plain-lrn testbed
    python benchmarks/runner_overhead.py --rounds 0 --profile # where testbed's time goes (importtime + cProfile)

The plain script (benchmarks/plain_alexnet.py) uses torch.nn.LocalResponseNorm by default;
``--plain-lrn testbed`` gives it the testbed's LRN, which isolates the runner's own overhead.
``--plain-lrn both`` runs both plain versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import wait_for_idle  # noqa: E402

EXPERIMENT = """\
name = "runner-overhead"
description = "The 227 px paper model, 128 synthetic images, one epoch: acceptance 2 of the performance issue."

[data]
dataset = "synthetic"
image_size = 227
train_size = {train}
test_size = {test}
preprocess = "standardize"

[model]
geometry = "imagenet"
width = 1.0
activation = "relu"
normalization = "lrn"
pooling = "overlapping"
dropout = 0.5
init = "pytorch"
placement = "grouped"

[augment]
train = []
test = "center"

[train]
epochs = 1
batch_size = {batch}
optimizer = {{ name = "sgd", lr = 0.01, momentum = 0.9, weight_decay = 5e-4 }}
schedule = "constant"
seeds = 1
eval_batch_size = 500
"""


def testbed_command(toml: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "testbed", "run", str(toml), "--out", str(out), "--device", "cpu", "--json", "--quiet"]


def plain_command(args, lrn: str) -> list[str]:
    return [
        sys.executable,
        str(HERE / "plain_alexnet.py"),
        "--train",
        str(args.train),
        "--test",
        str(args.test),
        "--batch",
        str(args.batch),
        "--epochs",
        "1",
        "--lrn",
        lrn,
    ]


def timed(cmd: list[str]) -> tuple[float, str]:
    wall, _cpu, out = timed_cpu(cmd)
    return wall, out


def timed_cpu(cmd: list[str]) -> tuple[float, float, str]:
    """Wall-clock seconds from launch to exit, CPU seconds (user + system, all threads), stdout."""
    wait_for_idle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


PHASES = {
    ("cli.py", "run"): "the `run` command (after `import testbed.cli`)",
    ("runner.py", "validate"): "  runner.validate: every variant's data and components, before training",
    ("data.py", "load_dataset"): "    load_dataset (generating the synthetic images)",
    ("data.py", "stats"): "    dataset statistics",
    ("assembly.py", "check_job"): "    check_job (components built shape-only on the meta device)",
    ("rundir.py", "prepare_run_dir"): "  prepare_run_dir",
    ("runner.py", "execute"): "  runner.execute: the grid",
    ("train.py", "run_job"): "    run_job: build, train, evaluate, checkpoint",
    ("model.py", "build_model"): "      build_model (all calls, validate's included)",
    ("model.py", "feature_numel"): "      feature_numel (meta-device shape pass, all calls)",
    ("evaluation.py", "evaluate"): "      evaluate",
    ("checkpoint.py", "save"): "      checkpoint.save (model + optimizer state, fsync)",
    ("plots.py", "make_learning_curves"): "    learning-curve plot",
    ("plots.py", "conv1_kernels"): "    conv1 kernel plot",
    ("results.py", "summarize"): "    results summary",
    ("cli.py", "_finish"): "  printing the result",
}
IMPORTS = (
    "torch",
    "torch._dynamo",
    "torchvision",
    "matplotlib",
    "matplotlib.pyplot",
    "rich",
    "click",
    "pluggy",
    "sqlite3",
    "testbed.cli",
    "testbed.runner",
    "testbed.plots",
    "testbed_builtins",
)


def profile(toml: Path, work: Path, top: int) -> None:
    """What one `testbed run` spends: its imports (-X importtime, lazy ones included) and its
    phases (cProfile, cumulative seconds)."""
    base = ["run", str(toml), "--device", "cpu", "--json", "--quiet", "--out"]
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "testbed", *base, str(work / "importtime")], capture_output=True, text=True
    )
    cumulative = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _self, cum, name = (part.strip() for part in line[len("import time:") :].split("|"))
            if cum.isdigit():
                cumulative[name] = int(cum) / 1e6
    print("\nimports inside one `testbed run` (-X importtime, cumulative seconds, counted where first imported):")
    for name in IMPORTS:
        if name in cumulative:
            print(f"  {cumulative[name]:6.2f} s  {name}")

    prof = work / "run.prof"
    wall, _ = timed([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "testbed", *base, str(work / "profiled")])
    stats = pstats.Stats(str(prof))
    found = {}
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for (fname, fn), label in PHASES.items():
            if filename.endswith(fname) and name == fn:
                found[label] = found.get(label, 0.0) + ct
    print(f"\none `testbed run` under cProfile ({wall:.2f} s wall; the profiler slows Python code a little), cumulative seconds:")
    for label in PHASES.values():
        if label in found:
            print(f"  {found[label]:6.2f} s  {label}")
    print("  (the process's first meta-device or optimizer call imports torch._dynamo, ~0.8 s here: a plain loop pays it too)")
    if top:
        print(f"\ntop {top} functions by cumulative time:")
        stats.sort_stats("cumulative").print_stats(top)


def report(args, walls: dict, cpus: dict, inner: dict, startup: float) -> None:
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; `python -c 'import torch'` takes {startup:.2f} s")
    print(
        f"whole-process wall time over {args.rounds} alternating rounds ({args.train} train / {args.test} test images, "
        f"227 px, batch {args.batch}, 1 epoch); median and best (the best is the least disturbed by other load):"
    )
    for name, ts in walls.items():
        extra = f"   (its training loop: median {statistics.median(inner[name]):.2f} s)" if inner[name] else ""
        runs = ", ".join(f"{t:.2f}" for t in ts)
        print(f"  {name:<22} median {statistics.median(ts):6.2f} s  best {min(ts):6.2f} s   [{runs}]{extra}")
    print("CPU seconds (user + system, all threads) of the same runs:")
    for name, ts in cpus.items():
        print(f"  {name:<22} median {statistics.median(ts):6.2f} s  best {min(ts):6.2f} s")
    print("ratios, testbed run / plain:")
    for name, ts in walls.items():
        if name != "testbed run":
            tb = walls["testbed run"]
            pairs = [a / b for a, b in zip(tb, ts)]
            print(
                f"  vs {name}: wall: ratio of medians {statistics.median(tb) / statistics.median(ts):.3f}, "
                f"of bests {min(tb) / min(ts):.3f}, median per-round ratio {statistics.median(pairs):.3f}; "
                f"CPU: ratio of medians {statistics.median(cpus['testbed run']) / statistics.median(cpus[name]):.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--plain-lrn", choices=["torch", "testbed", "both"], default="both")
    parser.add_argument("--profile", action="store_true", help="also profile one testbed run and time the imports")
    parser.add_argument("--top", type=int, default=0, help="with --profile: also print the top N functions by cumulative time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="testbed-overhead-"))
    try:
        toml = work / "overhead.toml"
        toml.write_text(EXPERIMENT.format(train=args.train, test=args.test, batch=args.batch))
        lrns = ["torch", "testbed"] if args.plain_lrn == "both" else [args.plain_lrn]
        commands = {"testbed run": None, **{f"plain ({lrn} LRN)": plain_command(args, lrn) for lrn in lrns}}
        walls: dict[str, list[float]] = {name: [] for name in commands}
        cpus: dict[str, list[float]] = {name: [] for name in commands}
        inner: dict[str, list[float]] = {name: [] for name in commands}
        startup, _ = timed([sys.executable, "-c", "import torch"])
        for r in range(args.rounds):
            names = list(commands) if r % 2 == 0 else list(reversed(commands))
            for name in names:
                cmd = commands[name] or testbed_command(toml, work / f"run-{r}")
                wall, cpu, stdout = timed_cpu(cmd)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if name.startswith("plain"):
                    inner[name].append(json.loads(stdout.strip().splitlines()[-1])["train_s"])
                print(f"round {r + 1}/{args.rounds}: {name:<22} {wall:6.2f} s wall, {cpu:6.2f} s CPU", file=sys.stderr)
        if args.rounds:
            report(args, walls, cpus, inner, startup)
        if args.profile:
            profile(toml, work, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
