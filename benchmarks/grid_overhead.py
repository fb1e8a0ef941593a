"""The driver's overhead under the `dask` executor: a grid of many tiny jobs (each a second or
so of training), run serially and on local Dask clusters, whole `testbed run` processes timed
from launch to exit, alternating, several rounds; medians.

    python benchmarks/grid_overhead.py                  # 24 tiny jobs, 3 rounds
    python benchmarks/grid_overhead.py --jobs 48 --rounds 5

Per configuration it prints the wall time, the time per job, and its ratio to serial. With
`--threads-per-worker` equal to the serial run's threads (the default of --workers) the jobs
compute exactly what the serial ones do; with one thread per worker the workers divide the
cores (the numbers then differ in the last digits, see the README).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import wait_for_idle  # noqa: E402

TINY = """
name = "tiny-grid"
[data]
dataset = "synthetic"
image_size = 32
train_size = 128
test_size = 64
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.0625
init = "kaiming"
[augment]
train = []
test = "center"
[train]
epochs = 1
batch_size = 32
optimizer = {{ name = "sgd", lr = 0.01 }}
schedule = "constant"
seeds = {seeds}
"""


def timed_run(toml: Path, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "testbed", "run", str(toml), "--out", str(out), "--force", "-q", "--json", *extra]
    env = {**os.environ, "TESTBED_DISABLE_PLUGIN_AUTOLOAD": "1"}
    wait_for_idle()
    tick = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - tick
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=24, help="tiny jobs in the grid (seeds of one variant)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = str(os.cpu_count() or 1)
    configs = {
        "serial": [],
        "dask, 1 worker": ["--workers", "1"],
        f"dask, 2 workers x {threads} threads": ["--workers", "2"],
        "dask, 2 workers x 1 thread": ["--workers", "2", "--threads-per-worker", "1"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "tiny.toml"
        toml.write_text(TINY.format(seeds=args.jobs))
        walls: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(args.rounds):
            for name, extra in configs.items() if r % 2 == 0 else reversed(configs.items()):
                walls[name].append(timed_run(toml, Path(tmp) / "run", extra))
                print(f"round {r + 1}: {name}: {walls[name][-1]:.1f} s", file=sys.stderr, flush=True)
    serial = statistics.median(walls["serial"])
    print(f"\n{args.jobs} tiny jobs (1 epoch of 128 generated images each), {args.rounds} rounds, medians, {os.cpu_count()} CPUs:")
    print(f"{'configuration':<34} {'wall s':>8} {'s per job':>10} {'vs serial':>10}")
    for name, values in walls.items():
        median = statistics.median(values)
        print(f"{name:<34} {median:8.1f} {median / args.jobs:10.2f} {median / serial:9.2f}x")
    print(f"\ncommand: python benchmarks/grid_overhead.py --jobs {args.jobs} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
