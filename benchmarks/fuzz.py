"""Fuzz experiment files by the thousand: the strategies of tests/test_fuzz.py (files drawn
from the real schema, mutated, their text damaged, with `--set` strings), each case run
through `testbed show`'s own entry in this process. Prints the counts: cases, exit 0, exit 2,
failures (anything else: another exit code, a traceback, an exit 2 whose stderr is not one
line), and the first few failures with the file that caused them.

    python benchmarks/fuzz.py                 # 3000 cases
    python benchmarks/fuzz.py --cases 10000 --seed 7
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TESTBED_DISABLE_PLUGIN_AUTOLOAD", "1")  # the built-ins, as the tests see them

from fuzz_strategies import cases, outcome  # noqa: E402
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from testbed import plugins  # noqa: E402


def counts_line(counts: Counter, elapsed: float) -> str:
    return (
        f"cases {counts['cases']}  exit 0 {counts['exit 0']}  exit 2 {counts['exit 2']}  failures {counts['failures']}  "
        f"({elapsed:.0f} s, {elapsed / max(counts['cases'], 1) * 1000:.0f} ms a case)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=5, help="failures to print in full")
    parser.add_argument("--every", type=int, default=500, help="print the counts so far every N cases")
    args = parser.parse_args()
    registry = plugins.registry()
    counts: Counter = Counter()
    failures: list[tuple[str, object]] = []
    path = Path(tempfile.mkdtemp()) / "fuzz.toml"
    start = time.monotonic()

    @seed(args.seed)
    @settings(
        max_examples=args.cases,
        database=None,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=["generate"],
    )
    @given(cases(registry))
    def one(case):
        code, failure = outcome(case, path)
        counts["cases"] += 1
        if failure is not None:
            counts["failures"] += 1
            failures.append((failure, case))
        else:
            counts[f"exit {code}"] += 1
        if counts["cases"] % args.every == 0:
            print(f"  ... {counts_line(counts, time.monotonic() - start)}", flush=True)

    one()
    print(counts_line(counts, time.monotonic() - start))
    for failure, case in failures[: args.show]:
        print(f"\n--- {failure}\nargs: {case.sets!r}\n{case.text!r}"[:3000])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
