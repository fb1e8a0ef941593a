"""Architecture: a whole network. The factory's keyword-only arguments are its parameters; it
returns a ``testbed.model.Architecture`` whose ``build(request)`` makes the module from the slot
factories testbed hands in (``request.slots``): the net decides where activations and pooling
go, the experiment decides which ones."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from testbed.model import Architecture, NetPlan, NetRequest


class TinyCNN(nn.Module):
    def __init__(self, request: NetRequest, width: int):
        super().__init__()
        slots = request.slots
        # testbed reads `plan` (the input size the pipeline crops to) and `shown_layers` (`testbed show`)
        self.plan = NetPlan("tiny-cnn", request.image_size)
        self.shown_layers = ("conv1", "pool1", "conv2", "fc3")
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(3, width, 3, padding=1)),
                    ("act1", slots.activation()),
                    ("pool1", slots.pooling()),
                    ("conv2", nn.Conv2d(width, 2 * width, 3, padding=1)),
                    ("act2", slots.activation()),
                ]
            )
        )
        self.fc3 = nn.Linear(2 * width, request.classes)  # after a global average: any input size works

    def forward(self, x):
        return self.fc3(self.features(x).mean(dim=(2, 3)))


class Tiny(Architecture):
    towers = (1,)  # one tower: a placement asking for two is refused

    def __init__(self, width: int):
        self.width = width

    def build(self, request: NetRequest) -> nn.Module:
        return TinyCNN(request, self.width)


def tiny_cnn(*, width: int = 16):
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    return Tiny(width)


# What the experiment may set besides model.architecture, and the net's own defaults for keys it leaves out.
TINY_SLOTS = ("activation", "pooling", "init", "placement")
TINY_DEFAULTS = {"init": "kaiming", "placement": "single", "normalization": "none", "dropout": 0.0}
