"""A plain, hand-written PyTorch training script: the yardstick for `testbed run`'s overhead.

The paper's AlexNet at 227 px from torch's own layers (two towers as conv groups, LRN after
conv1 and conv2), random uint8 images standardized per channel, SGD with momentum, one pass
over the training images in shuffled batches, then top-1 error on the test images (centre
view, i.e. the whole 227 px image). Nothing else: no checkpoint, no plots, no store.

    python benchmarks/plain_alexnet.py --train 128 --test 32 --batch 32 --epochs 1
    python benchmarks/plain_alexnet.py --lrn testbed     # the testbed's LRN instead of torch's

Prints one JSON line: wall-clock seconds from the first line of the script, the training
time, and the test error.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402


def alexnet(classes: int, lrn) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4),
        nn.ReLU(),
        lrn(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2),
        nn.ReLU(),
        lrn(),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 256, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(4096, classes),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--lrn", choices=["torch", "testbed"], default="torch")
    args = parser.parse_args()

    if args.lrn == "torch":
        lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)  # noqa: E731
    else:
        from testbed_builtins.normalizations import lrn as testbed_lrn

        lrn = lambda: testbed_lrn(0)  # noqa: E731

    torch.manual_seed(0)
    s = args.size
    train_x = torch.randint(0, 256, (args.train, 3, s, s), dtype=torch.uint8)
    train_y = torch.randint(0, args.classes, (args.train,))
    test_x = torch.randint(0, 256, (args.test, 3, s, s), dtype=torch.uint8)
    test_y = torch.randint(0, args.classes, (args.test,))
    flat = train_x.permute(1, 0, 2, 3).reshape(3, -1).float()
    mean, std = flat.mean(1).view(3, 1, 1), flat.std(1).view(3, 1, 1)

    model = alexnet(args.classes, lrn)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    tick = time.perf_counter()
    for _epoch in range(args.epochs):
        model.train()
        order = torch.randperm(args.train)
        for i in range(args.train // args.batch):
            idx = order[i * args.batch : (i + 1) * args.batch]
            x = (train_x[idx].float() - mean) / std
            loss = F.cross_entropy(model(x), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    train_s = time.perf_counter() - tick

    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, args.test, 500):
            x = (test_x[i : i + 500].float() - mean) / std
            wrong += int((model(x).argmax(1) != test_y[i : i + 500]).sum())
    print(json.dumps({"wall_s": time.perf_counter() - START, "train_s": train_s, "top1_error": wrong / args.test, "loss": float(loss)}))


if __name__ == "__main__":
    main()
