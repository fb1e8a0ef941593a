"""Input preprocessing: the paper's mean subtraction, standardization, or nothing.

How soon a saturating unit saturates depends on the input scale, so this is a switch
(and recorded with every result), not a hidden constant.
"""

from __future__ import annotations

import torch

from testbed import hookimpl
from testbed.data import DataStats, Preprocess


class SubtractMean(Preprocess):
    """Section 2: subtract the per-pixel mean of the training set; raw 0-255 scale kept."""

    def __init__(self, stats: DataStats):
        self.mean = stats.pixel_mean
        self.pixel_scale = torch.ones(3)

    def apply(self, x):
        if x.shape[-2:] != self.mean.shape[-2:]:
            raise ValueError("image size differs from the training set's")
        return x - self.mean


class Standardize(Preprocess):
    """Per-channel mean and standard deviation: the modern default (inputs ~ unit variance)."""

    def __init__(self, stats: DataStats):
        self.mean = stats.channel_mean.view(3, 1, 1)
        self.inv_std = (1.0 / stats.channel_std).view(3, 1, 1)
        self.pixel_scale = self.inv_std.flatten()

    def apply(self, x):
        return (x - self.mean) * self.inv_std


class Raw(Preprocess):
    """Raw pixel values, 0-255."""

    def __init__(self, stats: DataStats):
        self.pixel_scale = torch.ones(3)

    def apply(self, x):
        return x


@hookimpl
def register_preprocessors(register):
    register("mean", SubtractMean, "subtract the per-pixel training-set mean, keep the 0-255 scale (the paper, section 2)")
    register("standardize", Standardize, "per-channel (x - mean) / std over the training set (the modern default)")
    register("none", Raw, "raw pixel values 0-255")
