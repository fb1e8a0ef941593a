"""Seeds added until each question is answered (`run --until-resolved --max-seeds N`) and seeds
added to a finished run (`resume DIR --seeds N`): the rounds' bookkeeping on hand-made
summaries, and, on generated data, that a round grows only the variants still open, that the
run stops at the maximum, and that the stopping point is where scipy's paired t-test, Holm's
rule and the planned looks (written out here) say the question was answered."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import run_testbed
from scipy import stats

from testbed import rounds
from testbed.errors import BadInput
from testbed.experiment import Experiment, Variant


def experiment(seeds: dict) -> Experiment:
    variants = tuple(Variant(name, {"train": {"seeds": s}}, {}, {}) for name, s in seeds.items())
    return Experiment("x", "x.toml", variants)


def summary(verdicts: dict, seeds: dict) -> dict:
    """A summary as results.summarize shapes it: verdict None = no delta (no finished seed)."""
    entries = [{"name": "baseline", "metrics": {"top1_error": {"values": [0.5] * len(seeds["baseline"])}}, "delta_vs_baseline": {}}]
    for name, verdict in verdicts.items():
        delta = {"top1_error": {"verdict": verdict}} if verdict else {}
        entries.append({"name": name, "metrics": {"top1_error": {"values": [0.5] * len(seeds[name])}}, "delta_vs_baseline": delta})
    return {"variants": entries}


def test_a_round_grows_the_baseline_and_the_open_variants_only():
    seeds = {"baseline": [0, 1], "open": [0, 1], "worse": [0, 1], "broken": [0, 1]}
    planned = rounds.plan(experiment(seeds), 4)
    assert planned.report["looks"] == 3 and planned.report["max_seeds"] == 4
    grown, names = rounds.next_round(planned, summary({"open": "inconclusive", "worse": "worse", "broken": None}, seeds))
    assert names == ["open"]
    assert rounds.seeds_of(grown) == {"baseline": [0, 1, 2], "open": [0, 1, 2], "worse": [0, 1], "broken": [0, 1]}


def test_rounds_stop_at_the_maximum_and_when_nothing_is_open():
    seeds = {"baseline": [0, 1, 2], "open": [0, 1, 2]}
    planned = rounds.plan(experiment(seeds), 3)
    assert rounds.next_round(planned, summary({"open": "inconclusive"}, seeds)) is None
    planned = rounds.plan(experiment(seeds), 5)
    assert rounds.next_round(planned, summary({"open": "better"}, seeds)) is None


def test_added_seeds_keep_the_ones_a_variant_has():
    assert rounds.grown([0, 3], 4) == [0, 3, 1, 2]
    assert rounds.grown([0, 1, 2], 2) == [0, 1, 2]
    assert rounds.seeds_of(rounds.add_seeds(experiment({"baseline": [0], "v": [5]}), 3)) == {"baseline": [0, 1, 2], "v": [5, 0, 1]}


def test_a_maximum_below_the_seeds_already_run_is_bad_input():
    with pytest.raises(BadInput, match="--max-seeds 2: expected 3..1000"):
        rounds.plan(experiment({"baseline": [0, 1, 2]}), 2)
    with pytest.raises(BadInput, match="--seeds 0"):
        rounds.add_seeds(experiment({"baseline": [0]}), 0)


TINY = """
name = "rounds"
[data]
dataset = "synthetic"
train_size = 256
test_size = 64
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
normalization = "none"
dropout = 0.0
[augment]
train = []
test = "center"
[train]
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.002, momentum = 0.9 }
schedule = "constant"
seeds = 2

[[variant]]
name = "lr-100x-smaller"
train.optimizer.lr = 0.00002

[[variant]]
name = "no-change"
train.eval_batch_size = 50
"""
MAX = 4


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    file = tmp / "rounds.toml"
    file.write_text(TINY)
    proc = run_testbed("run", file, "--out", tmp / "run", "--until-resolved", "--max-seeds", str(MAX), "--json")
    assert proc.returncode == 0, proc.stderr
    return tmp, json.loads(proc.stdout), proc.stderr


def first_resolving_look(variant: list, baseline: list, family: int, alpha: float) -> int | None:
    """The smallest k >= 2 at which the paired t-test on the first k seeds, Holm-adjusted over the
    family (the smallest p is multiplied by the family's size), rejects at alpha."""
    for k in range(2, len(variant) + 1):
        p = stats.ttest_rel(variant[:k], baseline[:k]).pvalue
        if min(1.0, family * p) <= alpha:
            return k
    return None


def test_until_resolved_adds_seeds_only_where_a_verdict_is_open_and_stops_at_the_maximum(resolved):
    _, doc, stderr = resolved
    by = {v["name"]: v for v in doc["variants"]}
    assert by["baseline"]["seeds"] == list(range(MAX))
    # changes nothing training depends on: never resolved, so it grows to the maximum and stops
    assert by["no-change"]["seeds"] == list(range(MAX))
    assert by["no-change"]["delta_vs_baseline"]["top1_error"]["verdict"] == "inconclusive"
    # the crippled variant stops growing at the first look whose test rejects: 3 planned looks
    # (2, 3, 4 seeds) share alpha; Holm over the 2 variants, where no-change is never rejected
    crippled = by["lr-100x-smaller"]
    values = crippled["metrics"]["top1_error"]["values"]
    base = by["baseline"]["metrics"]["top1_error"]["values"]
    assert doc["statistics"]["looks"] == MAX - 2 + 1
    stop = first_resolving_look(values, base, family=2, alpha=0.05 / 3)
    assert stop is not None and len(values) == stop, (values, base)
    assert crippled["delta_vs_baseline"]["top1_error"]["verdict"] == "worse"
    rounds_grown = [line for line in stderr.splitlines() if line.startswith("next round:")]
    assert len(rounds_grown) == MAX - 2
    assert sum("lr-100x-smaller" in line for line in rounds_grown) == stop - 2


def finished_jobs(run) -> dict:
    with sqlite3.connect(run / "results.sqlite") as db:
        return {
            (v, s): (status, finished, metrics)
            for v, s, status, finished, metrics in db.execute("SELECT variant, seed, status, finished, metrics FROM jobs")
        }


def test_resume_adds_seeds_to_a_finished_run_without_retraining_any(resolved):
    tmp, doc, _ = resolved
    before = finished_jobs(tmp / "run")
    proc = run_testbed("resume", tmp / "run", "--seeds", str(MAX), "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    after = finished_jobs(tmp / "run")
    assert {key: after[key] for key in before} == before  # not one job trained again
    by = {v["name"]: v for v in json.loads(proc.stdout)["variants"]}
    assert all(by[name]["seeds"] == list(range(MAX)) for name in by)
    assert {key for key in after if key not in before} == {("lr-100x-smaller", s) for s in range(len(doc["variants"][1]["seeds"]), MAX)}
    assert all(after[key][0] == "ok" for key in after)
