"""Weight initialisation rules. Each returns a callable over [(layer name, module), ...]."""

from __future__ import annotations

from torch import nn

from testbed import hookimpl


def paper(*, std: float = 0.01, bias_one: list[str] = ["conv2", "conv4", "conv5", "fc6", "fc7"]):  # noqa: B006
    """Section 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden FC layers, else 0."""
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std}")

    def apply(layers):
        for name, module in layers:
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.constant_(module.bias, 1.0 if name in bias_one else 0.0)

    return apply


def caffe():
    """Caffe's bvlc_alexnet: std 0.01 (fc6/fc7 0.005); biases 0.1 where the paper has 1, else 0."""
    ones = {"conv2", "conv4", "conv5", "fc6", "fc7"}

    def apply(layers):
        for name, module in layers:
            nn.init.normal_(module.weight, 0.0, 0.005 if name in ("fc6", "fc7") else 0.01)
            nn.init.constant_(module.bias, 0.1 if name in ones else 0.0)

    return apply


def pytorch():
    """Leave PyTorch's own defaults (Kaiming-uniform weights, fan-in scaled biases)."""

    def apply(layers):
        return None

    return apply


def kaiming():
    """He et al. 2015: weights N(0, 2/fan_in) keep the signal's scale through ReLU layers; biases 0."""

    def apply(layers):
        for _name, module in layers:
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    return apply


# initW of cuda-convnet's CIFAR-10 layer files (paper.md): layers-18pct (conv1-conv3, fc10) and
# layers-conv-local-11pct (conv1, conv2, local3, local4, fc10) agree wherever they share a name.
CUDA_CONVNET_STD = {"conv1": 1e-4, "conv2": 0.01, "conv3": 0.01, "local3": 0.04, "local4": 0.04, "fc10": 0.01}


def cuda_convnet(*, std: dict[str, float] = CUDA_CONVNET_STD, default_std: float = 0.01, bias: float = 0.0):  # noqa: B006
    """Per-layer N(0, std[name]) weights (layers not listed: default_std), constant biases."""
    if default_std <= 0 or any(v <= 0 for v in std.values()):
        raise ValueError("every std must be > 0")

    def apply(layers):
        for name, module in layers:
            nn.init.normal_(module.weight, 0.0, std.get(name, default_std))
            nn.init.constant_(module.bias, bias)

    return apply


@hookimpl
def register_inits(register):
    register("paper", paper, "N(0, 0.01) weights; biases 1 in conv2/4/5 and fc6/7, 0 elsewhere (section 5)")
    register("caffe", caffe, "Caffe bvlc_alexnet: std 0.01 (fc6/7 0.005), biases 0.1 where the paper has 1")
    register("cuda-convnet", cuda_convnet, "the authors' CIFAR-10 layer files: per-layer std (conv1 1e-4, local 0.04, rest 0.01), biases 0")
    register("pytorch", pytorch, "PyTorch's defaults (what torchvision's AlexNet uses)")
    register("kaiming", kaiming, "He et al. 2015: N(0, 2/fan_in) weights, zero biases (the modern fix for deep ReLU nets)")
