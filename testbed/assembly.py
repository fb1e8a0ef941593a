"""A job's parts, built from the registry exactly as training uses them: the placed model in
its memory format, the data pipeline (preprocessing, augmentations, test views), and the
record of every component (name, parameters, plugin, version) a result keeps. ``check_job``
builds all of them without training, so that a bad parameter is refused before the grid starts.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from testbed.data import AugmentContext, DataStats, Pipeline, StreamingData
from testbed.errors import BadInput
from testbed.experiment import Variant
from testbed.model import BuiltModel, build_model


def memory_format(train_cfg: dict) -> torch.memory_format:
    """'auto' is channels-last: faster on this 2-core CPU at every geometry measured
    (benchmarks/channels_last.py: 0.65-0.91x the step time) and the layout GPU convolutions prefer."""
    return torch.contiguous_format if train_cfg["memory_format"] == "contiguous" else torch.channels_last


def build_for_training(cfg: dict, data, registry, device) -> BuiltModel:
    """The placed model in the memory format training uses."""
    built = build_model(cfg["model"], len(data.class_names), data.image_size, registry, device)
    built.module.to(memory_format=memory_format(cfg["train"]))
    return built


def build_pipeline(variant: Variant, data, built: BuiltModel, registry, device) -> Pipeline:
    cfg = variant.config
    stats = data.stats()
    preprocess = registry.create("preprocess", cfg["data"]["preprocess"], stats, key="data.preprocess")
    ctx = AugmentContext(built.plan.input_size, data.image_size, stats, preprocess.pixel_scale)
    train_augs = [registry.create("augmentation", spec, ctx, key=f"augment.train[{i}]") for i, spec in enumerate(cfg["augment"]["train"])]
    test_views = registry.create("augmentation", cfg["augment"]["test"], ctx, key="augment.test")
    return Pipeline(data, preprocess, train_augs, test_views, built.plan.input_size, device, memory_format(cfg["train"]))


def optimizer_params(train_cfg: dict, built: BuiltModel) -> list:
    """What the optimizer factory gets: the model's parameters, or, when ``train.bias_lr_scale``,
    ``bias_weight_decay`` or ``layer_weight_decay`` ask for it, parameter groups (one per weight
    layer's weights and one per its bias, the rest in a first group of their own) carrying
    ``weight_decay`` where set and ``lr_scale`` (applied by ``make_optimizer``)."""
    params = list(built.module.parameters())
    per_layer, bias_wd, bias_scale = train_cfg["layer_weight_decay"], train_cfg["bias_weight_decay"], train_cfg["bias_lr_scale"]
    if not per_layer and bias_wd is None and bias_scale == 1.0:
        return params
    layers = built.architecture.weight_layers(built.module)
    names = {name for name, _ in layers}
    for name in per_layer:
        if name not in names:
            raise BadInput(
                f"train.layer_weight_decay.{name}: no weight layer of that name; layers: {', '.join(dict.fromkeys(n for n, _ in layers))}"
            )
    groups, grouped = [], set()
    for name, module in layers:
        weight_group = {"params": [module.weight], "layer": name}
        if name in per_layer:
            weight_group["weight_decay"] = per_layer[name]
        bias_group = {"params": [module.bias], "layer": name, "lr_scale": bias_scale}
        if bias_wd is not None:
            bias_group["weight_decay"] = bias_wd
        groups += [weight_group, bias_group]
        grouped |= {id(module.weight), id(module.bias)}
    rest = [p for p in params if id(p) not in grouped]
    return ([{"params": rest}] if rest else []) + groups


def make_optimizer(train_cfg: dict, built: BuiltModel, registry):
    optimizer = registry.create("optimizer", train_cfg["optimizer"], optimizer_params(train_cfg, built), key="train.optimizer")
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer


# (dotted key, registry kind) of every component slot in a resolved config
COMPONENT_SLOTS = (
    ("data.dataset", "dataset"),
    ("data.preprocess", "preprocess"),
    ("model.architecture", "architecture"),
    ("model.activation", "activation"),
    ("model.normalization", "normalization"),
    ("model.pooling", "pooling"),
    ("model.init", "init"),
    ("model.placement", "placement"),
    ("augment.test", "augmentation"),
    ("train.optimizer", "optimizer"),
    ("train.schedule", "schedule"),
)


def component_records(config: dict, registry) -> dict:
    """slot -> {"name", "params", "plugin", "version"}: what a result records about its components."""

    def record(kind, spec, key):
        component, params = registry.resolve(kind, spec, key)
        return {"name": component.name, "params": params, "plugin": component.plugin, "version": component.version}

    out = {}
    for key, kind in COMPONENT_SLOTS:
        section, slot = key.split(".")
        out[slot if section != "augment" else "augment.test"] = record(kind, config[section][slot], key)
    out["augment.train"] = [record("augmentation", spec, f"augment.train[{i}]") for i, spec in enumerate(config["augment"]["train"])]
    return out


def check_job(variant: Variant, data, registry, world: int = 1, device: torch.device | None = None) -> None:
    """Create every component of a job without training (the model shape-only on the meta device),
    so that a bad parameter of any component is refused before the grid starts. ``world``: the
    processes a data-parallel job is split over; ``device``: where the run trains, so that a
    placement can refuse devices this machine lacks (None: not checked, as `testbed show` does)."""
    cfg = variant.config
    with torch.device("meta"):
        built = build_model(cfg["model"], len(data.class_names), data.image_size, registry, device=None)
    if device is not None:
        try:
            built.placement.check_devices(torch.device(device))
        except ValueError as exc:
            raise BadInput(f"model.placement: {cfg['model']['placement']['name']}: {exc}") from None
    pipeline = build_pipeline(variant, data, built, registry, "cpu")
    batch = cfg["train"]["batch_size"]
    if pipeline.train_size < batch:
        raise BadInput(f"train.batch_size = {batch}: larger than the {pipeline.train_size} training images")
    if built.placement.distributed and batch % world:
        raise BadInput(f"train.batch_size = {batch}: must divide evenly over the {world} processes of this torchrun launch")
    optimizer = make_optimizer(cfg["train"], built, registry)
    registry.create("schedule", cfg["train"]["schedule"], optimizer, cfg["train"]["epochs"], key="train.schedule")


def stand_in_data(data_cfg: dict, image_size: int, classes: int) -> StreamingData:
    """What `testbed show` checks a job against without reading any data: the declared size and
    classes, the training set's size if the file gives it, and neutral statistics."""
    stats = DataStats(torch.zeros(3, image_size, image_size), torch.zeros(3), torch.ones(3), torch.zeros(3), torch.eye(3))
    train = data_cfg["train_size"] or 2**31 - 1
    return StreamingData(
        range(train), range(data_cfg["test_size"] or 1), [f"class{c}" for c in range(classes)], image_size, workers=0, _stats=stats
    )


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
