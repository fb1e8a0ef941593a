"""Goal 1 of performance round two: what LRN costs a whole `testbed run`, not only a step.

Two experiments that differ only in model.normalization (lrn vs none): CIFAR-10 (a small
balanced subset), the 32 px geometry at width 0.25, random crop + flip, ten-crop testing, one
epoch. Each round launches both as fresh `testbed run` processes, in alternating order, and
records per process its wall time, its CPU time (user + system, from wait4) and, from the job's
checkpoint, the split the runner itself measured: training seconds, evaluation seconds (the
held-out pass with ten views), and the rest (start-up, data loading, plots, store).

Reported: the median over rounds of each, and the LRN / none ratios of the medians. On a
shared machine CPU time is the steadier figure (another process's load inflates wall time,
hardly the CPU time of a one-thread run); `--threads 1` (the default) makes it so.

    TESTBED_DATA=../shared/datasets python benchmarks/whole_run_lrn.py                # 3 rounds
    TESTBED_DATA=../shared/datasets python benchmarks/whole_run_lrn.py --rounds 5 --train-size 2000 --epochs 2
    python benchmarks/whole_run_lrn.py --dataset synthetic                             # no CIFAR-10 needed
    git archive b9805f4 | tar -x -C /tmp/before && python benchmarks/whole_run_lrn.py --code /tmp/before  # an older checkout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
name = "whole-run-lrn"
description = "LRN vs none, whole runs: 32 px, width 0.25, ten-crop testing."

[data]
dataset = "{dataset}"
{image_size}train_size = {train}
test_size = {test}
preprocess = "standardize"

[model]
geometry = "cifar"
width = 0.25
normalization = "{normalization}"
init = "kaiming"

[augment]
train = [{{ name = "random-crop", padding = 4 }}, "hflip"]
test = {{ name = "ten-crop", padding = 4 }}

[train]
epochs = {epochs}
batch_size = {batch}
eval_batch_size = {eval_batch}
optimizer = {{ name = "sgd", lr = 0.01, momentum = 0.9 }}
seeds = 1
"""


def run_once(toml: Path, out: Path, threads: int, code: str | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if code:  # another checkout's testbed and built-ins first on the path
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "testbed", "run", str(toml), "--out", str(out), "--force", "--json", "-q"]
    tick = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - tick
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"testbed run failed ({proc.returncode}):\n{stderr.decode()[-2000:]}")
    import torch

    history = torch.load(out / "checkpoints" / "baseline" / "seed-0.pt", weights_only=False)["history"]
    train_s = sum(r["train_s"] for r in history)
    eval_s = sum(r["eval_s"] for r in history)
    images = sum(r["images"] for r in history)
    json.loads(stdout)  # one document, as --json promises
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "train_s": train_s,
        "eval_s": eval_s,
        "other_s": wall - train_s - eval_s,
        "train_images_per_s": images / train_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dataset", default="cifar10", help="cifar10 (needs TESTBED_DATA) or synthetic")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (OMP_NUM_THREADS)")
    parser.add_argument("--code", metavar="DIR", help="run the testbed of another checkout (its root folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="whole-run-lrn-"))
    files = {}
    for norm in ("lrn", "none"):
        files[norm] = work / f"{norm}.toml"
        files[norm].write_text(
            EXPERIMENT.format(
                dataset=args.dataset,
                image_size="image_size = 32\n" if args.dataset == "synthetic" else "",
                train=args.train_size,
                test=args.test_size,
                normalization=norm,
                epochs=args.epochs,
                batch=args.batch,
                eval_batch=args.eval_batch,
            )
        )
    results: dict[str, list[dict]] = {"lrn": [], "none": []}
    for r in range(args.rounds):
        for norm in ("lrn", "none") if r % 2 == 0 else ("none", "lrn"):
            wait_for_idle(10.0)
            results[norm].append(run_once(files[norm], work / f"run-{norm}", args.threads, args.code))
            m = results[norm][-1]
            print(
                f"  round {r + 1}/{args.rounds} {norm:<4}: wall {m['wall_s']:.1f} s, cpu {m['cpu_s']:.1f} s, "
                f"train {m['train_s']:.1f} s, eval {m['eval_s']:.1f} s",
                file=sys.stderr,
            )
    keys = ("wall_s", "cpu_s", "train_s", "eval_s", "other_s", "train_images_per_s")
    medians = {n: {k: statistics.median(m[k] for m in ms) for k in keys} for n, ms in results.items()}
    ratios = {k: medians["lrn"][k] / medians["none"][k] for k in keys if k != "train_images_per_s"}
    doc = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "rounds": args.rounds,
        "setup": vars(args),
        "median": medians,
        "lrn_over_none": ratios,
        "load_average": os.getloadavg(),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(
        f"whole `testbed run`, {args.dataset} {args.train_size}+{args.test_size} images, {args.epochs} epoch(s), "
        f"batch {args.batch}, ten-crop, {args.threads} thread(s); median of {args.rounds} alternating rounds"
    )
    print(f"  {'':<6}" + "".join(f"{k:>12}" for k in keys[:-1]) + f"{'train img/s':>13}")
    for n in ("lrn", "none"):
        print(f"  {n:<6}" + "".join(f"{medians[n][k]:>12.2f}" for k in keys[:-1]) + f"{medians[n]['train_images_per_s']:>13.0f}")
    print(f"  {'ratio':<6}" + "".join(f"{ratios[k]:>11.3f}x" for k in keys[:-1]))
    print(f"  load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
