"""AlexNet assembled from slots.

The core knows the paper's topology (5 conv + 3 FC, norm after conv1/conv2, pooling after
norm1/norm2/conv5) and two geometries; every component that fills a slot (activation,
normalization, pooling, init, placement) comes from the registry.

Every model is first built in its canonical one-device form (towers as conv groups) and
initialised there; the placement then moves it where it belongs (onto two devices, into
DDP, ...). So every placement starts from the very same weights for the same seed.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from testbed.errors import BadInput


@dataclass(frozen=True)
class ConvSpec:
    name: str
    out: int
    kernel: int
    stride: int
    padding: int
    tower_local: bool  # the paper's conv2/4/5: each tower sees only its own maps
    norm: bool = False  # a normalization slot follows (after the activation)
    pool: bool = False  # a pooling slot follows


# The paper's 227 px table (paper.md) and its 32 px twin: same topology, conv1 5x5 stride 1.
PAPER_CONVS = (
    ConvSpec("conv1", 96, 11, 4, 0, False, norm=True, pool=True),
    ConvSpec("conv2", 256, 5, 1, 2, True, norm=True, pool=True),
    ConvSpec("conv3", 384, 3, 1, 1, False),
    ConvSpec("conv4", 384, 3, 1, 1, True),
    ConvSpec("conv5", 256, 3, 1, 1, True, pool=True),
)
GEOMETRIES: dict[str, dict] = {
    "imagenet": {"input_size": 227, "convs": PAPER_CONVS, "fc": (4096, 4096)},
    "cifar": {"input_size": 32, "convs": (replace(PAPER_CONVS[0], kernel=5, stride=1, padding=2),) + PAPER_CONVS[1:], "fc": (4096, 4096)},
}
SKIPPABLE = ("conv3", "conv4", "conv5")
LAYER_ORDER = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7", "fc8")


def scaled(channels: int, width: float) -> int:
    """Width-scaled channel count, kept even so that two towers split it exactly."""
    return max(2, 2 * round(channels * width / 2))


@dataclass(frozen=True)
class Plan:
    """The layer plan of one model: geometry, widths, towers and skipped layers."""

    geometry: str
    input_size: int
    convs: tuple[ConvSpec, ...]
    fc: tuple[int, int]
    classes: int
    towers: int = 1
    in_channels: int = 3

    @classmethod
    def create(cls, geometry: str, width: float = 1.0, classes: int = 1000, skip=()) -> Plan:
        if geometry not in GEOMETRIES:
            raise BadInput(f"model.geometry = {geometry!r}: unknown; choose one of {', '.join(GEOMETRIES)}")
        g = GEOMETRIES[geometry]
        convs = [replace(c, out=scaled(c.out, width)) for c in g["convs"] if c.name not in skip]
        if convs[-1].name != "conv5":  # pool5 follows whichever conv is last
            convs[-1] = replace(convs[-1], pool=True)
        fc = tuple(scaled(f, width) for f in g["fc"])
        return cls(geometry, g["input_size"], tuple(convs), fc, classes)

    def with_widths(self, widths: dict[str, int]) -> Plan:
        """A plan with some conv layers' kernel counts replaced (e.g. the one-GPU comparison net)."""
        return replace(self, convs=tuple(replace(c, out=widths.get(c.name, c.out)) for c in self.convs))


@dataclass
class Slots:
    """Factories for the components that fill the model's slots."""

    activation: Callable[[], nn.Module]
    normalization: Callable[[int], nn.Module]
    pooling: Callable[[], nn.Module]
    dropout: float = 0.5


class TowerSplit(nn.Module):
    """Applies one module per tower to that tower's channels, as the paper's GPUs each did
    (LRN on one GPU never sees the other GPU's maps).

    A module with no state of its own may offer ``forward_towers(x, towers)``: all towers in one
    pass, each on its own channels (the built-in LRN does), which saves a split and a concat."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.towers = nn.ModuleList(modules)

    def forward(self, x):
        first = self.towers[0]
        if len(self.towers) == 1:
            return first(x)
        if hasattr(first, "forward_towers"):
            return first.forward_towers(x, len(self.towers))
        return torch.cat([m(part) for m, part in zip(self.towers, x.chunk(len(self.towers), dim=1))], dim=1)


class AlexNet(nn.Module):
    """The canonical one-device AlexNet: towers are conv groups (``plan.towers`` = 1 or 2)."""

    def __init__(self, plan: Plan, slots: Slots):
        super().__init__()
        self.plan = plan
        towers = plan.towers
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = plan.in_channels
        for i, spec in enumerate(plan.convs):
            groups = towers if spec.tower_local else 1
            if spec.out % towers or channels % groups:
                raise BadInput(f"{spec.name}: {spec.out} kernels cannot be split into {towers} towers")
            layers[spec.name] = nn.Conv2d(channels, spec.out, spec.kernel, spec.stride, spec.padding, groups=groups)
            channels = spec.out
            index = spec.name[-1]
            layers[f"act{index}"] = slots.activation()
            if spec.norm:
                per_tower = channels // towers
                layers[f"norm{index}"] = TowerSplit([slots.normalization(per_tower) for _ in range(towers)])
            if spec.pool:
                pool_name = "pool5" if i == len(plan.convs) - 1 else f"pool{index}"
                layers[pool_name] = slots.pooling()
        self.features = nn.Sequential(layers)
        flat = feature_numel(self.features, plan)
        fc6, fc7 = plan.fc
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(flat, fc6)),
                    ("act6", slots.activation()),
                    ("drop6", nn.Dropout(slots.dropout)),
                    ("fc7", nn.Linear(fc6, fc7)),
                    ("act7", slots.activation()),
                    ("drop7", nn.Dropout(slots.dropout)),
                    ("fc8", nn.Linear(fc7, plan.classes)),
                ]
            )
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def feature_numel(features: nn.Module, plan: Plan) -> int:
    """Flattened size of the conv stack's output, found by a pass of one zero image through a copy
    (in eval mode: a batchnorm keeps its statistics). On the CPU, where models are built: a few
    milliseconds, where the meta device's first forward imports torch's compiler stack (about 3 s
    of every run's start-up); the meta device only for modules already elsewhere."""
    on_cpu = all(p.device.type == "cpu" for p in features.parameters())
    probe = copy.deepcopy(features).eval() if on_cpu else copy.deepcopy(features).to("meta")
    with torch.no_grad():
        out = probe(torch.zeros(1, plan.in_channels, plan.input_size, plan.input_size, device="cpu" if on_cpu else "meta"))
    if out.shape[-1] < 1:
        raise BadInput(f"model: the {plan.geometry} geometry leaves no spatial extent after the conv stack")
    return out[0].numel()


WEIGHT_LAYER_PREFIXES = ("conv", "fc", "local")


def paper_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(layer name, module) for every weight layer, towers included, in order: a module named
    conv*, fc* or local* with its own ``weight`` and ``bias`` (Conv2d, Linear, a locally connected layer)."""
    out = []
    for path, module in model.named_modules():
        last = path.rsplit(".", 1)[-1]
        own = dict(module.named_parameters(recurse=False))
        if last.startswith(WEIGHT_LAYER_PREFIXES) and "weight" in own and "bias" in own:
            out.append((last, module))
    return out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Placement:
    """Where the towers live and how they connect. Placement plugins subclass this.

    ``towers``: the paper's connectivity (2: conv2/4/5 tower-local) or full connectivity (1).
    ``adapt_plan``: change the layer plan (e.g. halve the kernels of the one-GPU net).
    ``place``: turn the initialised canonical model into the placed one.
    ``tower_devices``: the device of each tower, for `testbed show`.
    ``wrap_for_training``: e.g. wrap in DDP; ``distributed`` says whether it needs torchrun.
    """

    towers: int = 1
    distributed: bool = False

    def adapt_plan(self, plan: Plan) -> Plan:
        return replace(plan, towers=self.towers)

    def place(self, model: AlexNet, device: torch.device) -> nn.Module:
        return model.to(device)

    def tower_devices(self, device: torch.device) -> list[str]:
        return [str(device)] * self.towers

    def input_device(self, device: torch.device) -> torch.device:
        return torch.device(device)

    def wrap_for_training(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model

    def check_devices(self, device: torch.device) -> None:
        """Raise ValueError when this machine lacks a device the placement needs (checked before
        any training; `testbed show` does not check, since it may describe another machine's run)."""


@dataclass(frozen=True)
class NetRequest:
    """What the core hands an architecture's ``build``: the resolved [model] table, the data's
    shape, the slot factories and the placement (already created)."""

    model_cfg: dict
    classes: int
    image_size: int
    slots: Slots
    placement: Placement


@dataclass(frozen=True)
class NetPlan:
    """The least a built network tells the core: its name for `show` (``geometry``), the input
    size the pipeline crops to, its input channels and towers. AlexNet's ``Plan`` has the same fields."""

    geometry: str
    input_size: int
    in_channels: int = 3
    towers: int = 1


class Architecture:
    """What an architecture plugin's factory returns. ``build`` returns the canonical one-device
    module, which carries a ``plan`` (``NetPlan`` or AlexNet's ``Plan``: ``geometry``,
    ``input_size``, ``in_channels``, ``towers``) and may name the layers `testbed show` prints in
    ``shown_layers``. ``towers``: the tower counts the network can be built with (a placement
    asking for another is refused). ``weight_layers``: the ``(name, module)`` pairs the init rule
    and the per-layer optimizer settings see (default: ``paper_layers``)."""

    towers: tuple[int, ...] = (1,)

    def build(self, request: NetRequest) -> nn.Module:  # pragma: no cover - every architecture overrides it
        raise NotImplementedError

    def weight_layers(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return paper_layers(model)


@dataclass
class BuiltModel:
    module: nn.Module  # the placed model, ready for training
    placement: Placement
    plan: Plan | NetPlan
    architecture: Architecture | None = None


def build_model(model_cfg: dict, classes: int, image_size: int, registry, device="cpu") -> BuiltModel:
    """Build, initialise and place a model from a validated [model] table.

    ``device=None`` skips placement and returns the canonical model (shapes, counts, checks)."""
    from testbed.schema import SCHEMA  # a [model] table written before architectures existed builds the default one

    spec = model_cfg.get("architecture", SCHEMA["model"]["architecture"].default)
    arch_component, arch_params = registry.resolve("architecture", spec, "model.architecture")
    architecture: Architecture = arch_component.create((), arch_params, "model.architecture")
    placement_component, placement_params = registry.resolve("placement", model_cfg["placement"], "model.placement")
    placement: Placement = placement_component.create((), placement_params, "model.placement")
    if placement.towers not in architecture.towers:
        raise BadInput(
            f"model.placement = {placement_component.name!r}: it asks for {placement.towers} towers; architecture "
            f"'{arch_component.name}' is built with {' or '.join(map(str, architecture.towers))}"
        )

    resolved = {"placement": (placement_component, placement_params)}
    for slot in ("activation", "normalization", "pooling", "init"):
        resolved[slot] = registry.resolve(slot, model_cfg[slot], f"model.{slot}")

    def factory(slot):
        component, params = resolved[slot]
        return lambda *context: component.create(context, params, f"model.{slot}")

    slots = Slots(factory("activation"), factory("normalization"), factory("pooling"), model_cfg["dropout"])
    try:
        model = architecture.build(NetRequest(model_cfg, classes, image_size, slots, placement))
    except ValueError as exc:
        raise BadInput(f"model.architecture = {arch_component.name!r}: {exc}") from None
    init_component, init_params = resolved["init"]
    init_component.create((), init_params, "model.init")(architecture.weight_layers(model))
    placed = model if device is None else placement.place(model, torch.device(device))
    return BuiltModel(placed, placement, model.plan, architecture)


def build_alexnet(request: NetRequest) -> AlexNet:
    """The paper's AlexNet from a request: the plan from the geometry, width and skipped layers,
    adapted by the placement (towers, the one-GPU net's widths)."""
    cfg = request.model_cfg
    geometry = cfg["geometry"]
    if geometry == "auto":
        geometry = geometry_for(request.image_size)
    plan = Plan.create(geometry, cfg["width"], request.classes, tuple(cfg["skip"]))
    return AlexNet(request.placement.adapt_plan(plan), request.slots)


def geometry_for(image_size: int) -> str:
    return "cifar" if image_size <= 64 else "imagenet"


def layer_shapes(model: nn.Module) -> list[dict]:
    """Output shape (one image) and parameter count of each layer the model names in
    ``shown_layers`` (AlexNet: conv1..conv5, pool1/2/5, fc6..fc8), by a shape-only pass."""
    order = getattr(model, "shown_layers", LAYER_ORDER)
    probe = copy.deepcopy(model).to("meta").eval()
    shapes: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for path, module in probe.named_modules():
        name = path.rsplit(".", 1)[-1]
        if name in order:
            module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, list(out.shape[1:])))
            counts[name] = counts.get(name, 0) + parameter_count(module)
    plan = model.plan
    with torch.no_grad():
        probe(torch.empty(1, plan.in_channels, plan.input_size, plan.input_size, device="meta"))
    return [{"name": n, "shape": shapes[n], "parameters": counts[n]} for n in order if n in shapes]
