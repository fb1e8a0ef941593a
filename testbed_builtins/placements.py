"""Placement strategies: where the towers live and how they connect (section 3.2).

- ``single``: one tower, every conv fully connected (the torchvision way).
- ``grouped``: the paper's connectivity on one device (groups=2 in conv2, conv4, conv5).
- ``two-device``: the paper's split for real, tower A on one device and tower B on another;
  tensors cross devices only into conv3 and into the FC layers, where the paper's GPUs talked.
- ``one-gpu-half``: the paper's one-GPU comparison net (half the kernels in conv1-4).
- ``data-parallel``: the model replicated with torch DDP, launched by torchrun.
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from testbed import hookimpl
from testbed.model import AlexNet, Placement, Plan, TowerSplit


class Single(Placement):
    towers = 1


class Grouped(Placement):
    towers = 2


class OneGPUHalf(Placement):
    """Half the kernels in conv1-conv4, the full last conv layer and full FC layers (paper.md,
    footnote to section 3.2): 48/128/192/192/256 at full width, 59,798,312 parameters."""

    towers = 1

    def adapt_plan(self, plan: Plan) -> Plan:
        half = {c.name: max(2, c.out // 2) for c in plan.convs if c.name != "conv5"}
        return replace(plan.with_widths(half), towers=1)


def _split_rows(layer: nn.Module, part: int, parts: int, device) -> nn.Module:
    """A copy of a conv/linear layer keeping output rows [part] of [parts], with groups=1."""
    rows = layer.weight.shape[0] // parts
    sl = slice(part * rows, (part + 1) * rows)
    if isinstance(layer, nn.Conv2d):
        in_channels = layer.weight.shape[1]  # per group for grouped convs: exactly this tower's inputs
        new = nn.Conv2d(in_channels, rows, layer.kernel_size, layer.stride, layer.padding, device="meta", dtype=layer.weight.dtype)
    else:
        new = nn.Linear(layer.in_features, rows, device="meta", dtype=layer.weight.dtype)
    new = new.to_empty(device=device)
    with torch.no_grad():
        new.weight.copy_(layer.weight[sl])
        new.bias.copy_(layer.bias[sl])
    return new


class TwoDeviceAlexNet(nn.Module):
    """The paper's two-GPU AlexNet: computes exactly what the grouped model computes.

    Crossing layers (conv1 reads the image; conv3, fc6, fc7 read both towers) get both towers'
    tensors; tower-local layers (conv2, conv4, conv5) only their own. Dropout is applied to
    the gathered FC activations on device A, with the same mask the grouped model would draw.
    Towers on distinct CUDA devices overlap because kernel launches are asynchronous; a CUDA
    tower is launched before a CPU one so that the two overlap too.
    """

    def __init__(self, canonical: AlexNet, devices):
        super().__init__()
        if canonical.plan.towers != 2:
            raise ValueError("two-device needs the two-tower connectivity")
        self.devices = [torch.device(d) for d in devices]
        self.plan = canonical.plan
        # Crossing conv layers read every map of both towers (groups=1 in the grouped model).
        self.crossing = [isinstance(m, nn.Conv2d) and m.groups == 1 for m in canonical.features]
        towers = []
        for t, device in enumerate(self.devices):
            tower = nn.Module()
            tower.features = nn.Sequential()
            for name, module in canonical.features.named_children():
                if isinstance(module, nn.Conv2d):
                    part = _split_rows(module, t, 2, device)
                elif isinstance(module, TowerSplit):
                    part = copy.deepcopy(module.towers[t]).to(device)
                else:
                    part = copy.deepcopy(module).to(device)
                tower.features.add_module(name, part)
            cls = canonical.classifier
            tower.fc6 = _split_rows(cls.fc6, t, 2, device)
            tower.act6 = copy.deepcopy(cls.act6).to(device)
            tower.fc7 = _split_rows(cls.fc7, t, 2, device)
            tower.act7 = copy.deepcopy(cls.act7).to(device)
            towers.append(tower)
        self.tower_a, self.tower_b = towers
        self.drop6 = copy.deepcopy(canonical.classifier.drop6)
        self.drop7 = copy.deepcopy(canonical.classifier.drop7)
        self.fc8 = copy.deepcopy(canonical.classifier.fc8).to(self.devices[0])
        # A shape-only copy of the canonical model, to rebuild it from these weights (to_grouped).
        object.__setattr__(self, "_template", copy.deepcopy(canonical).to("meta"))
        # Launch a CUDA tower first: its kernels run while the CPU computes the other tower.
        self._order = sorted(range(2), key=lambda t: self.devices[t].type == "cpu")

    def _both(self, fns, xs):
        out = [None, None]
        for t in self._order:
            out[t] = fns[t](xs[t])
        return out

    def _cross(self, xs):
        a, b = self.devices
        return [torch.cat([xs[0], xs[1].to(a)], 1), torch.cat([xs[0].to(b), xs[1]], 1)]

    def _gather(self, xs, drop, share: bool = True):
        """Both towers' FC outputs on device A, dropout applied there, then (``share``) copied to
        tower B for its next layer; fc8 lives on device A, so fc7's output stays there."""
        full = drop(torch.cat([xs[0], xs[1].to(self.devices[0])], 1))
        return [full, full.to(self.devices[1])] if share else [full]

    def forward(self, x):
        towers = (self.tower_a, self.tower_b)
        xs = [x.to(d) for d in self.devices]  # both towers see the whole image
        for i, crossing in enumerate(self.crossing):
            if crossing and i > 0:
                xs = self._cross(xs)
            xs = self._both([t.features[i] for t in towers], xs)
        xs = self._cross([torch.flatten(v, 1) for v in xs])
        xs = self._gather(self._both([lambda v, t=t: t.act6(t.fc6(v)) for t in towers], xs), self.drop6)
        xs = self._gather(self._both([lambda v, t=t: t.act7(t.fc7(v)) for t in towers], xs), self.drop7, share=False)
        return self.fc8(xs[0])

    def to_grouped(self, device="cpu") -> AlexNet:
        """The same parameters laid out as the one-device grouped model."""
        model = copy.deepcopy(self._template).to_empty(device=device)
        a, b = self.tower_a, self.tower_b
        with torch.no_grad():
            for name, module in model.features.named_children():
                if isinstance(module, nn.Conv2d):
                    for attr in ("weight", "bias"):
                        parts = [getattr(getattr(t.features, name), attr).to(device) for t in (a, b)]
                        getattr(module, attr).copy_(torch.cat(parts, 0))
                elif isinstance(module, TowerSplit):
                    for t, tower in enumerate((a, b)):
                        module.towers[t].load_state_dict(getattr(tower.features, name).state_dict())
                else:  # activations and pooling: identical in both towers
                    module.load_state_dict(getattr(a.features, name).state_dict())
            for name in ("fc6", "fc7"):
                layer = getattr(model.classifier, name)
                layer.weight.copy_(torch.cat([getattr(t, name).weight.to(device) for t in (a, b)], 0))
                layer.bias.copy_(torch.cat([getattr(t, name).bias.to(device) for t in (a, b)], 0))
            model.classifier.act6.load_state_dict(a.act6.state_dict())
            model.classifier.act7.load_state_dict(a.act7.state_dict())
            model.classifier.fc8.load_state_dict(self.fc8.state_dict())
        return model


class TwoDevice(Placement):
    towers = 2

    def __init__(self, devices):
        self.devices = devices

    def resolved_devices(self, device: torch.device) -> list[str]:
        if self.devices:
            return list(self.devices)
        if device.type == "cuda" and torch.cuda.device_count() >= 2:
            return ["cuda:0", "cuda:1"]
        return [str(device), str(device)]

    def place(self, model: AlexNet, device: torch.device) -> nn.Module:
        return TwoDeviceAlexNet(model, self.resolved_devices(device))

    def tower_devices(self, device: torch.device) -> list[str]:
        return self.resolved_devices(device)

    def input_device(self, device: torch.device) -> torch.device:
        return torch.device(self.resolved_devices(device)[0])

    def check_devices(self, device: torch.device) -> None:
        if self.devices is None and device.type == "cuda" and torch.cuda.device_count() < 2:
            raise ValueError(
                f"this machine has one CUDA device, so both towers would share {device} (what 'grouped' computes, "
                f'more slowly); use placement \'grouped\', or ask for it: devices = ["cuda:0", "cuda:0"]'
            )
        for name in self.resolved_devices(device):
            d = torch.device(name)
            if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
                have = torch.cuda.device_count() if torch.cuda.is_available() else 0
                raise ValueError(f"devices = {self.devices!r}: {name} does not exist here ({have} CUDA device(s))")


def two_device(*, devices: list[str] | None = None):
    if devices is not None:
        if len(devices) != 2:
            raise ValueError(f"devices must name exactly two devices (tower A, tower B), got {devices!r}")
        for d in devices:
            try:
                torch.device(d)
            except RuntimeError:
                raise ValueError(f"{d!r} is not a device name (e.g. 'cpu', 'cuda:0', 'cuda:1')") from None
    return TwoDevice(devices)


class DataParallel(Placement):
    """One replica per process (torchrun); gradients all-reduced by DDP."""

    distributed = True

    def __init__(self, towers, backend):
        self.towers = towers
        self.backend = backend

    def process_group_backend(self, device: torch.device) -> str:
        if self.backend != "auto":
            return self.backend
        return "nccl" if device.type == "cuda" else "gloo"

    def wrap_for_training(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def tower_devices(self, device: torch.device) -> list[str]:
        world = os.environ.get("WORLD_SIZE", "N")
        return [f"{device} x {world} processes"] * self.towers


def data_parallel(*, towers: Literal[1, 2] = 2, backend: Literal["auto", "gloo", "nccl"] = "auto"):
    return DataParallel(towers, backend)


@hookimpl
def register_placements(register):
    register("single", Single, "one tower, every conv layer fully connected (the torchvision way)")
    register("grouped", Grouped, "the paper's two-tower connectivity on one device (groups=2 in conv2/4/5)")
    register("two-device", two_device, "tower A on one device, tower B on another; cross only at conv3 and the FC layers")
    register("one-gpu-half", OneGPUHalf, "the paper's one-GPU comparison net: half the kernels in conv1-4")
    register("data-parallel", data_parallel, "DDP replicas across processes; launch with torchrun")
