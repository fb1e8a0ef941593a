"""Architectures: the paper's AlexNet and the authors' two CIFAR-10 nets (cuda-convnet's example
layer files, ../shared/paper.md "The authors' CIFAR-10 nets").

- ``alexnet``: the testbed's AlexNet (the paper's table at 227 px, its 32 px twin), every slot.
- ``convnet-18pct``: the net of Figure 1 (layers-18pct): three 5x5 convs and one FC layer,
  max-pool then average pools, same-map response normalization after the first two.
- ``conv-local``: the net of the LRN claim (layers-conv-local-11pct/13pct) on 24x24 crops: two
  5x5 convs, two locally connected 3x3 layers, one FC layer; cross-map LRN after each conv
  (normalization = "none" removes both: the 13pct net, with ``local_filters = [32, 32]``).

Their slots: activation (after every hidden weight layer), normalization (where the authors
normalized), pooling (the max-pools; 18pct's average pools belong to the net), init, placement
(one tower only). They have no hidden FC layer, so no dropout, and no geometry, width or skip.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from testbed import hookimpl
from testbed.model import Architecture, NetPlan, NetRequest, build_alexnet


class AlexNetArchitecture(Architecture):
    towers = (1, 2)

    def build(self, request: NetRequest) -> nn.Module:
        return build_alexnet(request)


class LocallyConnected2d(nn.Module):
    """A convolution whose weights are not shared across positions: output position (i, j) has
    its own filter bank ``weight[i, j]`` of shape [out_channels, in_channels, k, k], and its own
    biases ``bias[:, i, j]`` (cuda-convnet's unshared ``local`` layer keeps a bias per position
    and filter). The input size is fixed at construction.

    Forward: the input's k x k patches (``F.unfold``: [B, C*k*k, L], L = out_h * out_w) times each
    position's [C*k*k, O] matrix, as one batched matmul over the L positions on contiguous operands
    (measured against einsum in benchmarks/locally_connected.py)."""

    def __init__(self, in_channels: int, out_channels: int, input_size: int, kernel_size: int, padding: int = 0, stride: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding, self.stride = kernel_size, padding, stride
        self.input_size = input_size
        self.output_size = (input_size + 2 * padding - kernel_size) // stride + 1
        if self.output_size < 1:
            raise ValueError(f"a {kernel_size}x{kernel_size} locally connected layer leaves nothing of a {input_size} px input")
        h = w = self.output_size
        self.weight = nn.Parameter(torch.empty(h, w, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels, h, w))
        bound = 1 / math.sqrt(in_channels * kernel_size * kernel_size)  # PyTorch's conv default, per position
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        batch = x.shape[0]
        h = w = self.output_size
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # [B, C*k*k, L]
        # contiguous operands: bmm on the permuted views was 17x slower on this CPU (benchmarks/locally_connected.py)
        patches = patches.permute(2, 0, 1).contiguous()  # [L, B, C*k*k]
        weight = self.weight.reshape(h * w, self.out_channels, -1).transpose(1, 2).contiguous()  # [L, C*k*k, O]
        out = torch.bmm(patches, weight)  # [L, B, O]
        return out.permute(1, 2, 0).reshape(batch, self.out_channels, h, w) + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, kernel_size={self.kernel_size}, "
            f"padding={self.padding}, stride={self.stride}"
        )


def _flat_size(features: nn.Module, channels: int, size: int) -> int:
    probe = copy.deepcopy(features).to("meta")
    with torch.no_grad():
        return probe(torch.empty(1, channels, size, size, device="meta"))[0].numel()


def _average_pool() -> nn.Module:
    """cuda-convnet's avg pool 3/2: output ceil((in - 3) / 2) + 1, the window clipped at the edge."""
    return nn.AvgPool2d(kernel_size=3, stride=2, ceil_mode=True)


class ConvNet(nn.Module):
    """A feature stack and one FC layer (``fc10``), as both cuda-convnet nets end."""

    def __init__(self, plan: NetPlan, features: OrderedDict[str, nn.Module], classes: int, shown: tuple[str, ...]):
        super().__init__()
        self.plan = plan
        self.shown_layers = shown
        self.features = nn.Sequential(features)
        self.fc10 = nn.Linear(_flat_size(self.features, plan.in_channels, plan.input_size), classes)

    def forward(self, x):
        return self.fc10(torch.flatten(self.features(x), 1))


class Net18pct(Architecture):
    """layers-18pct: conv 5x5 pad 2 -> max-pool 3/2 -> act -> norm -> conv 5x5 pad 2, act -> avg-pool
    3/2 -> norm -> conv 5x5 pad 2, act -> avg-pool 3/2 -> fc (32/32/64 filters at 32 px)."""

    def __init__(self, filters):
        self.filters = filters

    def build(self, request: NetRequest) -> nn.Module:
        s, (f1, f2, f3) = request.slots, self.filters
        features = OrderedDict(
            [
                ("conv1", nn.Conv2d(3, f1, 5, padding=2)),
                ("pool1", s.pooling()),
                ("act1", s.activation()),
                ("norm1", s.normalization(f1)),
                ("conv2", nn.Conv2d(f1, f2, 5, padding=2)),
                ("act2", s.activation()),
                ("pool2", _average_pool()),
                ("norm2", s.normalization(f2)),
                ("conv3", nn.Conv2d(f2, f3, 5, padding=2)),
                ("act3", s.activation()),
                ("pool3", _average_pool()),
            ]
        )
        shown = ("conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "pool3", "fc10")
        return ConvNet(NetPlan("convnet-18pct", 32), features, request.classes, shown)


class ConvLocal(Architecture):
    """layers-conv-local-11pct on 24x24 crops: conv 5x5 pad 2, act -> max-pool 3/2 -> norm -> conv 5x5
    pad 2, act -> norm -> max-pool 3/2 -> local 3x3 pad 1, act -> local 3x3 pad 1, act -> fc."""

    def __init__(self, filters, local_filters):
        self.filters, self.local_filters = filters, local_filters

    def build(self, request: NetRequest) -> nn.Module:
        s, (f1, f2), (l3, l4) = request.slots, self.filters, self.local_filters
        head = OrderedDict(
            [
                ("conv1", nn.Conv2d(3, f1, 5, padding=2)),
                ("act1", s.activation()),
                ("pool1", s.pooling()),
                ("norm1", s.normalization(f1)),
                ("conv2", nn.Conv2d(f1, f2, 5, padding=2)),
                ("act2", s.activation()),
                ("norm2", s.normalization(f2)),
                ("pool2", s.pooling()),
            ]
        )
        side = math.isqrt(_flat_size(nn.Sequential(head), 3, 24) // f2)  # 6 with the paper's pooling; the slot decides
        features = OrderedDict(
            [
                *head.items(),
                ("local3", LocallyConnected2d(f2, l3, side, 3, padding=1)),
                ("act3", s.activation()),
                ("local4", LocallyConnected2d(l3, l4, side, 3, padding=1)),
                ("act4", s.activation()),
            ]
        )
        shown = ("conv1", "pool1", "norm1", "conv2", "norm2", "pool2", "local3", "local4", "fc10")
        return ConvNet(NetPlan("conv-local", 24), features, request.classes, shown)


def _positive(name: str, values) -> None:
    if any(v < 1 for v in values):
        raise ValueError(f"{name} must be >= 1, got {list(values)}")


def convnet_18pct(*, filters: tuple[int, int, int] = (32, 32, 64)):
    _positive("filters", filters)
    return Net18pct(filters)


def conv_local(*, filters: tuple[int, int] = (64, 64), local_filters: tuple[int, int] = (64, 32)):
    _positive("filters", filters)
    _positive("local_filters", local_filters)
    return ConvLocal(filters, local_filters)


CONVNET_SLOTS = ("activation", "normalization", "pooling", "init", "placement")
CONVNET_PLACEMENTS = ("single", "data-parallel")
# The authors' layer files: cuda-convnet's rnorm (size 3; scale 0.00005 and pow 0.75 from
# layer-params-18pct.cfg) and cmrnorm (size 9, scale 0.001, pow 0.75; paper.md), k = 1.
DEFAULTS_18PCT = {
    "normalization": {"name": "rnorm", "size": 3, "alpha": 5e-5, "beta": 0.75, "k": 1.0},
    "init": "cuda-convnet",
    "placement": "single",
    "dropout": 0.0,
}
DEFAULTS_CONV_LOCAL = {
    "normalization": {"name": "lrn", "size": 9, "alpha": 0.001, "beta": 0.75, "k": 1.0, "alpha_convention": "divided-by-n"},
    "init": "cuda-convnet",
    "placement": "single",
    "dropout": 0.0,
}


@hookimpl
def register_architectures(register):
    register("alexnet", AlexNetArchitecture, "the paper's AlexNet: 5 conv + 3 FC, imagenet (227 px) or cifar (32 px) geometry")
    register(
        "convnet-18pct",
        convnet_18pct,
        "the authors' Figure 1 net (cuda-convnet layers-18pct): 3 convs + 1 FC at 32 px",
        slots=CONVNET_SLOTS,
        placements=CONVNET_PLACEMENTS,
        defaults=DEFAULTS_18PCT,
    )
    register(
        "conv-local",
        conv_local,
        "the authors' LRN-claim net (layers-conv-local-11pct): 2 convs + 2 locally connected + 1 FC, 24 px",
        slots=CONVNET_SLOTS,
        placements=CONVNET_PLACEMENTS,
        defaults=DEFAULTS_CONV_LOCAL,
    )
