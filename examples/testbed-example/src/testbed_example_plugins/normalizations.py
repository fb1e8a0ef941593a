"""Normalization: a factory takes the channel count it normalizes (per tower) and its parameters."""

from __future__ import annotations

from torch import nn


def groupnorm(channels: int, *, groups: int = 8, eps: float = 1e-5, affine: bool = True):
    # `channels` is positional: context from the model builder, not a user parameter. With a
    # two-tower placement (grouped, two-device) each tower gets its own module over its own
    # half of the maps, so `channels` is the per-tower count (e.g. 48 for conv1 at width 1).
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if channels % groups:
        divisors = [d for d in range(1, channels + 1) if channels % d == 0]
        raise ValueError(
            f"groups = {groups} does not divide the {channels} channels of this layer (per tower); "
            f"choose one of {', '.join(map(str, divisors))}"
        )
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return nn.GroupNorm(groups, channels, eps=eps, affine=affine)
