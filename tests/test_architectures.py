"""Architectures as components: the authors' two CIFAR-10 nets against their layer facts (written
out here from ../shared/paper.md, not read from the builder), the locally connected layer against
a loop, same-map response normalization against its formula, capability refusals, and the
per-layer optimizer settings (parameter groups)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_testbed
from torch import nn

from testbed.assembly import make_optimizer
from testbed.errors import BadInput
from testbed.experiment import build_experiment
from testbed.model import build_model, layer_shapes, paper_layers, parameter_count
from testbed_builtins.architectures import LocallyConnected2d
from testbed_builtins.normalizations import rnorm


def pool_out(size: int) -> int:
    """cuda-convnet's pooling output size (paper.md): ceil((in - 3) / 2) + 1."""
    return math.ceil((size - 3) / 2) + 1


def conv_params(cin, cout, k):
    return cin * k * k * cout + cout


def net_18pct_facts(classes=10):
    """layers-18pct at 32 px: conv 32 5x5 pad 2 -> max-pool -> rnorm -> conv 32 5x5 pad 2 -> avg-pool
    -> rnorm -> conv 64 5x5 pad 2 -> avg-pool -> fc 10."""
    s1 = pool_out(32)
    s2 = pool_out(s1)
    s3 = pool_out(s2)
    shapes = {
        "conv1": [32, 32, 32],
        "pool1": [32, s1, s1],
        "norm1": [32, s1, s1],
        "conv2": [32, s1, s1],
        "pool2": [32, s2, s2],
        "norm2": [32, s2, s2],
        "conv3": [64, s2, s2],
        "pool3": [64, s3, s3],
        "fc10": [classes],
    }
    params = {
        "conv1": conv_params(3, 32, 5),
        "conv2": conv_params(32, 32, 5),
        "conv3": conv_params(32, 64, 5),
        "fc10": 64 * s3 * s3 * classes + classes,
    }
    return shapes, params


def net_conv_local_facts(local3=64, classes=10):
    """layers-conv-local-11pct on 24x24: conv 64 5x5 pad 2 -> max-pool -> cmrnorm -> conv 64 5x5 pad 2
    -> cmrnorm -> max-pool -> local 64 3x3 pad 1 -> local 32 3x3 pad 1 -> fc 10. A locally connected
    layer has its own filter bank and biases at every output position."""
    s1 = pool_out(24)
    s2 = pool_out(s1)
    positions = s2 * s2
    shapes = {
        "conv1": [64, 24, 24],
        "pool1": [64, s1, s1],
        "norm1": [64, s1, s1],
        "conv2": [64, s1, s1],
        "norm2": [64, s1, s1],
        "pool2": [64, s2, s2],
        "local3": [local3, s2, s2],
        "local4": [32, s2, s2],
        "fc10": [classes],
    }
    params = {
        "conv1": conv_params(3, 64, 5),
        "conv2": conv_params(64, 64, 5),
        "local3": positions * (64 * 9 * local3 + local3),
        "local4": positions * (local3 * 9 * 32 + 32),
        "fc10": 32 * positions * classes + classes,
    }
    return shapes, params


def built(registry, model: dict, classes=10, image_size=32, device=None):
    cfg = build_experiment({"model": model}, registry).baseline.config["model"]
    if device is None:
        with torch.device("meta"):
            return build_model(cfg, classes, image_size, registry, device=None)
    return build_model(cfg, classes, image_size, registry, device)


@pytest.mark.parametrize(
    "model, facts",
    [
        ({"architecture": "convnet-18pct"}, net_18pct_facts()),
        ({"architecture": "conv-local"}, net_conv_local_facts()),
        ({"architecture": {"name": "conv-local", "local_filters": [32, 32]}, "normalization": "none"}, net_conv_local_facts(local3=32)),
    ],
)
def test_cuda_convnet_nets_match_their_layer_facts(registry, model, facts):
    shapes, params = facts
    net = built(registry, model)
    layers = {layer["name"]: layer for layer in layer_shapes(net.module)}
    assert {name: layer["shape"] for name, layer in layers.items()} == shapes
    assert {name: layer["parameters"] for name, layer in layers.items() if layer["parameters"]} == params
    assert parameter_count(net.module) == sum(params.values())


def test_the_authors_defaults_come_with_the_architecture(registry):
    cfg = build_experiment({"model": {"architecture": "conv-local"}}, registry).baseline.config["model"]
    assert cfg["normalization"] == {"name": "lrn", "size": 9, "alpha": 0.001, "beta": 0.75, "k": 1.0, "alpha_convention": "divided-by-n"}
    assert cfg["init"]["name"] == "cuda-convnet" and cfg["placement"]["name"] == "single" and cfg["dropout"] == 0.0
    # and alexnet's are the schema's, as before
    alex = build_experiment({}, registry).baseline.config["model"]
    assert alex["normalization"]["name"] == "lrn" and alex["normalization"]["k"] == 2.0 and alex["placement"]["name"] == "grouped"


def test_cuda_convnet_init_stds(registry):
    torch.manual_seed(0)
    net = built(registry, {"architecture": "conv-local"}, device="cpu")
    expected = {"conv1": 1e-4, "conv2": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}
    layers = dict(paper_layers(net.module))
    assert set(layers) == set(expected)
    for name, std in expected.items():
        w = layers[name].weight.detach()
        assert abs(w.std().item() - std) < 0.1 * std, name
        assert torch.count_nonzero(layers[name].bias) == 0


def lc_loop(x, weight, bias, padding):
    """out[b, o, i, j] = bias[o, i, j] + sum_{c, u, v} weight[i, j, o, c, u, v] * xpad[b, c, i + u, j + v]."""
    xp = torch.nn.functional.pad(x, (padding,) * 4)
    h, w, out_c, in_c, k, _ = weight.shape
    out = torch.empty(x.shape[0], out_c, h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            patch = xp[:, :, i : i + k, j : j + k]  # [B, C, k, k]
            out[:, :, i, j] = (patch.unsqueeze(1) * weight[i, j].unsqueeze(0)).sum(dim=(2, 3, 4)) + bias[:, i, j]
    return out


def test_locally_connected_matches_a_loop_in_value_and_gradient():
    torch.manual_seed(1)
    layer = LocallyConnected2d(3, 4, 5, 3, padding=1).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weight = layer.weight.detach().clone().requires_grad_(True)
    bias = layer.bias.detach().clone().requires_grad_(True)
    x_loop = x.detach().clone().requires_grad_(True)
    out, ref = layer(x), lc_loop(x_loop, weight, bias, 1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x_loop.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, bias.grad, rtol=1e-12, atol=1e-12)
    # weights really are not shared: a change at one position moves only that output position
    with torch.no_grad():
        layer.weight[0, 0] += 1.0
    moved = (layer(x) - out).abs().sum(dim=(0, 1)) > 0
    assert moved[0, 0] and moved.sum() == 1


def test_rnorm_matches_its_formula():
    torch.manual_seed(2)
    a = torch.randn(2, 3, 6, 6, dtype=torch.float64).abs()
    size, alpha, beta, k = 3, 0.5, 0.75, 1.0
    out = rnorm(3, size=size, alpha=alpha, beta=beta, k=k)(a)
    ref = torch.empty_like(a)
    for y in range(6):
        for x in range(6):
            window = a[:, :, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]  # clipped at the border
            ref[:, :, y, x] = a[:, :, y, x] / (k + alpha / size**2 * (window**2).sum(dim=(2, 3))) ** beta
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_the_existing_lrn_expresses_the_11pct_cmrnorm(registry):
    """cuda-convnet's cmrnorm: a / (1 + (0.001 / 9) * sum over 9 neighbouring maps of a^2) ^ 0.75."""
    torch.manual_seed(3)
    a = torch.randn(2, 12, 3, 3, dtype=torch.float64)
    norm = registry.create("normalization", {"name": "lrn", "size": 9, "alpha": 0.001, "beta": 0.75, "k": 1.0}, 12)
    ref = torch.empty_like(a)
    for c in range(12):
        window = a[:, max(0, c - 4) : c + 5]
        ref[:, c] = a[:, c] / (1 + 0.001 / 9 * (window**2).sum(dim=1)) ** 0.75
    torch.testing.assert_close(norm(a), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "model, key",
    [
        ({"architecture": "convnet-18pct", "dropout": 0.5}, "model.dropout"),
        ({"architecture": "convnet-18pct", "width": 0.5}, "model.width"),
        ({"architecture": "conv-local", "skip": ["conv3"]}, "model.skip"),
        ({"architecture": "conv-local", "placement": "grouped"}, "model.placement"),
        ({"architecture": "conv-local", "placement": "one-gpu-half"}, "model.placement"),
    ],
)
def test_what_an_architecture_lacks_is_refused_naming_the_key(registry, model, key):
    with pytest.raises(BadInput) as info:
        build_experiment({"model": model}, registry)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_a_placement_asking_for_two_towers_is_refused(registry):
    with pytest.raises(BadInput, match="model.placement.*2 towers"):
        built(registry, {"architecture": "convnet-18pct", "placement": {"name": "data-parallel", "towers": 2}})


def test_show_refuses_with_exit_2_and_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[data]\ndataset = "synthetic"\nimage_size = 32\n[model]\narchitecture = "convnet-18pct"\ndropout = 0.5\n')
    result = run_testbed("show", path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.dropout" in lines[0] and "convnet-18pct" in lines[0]


def test_param_groups_scale_bias_lr_and_set_layer_weight_decay(registry):
    cfg = build_experiment(
        {
            "model": {"architecture": "conv-local"},
            "train": {
                "optimizer": {"name": "sgd", "lr": 0.001, "weight_decay": 0.0005},
                "bias_lr_scale": 2.0,
                "bias_weight_decay": 0.0,
                "layer_weight_decay": {"local3": 0.004, "local4": 0.004, "fc10": 0.01},
            },
        },
        registry,
    ).baseline.config
    net = build_model(cfg["model"], 10, 32, registry, "cpu")
    optimizer = make_optimizer(cfg["train"], net, registry)
    settings = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            settings[id(p)] = (group["lr"], group["weight_decay"])
    assert len(settings) == len(list(net.module.parameters()))  # every parameter once
    for name, module in paper_layers(net.module):
        wd = {"local3": 0.004, "local4": 0.004, "fc10": 0.01}.get(name, 0.0005)
        assert settings[id(module.weight)] == (0.001, wd)
        assert settings[id(module.bias)] == (0.002, 0.0)


def test_param_groups_do_what_they_say_in_one_sgd_step(registry):
    """One plain SGD step (no momentum) moves each weight by lr * (grad + wd * w) and each bias by 2 lr * grad."""
    cfg = build_experiment(
        {
            "model": {"architecture": "convnet-18pct"},
            "train": {
                "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
                "bias_lr_scale": 2.0,
                "layer_weight_decay": {"fc10": 0.5},
            },
        },
        registry,
    ).baseline.config
    torch.manual_seed(4)
    net = build_model(cfg["model"], 10, 32, registry, "cpu")
    optimizer = make_optimizer(cfg["train"], net, registry)
    before = {n: p.detach().clone() for n, p in net.module.named_parameters()}
    loss = nn.functional.cross_entropy(net.module(torch.randn(4, 3, 32, 32) * 50), torch.arange(4))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in net.module.named_parameters()}
    optimizer.step()
    for n, p in net.module.named_parameters():
        if n.endswith("bias"):
            expected = before[n] - 0.2 * grads[n]
        else:
            expected = before[n] - 0.1 * (grads[n] + (0.5 if n.startswith("fc10") else 0.0) * before[n])
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)


def test_an_unknown_layer_in_layer_weight_decay_is_bad_input(registry):
    cfg = build_experiment(
        {"model": {"architecture": "convnet-18pct"}, "train": {"layer_weight_decay": {"fc8": 0.1}}}, registry
    ).baseline.config
    net = built(registry, {"architecture": "convnet-18pct"})
    with pytest.raises(BadInput, match="train.layer_weight_decay.fc8"):
        make_optimizer(cfg["train"], net, registry)


def test_the_nets_learn_synthetic_data(tmp_path):
    """Both nets, their defaults (the authors' init, norms, bias lr 2x), raw pixels minus the mean."""
    import json

    path = tmp_path / "nets.toml"
    path.write_text("""name = "nets"
[data]
dataset = "synthetic"
classes = 4
image_size = 32
train_size = 384
test_size = 128
[model]
architecture = "convnet-18pct"
[augment]
train = []
test = "center"
[train]
epochs = 3
batch_size = 32
optimizer = { name = "sgd", lr = 0.001, momentum = 0.9, weight_decay = 0.0 }
schedule = "constant"
bias_lr_scale = 2.0
[[variant]]
name = "conv-local"
model.architecture = "conv-local"
augment.train = [{ name = "random-crop", size = 24 }, "hflip"]
augment.test = "ten-crop"
""")
    result = run_testbed("run", path, "--out", tmp_path / "run", "--json", "-q")
    assert result.returncode == 0, result.stderr[-2000:]
    for variant in json.loads(result.stdout)["variants"]:
        assert variant["metrics"]["top1_error"]["mean"] < 0.4, variant["name"]  # chance: 0.75
