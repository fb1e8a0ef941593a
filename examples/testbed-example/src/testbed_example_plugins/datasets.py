"""A dataset: oriented sine gratings, generated on the fly and deterministic from data.seed.

Class c is a grating at angle c * 180 / classes degrees; phase, spatial frequency, contrast,
colour and pixel noise vary within a class. Small enough to hold in memory, so the factory
returns ``InMemoryData`` (uint8 images [N, 3, S, S], int64 labels).
"""

from __future__ import annotations

import math

import torch

from testbed.data import DataRequest, InMemoryData


def _render(labels: torch.Tensor, size: int, classes: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    n = labels.shape[0]

    def uniform(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, generator=generator)).view(n, 1, 1)

    angle = labels.float().view(n, 1, 1) * math.pi / classes + uniform(-0.05, 0.05)
    cycles = uniform(2.0, 4.0)  # periods across the image
    phase = uniform(0.0, 2 * math.pi)
    contrast = uniform(0.4, 1.0)
    grid = torch.arange(size).float() / size
    y, x = grid.view(1, size, 1), grid.view(1, 1, size)
    wave = torch.sin(2 * math.pi * cycles * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)  # [N, S, S]
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=generator)  # a random tint per image
    img = 127.5 + 127.5 * contrast.unsqueeze(1) * wave.unsqueeze(1) * colour
    img = img + noise * torch.randn(n, 3, size, size, generator=generator)
    return img.round().clamp(0, 255).to(torch.uint8)


def _split(n: int, size: int, classes: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]  # balanced classes
    return _render(labels, size, classes, noise, generator), labels


# The dataset's own image size and class count, used when the experiment file does not set
# data.image_size / data.classes; declared at registration so `testbed show` need not generate data.
IMAGE_SIZE = 32
CLASSES = 8


def gratings(request: DataRequest, *, train_images: int = 1000, test_images: int = 200, noise: float = 16.0):
    # `request` is positional context: what the experiment's [data] table asks for. Its
    # image_size / classes / train_size / test_size are None when the file leaves them out;
    # the dataset then uses its own. testbed subsets and resizes the result afterwards anyway,
    # but generating exactly what was asked is cheaper.
    size = request.image_size or IMAGE_SIZE
    classes = request.classes or CLASSES
    n_train = request.train_size or train_images
    n_test = request.test_size or test_images
    if size < 8:
        raise ValueError(f"image_size must be >= 8 px, got {size}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    if min(n_train, n_test) < classes:
        raise ValueError(f"{min(n_train, n_test)} images cannot hold all {classes} classes")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    train = _split(n_train, size, classes, noise, 2 * request.seed)
    test = _split(n_test, size, classes, noise, 2 * request.seed + 1)
    return InMemoryData(*train, *test, class_names=[f"{180 * c / classes:g}deg" for c in range(classes)])
