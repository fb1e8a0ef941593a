"""How to compute a locally connected layer, and what it costs a conv-local training step.

Three forms of the same LocallyConnected2d (same weights): unfold + one batched matmul over the
positions (what testbed_builtins/architectures.py uses), unfold + einsum, and a Python loop over
positions (the reference). Timed side by side in alternating rounds (forward + backward of the
conv-local net's local3 at batch 128), then the whole conv-local training step with the layers
against the same step with the two locally connected layers replaced by 3x3 convolutions of the
same shapes: how much of the step the unshared weights cost.

    python benchmarks/locally_connected.py [--rounds 7] [--batch 128]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from testbed import plugins
from testbed.experiment import build_experiment
from testbed.model import build_model
from testbed_builtins.architectures import LocallyConnected2d


def einsum_forward(layer: LocallyConnected2d, x):
    h = w = layer.output_size
    patches = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # [B, K, L]
    weight = layer.weight.reshape(h * w, layer.out_channels, -1)  # [L, O, K]
    return torch.einsum("bkl,lok->bol", patches, weight).reshape(x.shape[0], layer.out_channels, h, w) + layer.bias


def timed(fn, repeat=3) -> float:
    tick = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - tick) / repeat


def layer_round(layer, x, forms):
    out = {}
    for name, forward in forms.items():

        def step(forward=forward):
            layer.zero_grad(set_to_none=True)
            forward(x).square().mean().backward()

        out[name] = timed(step)
    return out


def net_step(model, x, y, optimizer):
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def conv_twin(model):
    """The same net with local3/local4 replaced by shared-weight 3x3 convolutions."""
    import copy

    twin = copy.deepcopy(model)
    for name in ("local3", "local4"):
        lc = getattr(twin.features, name)
        setattr(twin.features, name, nn.Conv2d(lc.in_channels, lc.out_channels, 3, padding=1))
    return twin


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = LocallyConnected2d(64, 64, 6, 3, padding=1)
    x = torch.randn(args.batch, 64, 6, 6)
    forms = {"unfold+bmm": layer, "unfold+einsum": lambda v: einsum_forward(layer, v)}
    registry = plugins.registry()
    cfg = build_experiment({"model": {"architecture": "conv-local"}}, registry).baseline.config["model"]
    model = build_model(cfg, 10, 32, registry, "cpu").module
    twin = conv_twin(model)
    images, labels = torch.randn(args.batch, 3, 24, 24), torch.randint(0, 10, (args.batch,))
    steps = {
        name: net_step(m, images, labels, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9))
        for name, m in (("conv-local", model), ("convs in place of local", twin))
    }
    rows: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, seconds in layer_round(layer, x, forms).items():
            rows.setdefault(f"local3 {name}", []).append(seconds)
        for name, step in steps.items():
            rows.setdefault(f"step {name}", []).append(timed(step, 2))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name, values in rows.items():
        print(f"{name:32s} median {1000 * statistics.median(values):8.2f} ms")
    ratio = statistics.median(a / b for a, b in zip(rows["local3 unfold+einsum"], rows["local3 unfold+bmm"]))
    share = statistics.median(a / b for a, b in zip(rows["step conv-local"], rows["step convs in place of local"]))
    print(f"einsum / bmm (local3 fwd+bwd): {ratio:.2f}x;  conv-local step / same step with convs: {share:.2f}x")


if __name__ == "__main__":
    main()
