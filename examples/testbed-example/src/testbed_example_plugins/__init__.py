"""testbed-example: the hook implementations, i.e. everything this plugin adds to testbed.

testbed imports this module through the ``testbed`` entry point in pyproject.toml and calls
each ``@hookimpl`` function below with a ``register(name, factory, help, **contract)`` callback. The
components themselves live in the submodules, one per kind.
"""

from __future__ import annotations

from testbed import hookimpl
from testbed_example_plugins.activations import mish, swish
from testbed_example_plugins.architectures import TINY_DEFAULTS, TINY_SLOTS, tiny_cnn
from testbed_example_plugins.augmentations import cutout
from testbed_example_plugins.datasets import CLASSES, IMAGE_SIZE, gratings
from testbed_example_plugins.normalizations import groupnorm

__version__ = "0.1.0"


@hookimpl
def register_activations(register):
    register("swish", swish, "x * sigmoid(beta * x) (Ramachandran et al. 2017); beta = 1 is SiLU")
    register("mish", mish, "x * tanh(softplus(x)) (Misra 2019)")


@hookimpl
def register_architectures(register):
    # slots: the [model] keys it honours (others are refused); placements: those it can be built
    # under; defaults: its values for [model] keys the experiment leaves out
    register(
        "tiny-cnn",
        tiny_cnn,
        "two 3x3 convs, global average pooling, one linear layer",
        slots=TINY_SLOTS,
        placements=("single",),
        defaults=TINY_DEFAULTS,
    )


@hookimpl
def register_normalizations(register):
    register("groupnorm", groupnorm, "group normalization (Wu & He 2018): mean/std over each group of channels")


@hookimpl
def register_augmentations(register):
    # role: a train augmentation (goes in augment.train); test-time views say "test" (augment.test)
    register("cutout", cutout, "zero a random size x size square in every image (DeVries & Taylor 2017) [train]", role="train")


@hookimpl
def register_datasets(register):
    register(
        "gratings",
        gratings,
        "generated oriented sine gratings, one orientation per class; deterministic, offline",
        image_size=IMAGE_SIZE,
        classes=CLASSES,
    )
