"""What a job's seed varies. Bouthillier et al. (MLSys 2021, "Accounting for Variance in Machine
Learning Benchmarks") name the sources of variation between runs: the data split or subset,
the initial weights, the data order, augmentation, dropout, and numerical noise. They find
that the data split dominates and that randomizing many sources at once estimates the spread
a reader will meet better than varying one, and recommend randomizing as many as possible.
So by default (``train.seed_varies``) seed k changes all five that testbed controls; a source
left out takes the same draw for every seed (seed 0's). Numerical noise is not a choice: on a
CPU training is deterministic, on a GPU nondeterministic kernels add it to every run.

Seed k draws the same for the baseline and every variant (the same subset, data order,
augmentation stream and, where the shapes agree, the same initial weights), which is what
lets the verdicts pair the runs seed by seed.
"""

from __future__ import annotations

import random

import torch

SOURCES = ("subset", "init", "order", "augmentation", "dropout")
DEFAULT = list(SOURCES)


def job_seeds(seed: int, varies, data_seed: int) -> dict[str, int]:
    """The seed each source draws from in the job with training seed ``seed``. The subset seed
    is the data's own (``data.seed``), moved by the training seed when the subset varies; it
    also generates synthetic data, so there each seed trains and tests on its own sample."""
    varies = set(varies)

    def own(source: str) -> int:
        return seed if source in varies else 0

    subset = (data_seed * 1_000_003 + seed * 7919 + 1) % 2**31 if "subset" in varies and seed else data_seed
    return {"subset": subset, "init": own("init"), "order": own("order"), "augmentation": own("augmentation"), "dropout": own("dropout")}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed % 2**32)
    except ImportError:
        pass


def seed_dropout(seeds: dict[str, int], rank: int = 0, world: int = 1) -> None:
    """After the model is built: the global stream dropout (and anything else drawn during
    training) uses. With init and dropout drawn from one seed it simply goes on from the init's
    draws, as a plain PyTorch script does; DDP ranks each get their own masks."""
    if world > 1:
        torch.manual_seed(seeds["dropout"] * 1_000_003 + rank)
    elif seeds["dropout"] != seeds["init"]:
        torch.manual_seed(seeds["dropout"] * 1_000_003 + 17)
