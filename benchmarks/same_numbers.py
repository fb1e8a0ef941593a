"""Do two versions of testbed train to the same numbers? Every shipped experiment file, at a
reduced budget (every variant, two seeds, a few hundred images, two epochs), run by one
testbed installation; the per-epoch rows and final metrics (timings left out) go to a JSON file.
Two such files from two installations are then compared value by value, exactly.

    # with the reference installation (e.g. a venv of an older commit):
    /path/to/ref/.venv/bin/python benchmarks/same_numbers.py dump /tmp/ref.json
    # with this one:
    python benchmarks/same_numbers.py dump /tmp/new.json
    python benchmarks/same_numbers.py compare /tmp/ref.json /tmp/new.json

A refactoring must leave every number identical on a CPU; a change that is meant to alter
results (a new default, a faster kernel with another summation order) shows here how far.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "train.epochs=2", "--set", "data.train_size=600", "--set", "data.test_size=300", "--seeds", "2"]
# file -> extra arguments; the paper-imagenet file needs ImageNet, so its 227 px model runs on generated data
RUNS = {
    "experiments/smoke.toml": ["--seeds", "2"],
    "experiments/paper.toml": SMALL,
    "experiments/lrn-cifar.toml": SMALL,
    "experiments/relu-vs-tanh.toml": SMALL,
    "experiments/paper-imagenet.toml": [
        "--set",
        "data.dataset=synthetic",
        "--set",
        "data.classes=10",
        "--set",
        "data.train_size=64",
        "--set",
        "data.test_size=20",
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=16",
        "--set",
        "model.width=0.125",
        "--seeds",
        "1",
    ],
}
TIMINGS = {"train_s", "eval_s", "images_per_s", "train_images_per_s", "time_to_target_s", "train_time_s"}


def dump(out: Path, python: str, only: list[str], extra_args: list[str] = ()) -> None:
    result = {}
    env = {
        **os.environ,
        "TESTBED_DISABLE_PLUGIN_AUTOLOAD": "1",
        "TESTBED_DATA": str(Path(os.environ.get("TESTBED_DATA", REPO.parent / "shared" / "datasets")).resolve()),
    }
    for file, extra in RUNS.items():
        if only and not any(o in file for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            cmd = [python, "-m", "testbed", "run", str(REPO / file), "--out", str(run_dir), "--json", "-q", *extra, *extra_args]
            print("+", " ".join(cmd), file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)  # not REPO: -m would import its testbed
            if proc.returncode not in (0, 1):
                sys.exit(f"{file}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
            report = subprocess.run(
                [python, "-m", "testbed", "report", str(run_dir), "--json"], capture_output=True, text=True, env=env, cwd=tmp
            )
            doc = json.loads(report.stdout)
            result[file] = {
                "variants": {
                    v["name"]: {"status": v["status"], "metrics": {m: s["values"] for m, s in v["metrics"].items() if m not in TIMINGS}}
                    for v in doc["variants"]
                },
                "epochs": _epochs(run_dir),
            }
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}", file=sys.stderr)


def _epochs(run_dir: Path) -> list:
    import sqlite3

    db = sqlite3.connect(run_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    rows = db.execute(
        "SELECT variant, seed, epoch, train_loss, train_error, test_top1, test_top5, lr FROM epochs ORDER BY variant, seed, epoch"
    )
    return [dict(r) for r in rows]


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    differ = 0
    for file in sorted(set(left) | set(right)):
        if file not in left or file not in right:
            print(f"{file}: only in {'the first' if file in left else 'the second'}")
            differ += 1
            continue
        rows_a, rows_b = left[file]["epochs"], right[file]["epochs"]
        bad = [(x, y) for x, y in zip(rows_a, rows_b) if x != y]
        if len(rows_a) != len(rows_b):
            print(f"{file}: {len(rows_a)} vs {len(rows_b)} epoch rows")
            differ += 1
        if bad:
            x, y = bad[0]
            print(f"{file}: {len(bad)} of {len(rows_a)} epoch rows differ; first: {x} vs {y}")
            differ += 1
        if left[file]["variants"] != right[file]["variants"]:
            print(f"{file}: final metrics differ")
            differ += 1
        if not bad and len(rows_a) == len(rows_b) and left[file]["variants"] == right[file]["variants"]:
            print(f"{file}: identical ({len(rows_a)} epoch rows, {len(left[file]['variants'])} variants)")
    return 1 if differ else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="run every shipped experiment small and write its numbers")
    d.add_argument("out", type=Path)
    d.add_argument("--python", default=sys.executable, help="the interpreter of the testbed installation to run")
    d.add_argument("--only", nargs="*", default=[], help="only files whose path contains one of these")
    d.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra --set for every run (e.g. to keep an older default: train.seed_varies=[...])",
    )
    c = sub.add_parser("compare", help="compare two dumps exactly")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "dump":
        dump(args.out, args.python, args.only, [a for s in args.sets for a in ("--set", s)])
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
