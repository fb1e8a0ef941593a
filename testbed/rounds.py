"""Seeds added in rounds until every question of a table is answered (`--until-resolved`), and
seeds added to a finished run (`resume DIR --seeds N`): both grow the experiment's seed lists
and let the runner train only the jobs that are new.

A question is a variant's top-1 error against the baseline. After each round, a variant whose
verdict is still ``inconclusive`` (and that has fewer than the maximum of seeds) gets its next
seed, and so does the baseline, so that seed k keeps pairing the two. Every round is one more
look at the data: the run plans ``max_seeds - initial seeds + 1`` looks and splits alpha over
them (Bonferroni, in ``verdicts.Settings``), so stopping at the first significant look keeps
the table's level. The plan is stored with the experiment (``report.looks`` and
``report.max_seeds``), so `resume` continues the rounds and `report` judges alike.
"""

from __future__ import annotations

import dataclasses

from testbed.errors import BadInput
from testbed.experiment import Experiment

MAX_SEEDS = 1000
QUESTION = "top1_error"  # the metric whose verdict decides whether a variant is resolved


def seeds_of(experiment: Experiment) -> dict[str, list[int]]:
    return {v.name: list(v.config["train"]["seeds"]) for v in experiment.variants}


def with_seeds(experiment: Experiment, seeds: dict[str, list[int]]) -> Experiment:
    variants = tuple(
        dataclasses.replace(v, config={**v.config, "train": {**v.config["train"], "seeds": seeds[v.name]}}) for v in experiment.variants
    )
    return dataclasses.replace(experiment, variants=variants)


def grown(seeds: list[int], count: int) -> list[int]:
    """``seeds`` followed by the next unused seeds, until there are ``count`` (never fewer than now)."""
    out = list(seeds)
    candidate = 0
    while len(out) < count:
        if candidate not in out:
            out.append(candidate)
        candidate += 1
    return out


def check_max_seeds(max_seeds: int, experiment: Experiment, option: str = "--max-seeds") -> None:
    most = max(len(s) for s in seeds_of(experiment).values())
    if not most <= max_seeds <= MAX_SEEDS:
        raise BadInput(f"{option} {max_seeds}: expected {most}..{MAX_SEEDS} (the experiment already runs {most} seeds per variant)")


def plan(experiment: Experiment, max_seeds: int) -> Experiment:
    """The experiment with its rounds planned: looks = every round that could still add a seed, + 1."""
    check_max_seeds(max_seeds, experiment)
    fewest = min(len(s) for s in seeds_of(experiment).values())
    report = {**experiment.report, "max_seeds": max_seeds, "looks": max_seeds - fewest + 1}
    return dataclasses.replace(experiment, report=report)


def open_questions(doc: dict, max_seeds: int) -> list[str]:
    """The variants whose verdict is still inconclusive and that may get another seed. A variant
    without a verdict because it has no finished seed (every seed failed) is not open: more seeds
    of a broken variant answer nothing."""
    open_ = []
    for entry in doc["variants"][1:]:
        delta = (entry.get("delta_vs_baseline") or {}).get(QUESTION)
        if delta and delta.get("verdict") == "inconclusive" and len(entry["metrics"][QUESTION]["values"]) < max_seeds:
            open_.append(entry["name"])
    return open_


def next_round(experiment: Experiment, doc: dict) -> tuple[Experiment, list[str]] | None:
    """The experiment with one more seed for every open variant and for the baseline (up to the
    maximum), and the names that grew; None when every question is answered or at its maximum."""
    max_seeds = experiment.report["max_seeds"]
    grow = open_questions(doc, max_seeds)
    if not grow:
        return None
    seeds = seeds_of(experiment)
    for name in ["baseline", *grow]:
        if len(seeds[name]) < max_seeds:
            seeds[name] = grown(seeds[name], len(seeds[name]) + 1)
    return with_seeds(experiment, seeds), grow


def add_seeds(experiment: Experiment, count: int) -> Experiment:
    """Every variant with at least ``count`` seeds: its own first, then the next unused ones."""
    if not 1 <= count <= MAX_SEEDS:
        raise BadInput(f"--seeds {count}: expected 1..{MAX_SEEDS}")
    return with_seeds(experiment, {name: grown(s, count) for name, s in seeds_of(experiment).items()})
