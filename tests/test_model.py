"""The model builder: the paper's layer table, parameter counts, every slot component in a built model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from testbed.experiment import build_experiment
from testbed.model import build_model, layer_shapes, paper_layers, parameter_count


def model_config(registry, **model):
    return build_experiment({"model": model}, registry).baseline.config["model"]


def build(registry, classes=10, image_size=32, device="cpu", **model):
    return build_model(model_config(registry, **model), classes, image_size, registry, device)


def meta_build(registry, classes=1000, image_size=256, **model):
    with torch.device("meta"):
        return build(registry, classes, image_size, device=None, **model)


PAPER_TABLE = [
    ("conv1", [96, 55, 55]),
    ("pool1", [96, 27, 27]),
    ("conv2", [256, 27, 27]),
    ("pool2", [256, 13, 13]),
    ("conv3", [384, 13, 13]),
    ("conv4", [384, 13, 13]),
    ("conv5", [256, 13, 13]),
    ("pool5", [256, 6, 6]),
    ("fc6", [4096]),
    ("fc7", [4096]),
    ("fc8", [1000]),
]


@pytest.mark.parametrize(
    "placement, expected",
    [
        ("grouped", 60_965_224),  # paper.md: the paper's two-tower connectivity
        ("single", 62_378_344),  # every conv fully connected
        ("one-gpu-half", 59_798_312),  # the paper's one-GPU comparison net
    ],
)
def test_parameter_counts_of_the_paper(registry, placement, expected):
    built = meta_build(registry, geometry="imagenet", placement=placement)
    assert parameter_count(built.module) == expected


def test_two_device_has_the_grouped_parameter_count(registry):
    built = build(
        registry, classes=1000, image_size=256, geometry="imagenet", width=0.25, placement={"name": "two-device", "devices": ["cpu", "cpu"]}
    )
    grouped = meta_build(registry, geometry="imagenet", width=0.25, placement="grouped")
    assert parameter_count(built.module) == parameter_count(grouped.module)


@pytest.mark.parametrize("pooling", ["overlapping", "non-overlapping", "avg"])
def test_imagenet_layer_shapes_follow_the_paper_table(registry, pooling):
    built = meta_build(registry, geometry="imagenet", pooling=pooling)
    shapes = [(layer["name"], layer["shape"]) for layer in layer_shapes(built.module)]
    assert shapes == PAPER_TABLE


@pytest.mark.parametrize("pooling", ["overlapping", "non-overlapping", "avg"])
def test_cifar_geometry_keeps_the_topology(registry, pooling):
    built = meta_build(registry, classes=10, image_size=32, geometry="cifar", width=0.25, pooling=pooling)
    shapes = dict((layer["name"], layer["shape"]) for layer in layer_shapes(built.module))
    assert shapes["conv1"] == [24, 32, 32]
    assert shapes["pool1"] == [24, 16, 16] and shapes["pool2"] == [64, 8, 8] and shapes["pool5"] == [64, 4, 4]
    assert shapes["fc6"] == [1024] and shapes["fc8"] == [10]
    # conv1 is a 5x5 stride-1 conv here, not the 11x11 stride 4
    conv1 = dict(paper_layers(built.module))["conv1"]
    assert conv1.kernel_size == (5, 5) and conv1.stride == (1, 1)


def test_geometry_auto_follows_the_image_size(registry):
    assert meta_build(registry, classes=10, image_size=32).plan.geometry == "cifar"
    assert meta_build(registry, classes=10, image_size=256).plan.geometry == "imagenet"


def test_width_scales_every_conv_and_fc_layer(registry):
    built = meta_build(registry, geometry="imagenet", width=0.5)
    widths = {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for name, m in paper_layers(built.module)}
    assert widths == {"conv1": 48, "conv2": 128, "conv3": 192, "conv4": 192, "conv5": 128, "fc6": 2048, "fc7": 2048, "fc8": 1000}


def test_grouped_towers_follow_the_paper(registry):
    """conv2, conv4, conv5 see only their own tower's maps; conv3 and the FC layers cross."""
    layers = dict(paper_layers(meta_build(registry, geometry="imagenet").module))
    assert [layers[n].groups for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [1, 2, 1, 2, 2]
    assert layers["conv2"].weight.shape == (256, 48, 5, 5)  # 5x5x48, as in the paper table
    assert layers["conv4"].weight.shape == (384, 192, 3, 3)
    assert layers["conv3"].weight.shape == (384, 256, 3, 3)


def test_skipping_a_middle_layer(registry):
    built = meta_build(registry, geometry="imagenet", skip=["conv4"])
    names = [layer["name"] for layer in layer_shapes(built.module)]
    assert "conv4" not in names and names[-4:] == ["pool5", "fc6", "fc7", "fc8"]
    layers = dict(paper_layers(built.module))
    assert layers["conv5"].in_channels == 384  # now fed by conv3
    last = meta_build(registry, geometry="imagenet", skip=["conv5"])
    assert [layer["name"] for layer in layer_shapes(last.module)][-4:] == ["pool5", "fc6", "fc7", "fc8"]


SLOT_CHOICES = {
    "activation": ["relu", "tanh", "sigmoid", "leaky-relu", "gelu"],
    "normalization": ["lrn", "none", "batchnorm"],
    "pooling": ["overlapping", "non-overlapping", "avg"],
    "init": ["paper", "caffe", "pytorch", "kaiming"],
    "placement": ["single", "grouped", "one-gpu-half", {"name": "two-device", "devices": ["cpu", "cpu"]}],
}


@pytest.mark.parametrize("geometry, size", [("cifar", 32), ("imagenet", 227)])
@pytest.mark.parametrize("slot, choice", [(s, c) for s, cs in SLOT_CHOICES.items() for c in cs])
def test_every_component_trains_in_a_built_model(registry, geometry, size, slot, choice):
    torch.manual_seed(0)
    built = build(registry, classes=7, image_size=size, geometry=geometry, width=0.125, **{slot: choice})
    x = torch.randn(2, 3, size, size)
    out = built.module(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    grads = [p.grad for p in built.module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def module_tree(module):
    return {path: f"{type(m).__name__}({m.extra_repr()})" for path, m in module.named_modules() if path}


@pytest.mark.parametrize(
    "slot, choice, changed",
    [
        ("activation", "tanh", {"act1", "act2", "act3", "act4", "act5", "act6", "act7"}),
        ("normalization", "batchnorm", {"norm1", "norm2"}),
        ("pooling", "non-overlapping", {"pool1", "pool2", "pool5"}),
    ],
)
def test_switching_a_slot_changes_exactly_that_part(registry, slot, choice, changed):
    base = module_tree(build(registry, width=0.125).module)
    variant = module_tree(build(registry, width=0.125, **{slot: choice}).module)
    differing = {p for p in set(base) | set(variant) if base.get(p) != variant.get(p)}
    assert differing and {p.split(".")[1] for p in differing} == changed


def test_dropout_is_on_fc6_and_fc7_only(registry):
    model = build(registry, width=0.125, dropout=0.3).module
    drops = {path: m.p for path, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert drops == {"classifier.drop6": 0.3, "classifier.drop7": 0.3}
    off = build(registry, width=0.125, dropout=0.0).module
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    off.train()
    a = off(x)
    b = off(x)
    torch.testing.assert_close(a, b)  # no randomness left in training mode


def test_paper_init(registry):
    torch.manual_seed(0)
    layers = dict(paper_layers(build(registry, classes=1000, image_size=227, geometry="imagenet", width=0.5, init="paper").module))
    for name, module in layers.items():
        assert abs(module.weight.std().item() - 0.01) < 0.001, name
        assert abs(module.weight.mean().item()) < 0.001, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(module.bias == expected_bias), name


def test_caffe_init(registry):
    torch.manual_seed(0)
    layers = dict(paper_layers(build(registry, classes=1000, image_size=227, geometry="imagenet", width=0.5, init="caffe").module))
    for name, module in layers.items():
        std = 0.005 if name in ("fc6", "fc7") else 0.01
        assert abs(module.weight.std().item() - std) < std / 10, name
        assert torch.all(module.bias == (0.1 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0)), name


def test_kaiming_init(registry):
    torch.manual_seed(0)
    for name, module in paper_layers(build(registry, geometry="cifar", width=0.5, init="kaiming").module):
        fan_in = module.weight[0].numel()
        assert abs(module.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.1, name
        assert torch.all(module.bias == 0)


def test_one_gpu_half_widths(registry):
    layers = dict(paper_layers(meta_build(registry, geometry="imagenet", placement="one-gpu-half").module))
    assert [layers[f"conv{i}"].out_channels for i in range(1, 6)] == [48, 128, 192, 192, 256]
    assert all(layers[f"conv{i}"].groups == 1 for i in range(1, 6))
    assert layers["fc6"].out_features == 4096 and layers["fc7"].out_features == 4096
