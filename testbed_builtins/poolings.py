"""Pooling: the paper's overlapping max-pooling, its non-overlapping comparison, and average pooling.

All map 55->27->13->6 (227 px) and 32->16->8->4 (32 px), so a variant changes only the
pooling, never the shapes of the layers after it. ``ceil_mode`` does that for z=3 at 32 px
and changes nothing at 227 px, where (55-3)/2, (27-3)/2 and (13-3)/2 are whole numbers.
"""

from __future__ import annotations

from torch import nn

from testbed import hookimpl


def overlapping():
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


def non_overlapping():
    return nn.MaxPool2d(kernel_size=2, stride=2)


def avg():
    return nn.AvgPool2d(kernel_size=3, stride=2, ceil_mode=True)


@hookimpl
def register_poolings(register):
    register("overlapping", overlapping, "max-pool z=3, s=2: the paper's overlapping pooling (section 3.4)")
    register("non-overlapping", non_overlapping, "max-pool z=2, s=2: the paper's comparison, same output sizes")
    register("avg", avg, "average-pool z=3, s=2")
