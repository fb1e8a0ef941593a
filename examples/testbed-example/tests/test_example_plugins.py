"""Tests for the example plugin: each component's behaviour, its registration, and a real
forward/backward pass through AlexNet built by testbed from the example experiment.

Run with the package installed (`pip install -e examples/testbed-example`):
    python -m pytest examples/testbed-example/tests -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import testbed_example_plugins
from testbed import plugins
from testbed.assembly import build_pipeline, component_records
from testbed.data import AugmentContext, DataRequest, DataStats, InMemoryData, load_dataset
from testbed.errors import BadInput, ComponentError
from testbed.experiment import build_experiment, load_experiment
from testbed.model import build_model

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiment.toml"
PLUGIN = "testbed-example"  # the entry point's name in pyproject.toml


@pytest.fixture
def registry():
    """testbed's registry with this plugin in it: already there when testbed autoloaded the
    installed entry point, else registered for the test (under the entry point's name) and
    removed again afterwards."""
    manager = plugins.manager()
    added = not manager.is_registered(testbed_example_plugins)
    if added:
        manager.register(testbed_example_plugins, name=PLUGIN)
        plugins.invalidate_registry()
    yield plugins.registry()
    if added:
        manager.unregister(testbed_example_plugins)
        plugins.invalidate_registry()


def augment_context(size: int = 32) -> AugmentContext:
    stats = DataStats(torch.zeros(3, size, size), torch.zeros(3), torch.ones(3), torch.ones(3), torch.eye(3))
    return AugmentContext(input_size=size, image_size=size, stats=stats, pixel_scale=torch.ones(3))


# ---------------------------------------------------------------------------- registration


def test_components_are_registered_with_their_plugin(registry):
    expected = {
        "activation": {"swish", "mish"},
        "normalization": {"groupnorm"},
        "augmentation": {"cutout"},
        "dataset": {"gratings"},
    }
    for kind, names in expected.items():
        for name in names:
            component = registry.get(kind, name)
            assert component.plugin == PLUGIN
            assert component.help


def test_parameters_come_from_keyword_only_arguments(registry):
    swish = registry.get("activation", "swish")
    assert [(p.name, p.default) for p in swish.params] == [("beta", 1.0)]
    assert registry.get("activation", "mish").params == ()
    groupnorm = registry.get("normalization", "groupnorm")
    assert [p.name for p in groupnorm.params] == ["groups", "eps", "affine"]  # `channels` is context
    position = {p.name: p for p in registry.get("augmentation", "cutout").params}["position"]
    assert position.choices == ("anywhere", "inside")


def test_bad_parameters_are_refused_before_training(registry):
    with pytest.raises(BadInput, match="beta"):
        registry.resolve("activation", {"name": "swish", "beta": "large"}, "model.activation")
    with pytest.raises(BadInput, match="'anywhere', 'inside'"):
        registry.resolve("augmentation", {"name": "cutout", "position": "edge"}, "augment.train[0]")
    with pytest.raises(BadInput, match="unknown parameter"):
        registry.resolve("normalization", {"name": "groupnorm", "group": 4}, "model.normalization")
    # An integer where a float is declared is widened.
    _, params = registry.resolve("activation", {"name": "swish", "beta": 2}, "model.activation")
    assert params == {"beta": 2.0} and isinstance(params["beta"], float)


def test_impossible_values_raise_component_errors(registry):
    with pytest.raises(ComponentError, match="beta must be > 0"):
        registry.create("activation", {"name": "swish", "beta": 0.0})
    with pytest.raises(ComponentError, match="choose one of 1, 2, 3, 6"):
        registry.create("normalization", {"name": "groupnorm", "groups": 4}, 6)
    with pytest.raises(ComponentError, match="between 1 and 32"):
        registry.create("augmentation", {"name": "cutout", "size": 33}, augment_context(32))


def test_cutout_is_a_train_augmentation_only(registry):
    base = {"data": {"dataset": "synthetic"}, "model": {"geometry": "cifar"}}
    build_experiment({**base, "augment": {"train": ["cutout"]}}, registry)
    with pytest.raises(BadInput, match="train augmentation"):
        build_experiment({**base, "augment": {"test": "cutout"}}, registry)


# ---------------------------------------------------------------------------- activations


@pytest.mark.parametrize("beta", [0.5, 1.0, 1.5, 4.0])
def test_swish_is_x_times_sigmoid_beta_x(beta):
    x = torch.linspace(-6, 6, 241)
    y = testbed_example_plugins.swish(beta=beta)(x)
    torch.testing.assert_close(y, x * torch.sigmoid(beta * x))


def test_swish_with_beta_one_is_silu_and_large_beta_approaches_relu():
    x = torch.randn(1000)
    torch.testing.assert_close(testbed_example_plugins.swish()(x), F.silu(x))
    assert (testbed_example_plugins.swish(beta=50.0)(x) - torch.relu(x)).abs().max() < 0.01


def test_mish_is_x_tanh_softplus_x():
    x = torch.linspace(-6, 6, 241)
    torch.testing.assert_close(testbed_example_plugins.mish()(x), x * torch.tanh(F.softplus(x)))


# ---------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("groups", [1, 3, 4, 12])
def test_groupnorm_gives_each_group_zero_mean_and_unit_variance(groups):
    torch.manual_seed(0)
    b, c, h, w = 4, 12, 7, 7
    x = torch.randn(b, c, h, w) * torch.linspace(0.5, 5, c).view(1, c, 1, 1) + torch.linspace(-3, 3, c).view(1, c, 1, 1)
    y = testbed_example_plugins.groupnorm(c, groups=groups)(x)
    per_group = y.reshape(b, groups, -1)
    torch.testing.assert_close(per_group.mean(-1), torch.zeros(b, groups), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_group.var(-1, unbiased=False), torch.ones(b, groups), atol=1e-3, rtol=0)
    # ... and does not mix images or groups: each group's output depends only on that group's input.
    x2 = x.clone()
    x2[0, : c // groups] += 100.0
    y2 = testbed_example_plugins.groupnorm(c, groups=groups)(x2)
    torch.testing.assert_close(y2[1:], y[1:])
    torch.testing.assert_close(y2[0, c // groups :], y[0, c // groups :])


def test_groupnorm_rejects_groups_that_do_not_divide_the_channels():
    with pytest.raises(ValueError, match="choose one of 1, 2, 4, 8, 16"):
        testbed_example_plugins.groupnorm(16, groups=3)
    with pytest.raises(ValueError, match="groups must be >= 1"):
        testbed_example_plugins.groupnorm(16, groups=0)


# ---------------------------------------------------------------------------- augmentation


def zero_boxes(out: torch.Tensor) -> list[tuple[int, int, int, int, int]]:
    """Per image: (top, left, height, width, zero count) of its zeroed pixels."""
    boxes = []
    for image in out:
        zero = image == 0
        assert torch.equal(zero, zero[:1].expand_as(zero)), "cutout must zero every channel of the same pixels"
        rows = torch.nonzero(zero[0].any(1)).flatten()
        cols = torch.nonzero(zero[0].any(0)).flatten()
        boxes.append((int(rows[0]), int(cols[0]), len(rows), len(cols), int(zero[0].sum())))
    return boxes


def test_cutout_inside_zeroes_one_full_square_per_image_at_different_places():
    x = torch.rand(64, 3, 32, 32) + 1.0  # no zeros to begin with
    aug = testbed_example_plugins.cutout(augment_context(32), size=8, position="inside")
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    boxes = zero_boxes(out)
    for top, left, height, width, count in boxes:
        assert (height, width, count) == (8, 8, 64)  # a solid 8x8 square, nothing else
        assert 0 <= top <= 24 and 0 <= left <= 24
    assert len({(top, left) for top, left, *_ in boxes}) > 32  # a fresh place per image
    keep = out != 0
    assert torch.equal(out[keep], x[keep])  # everything outside the square untouched


def test_cutout_anywhere_clips_the_square_at_the_border():
    x = torch.rand(256, 3, 16, 16) + 1.0
    aug = testbed_example_plugins.cutout(augment_context(16), size=6)
    boxes = zero_boxes(aug(x, torch.Generator().manual_seed(1)))
    for _top, _left, height, width, count in boxes:
        assert count == height * width  # still a solid rectangle
        assert 3 <= height <= 6 and 3 <= width <= 6  # clipped to at least half the square
    assert any(h < 6 or w < 6 for _t, _l, h, w, _c in boxes)  # some centres near the border
    assert any(h == 6 and w == 6 for _t, _l, h, w, _c in boxes)


def test_cutout_follows_the_generator():
    x = torch.rand(8, 3, 32, 32) + 1.0
    aug = testbed_example_plugins.cutout(augment_context(32), size=5)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---------------------------------------------------------------------------- dataset


def test_gratings_is_deterministic_balanced_and_sized_as_asked():
    request = DataRequest(root=None, image_size=24, classes=4, train_size=40, test_size=12, seed=3)
    data = testbed_example_plugins.gratings(request)
    assert isinstance(data, InMemoryData)
    assert data.train_images.shape == (40, 3, 24, 24) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (12, 3, 24, 24)
    assert torch.bincount(data.train_labels).tolist() == [10, 10, 10, 10]
    assert len(data.class_names) == 4
    again = testbed_example_plugins.gratings(request)
    assert torch.equal(again.train_images, data.train_images) and torch.equal(again.test_labels, data.test_labels)
    other = testbed_example_plugins.gratings(DataRequest(None, 24, 4, 40, 12, seed=4))
    assert not torch.equal(other.train_images, data.train_images)


def test_gratings_defaults_and_declared_shape(registry):
    data = testbed_example_plugins.gratings(DataRequest(None, None, None, None, None, seed=0), train_images=80, test_images=16)
    declared = registry.get("dataset", "gratings").contract
    assert data.image_size == declared["image_size"] == 32
    assert len(data.class_names) == declared["classes"] == 8
    assert len(data.train_labels) == 80 and len(data.test_labels) == 16


# ---------------------------------------------------------------------------- in a real model


def test_every_variant_of_the_example_experiment_trains_a_step(registry):
    """Build each variant exactly as `testbed run` does and push one batch forward and backward."""
    experiment = load_experiment(EXPERIMENT, registry)
    used, recorded = set(), set()
    for variant in experiment.variants:
        cfg = variant.config
        for slot in ("activation", "normalization"):
            used.add(cfg["model"][slot]["name"])
        used.update(a["name"] for a in cfg["augment"]["train"])
        used.add(cfg["data"]["dataset"]["name"])
        data = load_dataset(cfg["data"], registry)
        torch.manual_seed(0)
        built = build_model(cfg["model"], len(data.class_names), data.image_size, registry, "cpu")
        records = component_records(cfg, registry)  # what the results store records per job
        flat = [records[k] for k in records if k != "augment.train"] + records["augment.train"]
        for info in flat:
            if info["name"] in {"swish", "mish", "groupnorm", "cutout", "gratings"}:
                assert info["plugin"] == PLUGIN, info
                recorded.add(info["name"])
        pipeline = build_pipeline(variant, data, built, registry, "cpu")
        inputs, labels = next(pipeline.train_batches(1, 0, 32, torch.Generator().manual_seed(0)))
        model = built.module.train()
        logits = model(inputs)
        assert logits.shape == (32, len(data.class_names))
        F.cross_entropy(logits, labels).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), variant.name
        assert model.features.conv1.weight.grad.abs().sum() > 0, variant.name
    assert {"swish", "mish", "groupnorm", "cutout", "gratings"} <= used
    assert recorded == {"swish", "mish", "groupnorm", "cutout", "gratings"}
