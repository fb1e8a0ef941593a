"""A train augmentation: cutout, applied to a whole batch at once with one random draw per image."""

from __future__ import annotations

from typing import Literal

import torch

from testbed.data import Augmentation, AugmentContext


class Cutout(Augmentation):
    """Zero a size x size square of every image (all channels), at a random place per image.

    It runs after preprocessing, so zero is the mean pixel under mean subtraction or
    standardization. ``position``: ``"anywhere"`` draws the square's centre anywhere in the
    image and clips the square at the border (the paper's version); ``"inside"`` keeps the
    whole square inside the image.
    """

    def __init__(self, size: int, position: str):
        self.size = size
        self.position = position

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.size
        if s > min(h, w):
            raise ValueError(f"a {s} px square does not fit {h}x{w} px images")
        # All randomness from the generator testbed passes in, on the batch's device: the run is
        # then reproducible, and resuming from a checkpoint continues the same random stream.
        if self.position == "inside":
            top = torch.randint(0, h - s + 1, (b,), generator=generator, device=x.device)
            left = torch.randint(0, w - s + 1, (b,), generator=generator, device=x.device)
        else:
            top = torch.randint(0, h, (b,), generator=generator, device=x.device) - s // 2
            left = torch.randint(0, w, (b,), generator=generator, device=x.device) - s // 2
        # One boolean mask [B, 1, H, W] by broadcasting: no Python loop over the images.
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        top, left = top.view(b, 1, 1), left.view(b, 1, 1)
        square = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)
        return x.masked_fill(square.unsqueeze(1), 0.0)


def cutout(ctx: AugmentContext, *, size: int = 8, position: Literal["anywhere", "inside"] = "anywhere"):
    # `ctx` is positional context (the model's input size, the stored image size, the training
    # set's statistics); `size` and `position` are parameters. The Literal annotation makes
    # `position` a choice: anything else is rejected when the experiment file is loaded.
    largest = min(ctx.input_size, ctx.image_size)
    if not 1 <= size <= largest:
        raise ValueError(f"size must be between 1 and {largest} px (the smaller of the image and input sizes), got {size}")
    return Cutout(size, position)
