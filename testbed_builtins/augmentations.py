"""Augmentations (section 4.1), applied to whole batches on the training device.

Train: ``random-crop``, ``hflip``, ``pca-lighting``. Test views: ``center``, ``ten-crop``.
Each image gets its own random draw, but no Python runs per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from testbed import hookimpl
from testbed.data import Augmentation, AugmentContext, TestViews, center_crop


def crop_batch(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Crop image b at (top[b], left[b]) to size x size, for every b at once (one gather)."""
    b = x.shape[0]
    offsets = torch.arange(size, device=x.device)
    rows = (top.view(b, 1) + offsets).view(b, 1, size, 1)
    cols = (left.view(b, 1) + offsets).view(b, 1, 1, size)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return x[batch, channels, rows, cols]


def auto_padding(ctx: AugmentContext, size: int, padding: int | None) -> int:
    """None: no padding when the images are larger than the patches (the paper's 227 of 256),
    else an eighth of the patch size (4 px at 32 px, the usual CIFAR form)."""
    if padding is not None:
        return padding
    return 0 if ctx.image_size > size else size // 8


class RandomCrop(Augmentation):
    """Random size x size patches, from images zero-padded by ``padding`` on every side.

    At 256 px: the paper's 224 (here 227) patches of 256 px images. At 32 px: 32 px patches of
    images padded by 4, the usual CIFAR form. Padding is zero after preprocessing, i.e. the
    mean pixel under mean subtraction."""

    def __init__(self, ctx: AugmentContext, size, padding):
        self.size = size or ctx.input_size
        self.padding = auto_padding(ctx, self.size, padding)
        if self.size > ctx.image_size + 2 * self.padding:
            raise ValueError(f"a {self.size} px crop does not fit {ctx.image_size} px images padded by {self.padding}")

    def __call__(self, x, generator):
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        slack = x.shape[-1] - self.size
        top, left = torch.randint(0, slack + 1, (2, x.shape[0]), generator=generator, device=x.device)
        return crop_batch(x, top, left, self.size)


class HorizontalFlip(Augmentation):
    def __init__(self, ctx: AugmentContext, p):
        self.p = p

    def __call__(self, x, generator):
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class PCALighting(Augmentation):
    """Section 4.1: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to every pixel, a_i ~ N(0, std) drawn
    per image per presentation; p_i, l_i the eigenvectors and eigenvalues of the training set's
    RGB covariance. The covariance is taken of pixels scaled to [0, 1]: the formula is not
    scale-invariant, and at 0-255 scale l_1 is in the thousands."""

    def __init__(self, ctx: AugmentContext, std):
        self.std = std
        self.vectors = ctx.stats.rgb_eigenvectors
        self.values = ctx.stats.rgb_eigenvalues
        self.pixel_scale = ctx.pixel_scale  # raw pixel units -> preprocessed units

    def shifts(self, batch: int, generator, device) -> torch.Tensor:
        """The RGB shift of each image, [B, 3], in raw 0-255 pixel units."""
        alpha = torch.randn(batch, 3, generator=generator, device=device) * self.std
        return 255.0 * (alpha * self.values.to(device)) @ self.vectors.to(device).T

    def __call__(self, x, generator):
        shift = self.shifts(x.shape[0], generator, x.device) * self.pixel_scale.to(x.device)
        return x + shift.view(-1, 3, 1, 1)


class CenterView(TestViews):
    def __init__(self, ctx: AugmentContext):
        self.size = ctx.input_size

    def __call__(self, x):
        return center_crop(x, self.size).unsqueeze(0)


class TenCrop(TestViews):
    """Four corner patches and the centre patch, and their horizontal reflections (section 4.1)."""

    def __init__(self, ctx: AugmentContext, padding):
        self.size = ctx.input_size
        self.padding = padding = auto_padding(ctx, self.size, padding)
        if self.size > ctx.image_size + 2 * padding:
            raise ValueError(f"{self.size} px views do not fit {ctx.image_size} px images padded by {padding}")

    def __call__(self, x):
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        s, h, w = self.size, x.shape[-2], x.shape[-1]
        corners = [x[..., :s, :s], x[..., :s, w - s :], x[..., h - s :, :s], x[..., h - s :, w - s :], center_crop(x, s)]
        views = torch.stack(corners)
        return torch.cat([views, views.flip(-1)])


def random_crop(ctx: AugmentContext, *, size: int | None = None, padding: int | None = None):
    if (padding is not None and padding < 0) or (size is not None and size < 1):
        raise ValueError("size must be >= 1 and padding >= 0")
    return RandomCrop(ctx, size, padding)


def hflip(ctx: AugmentContext, *, p: float = 0.5):
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return HorizontalFlip(ctx, p)


def pca_lighting(ctx: AugmentContext, *, std: float = 0.1):
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return PCALighting(ctx, std)


def center(ctx: AugmentContext):
    return CenterView(ctx)


def ten_crop(ctx: AugmentContext, *, padding: int | None = None):
    if padding is not None and padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return TenCrop(ctx, padding)


@hookimpl
def register_augmentations(register):
    register("random-crop", random_crop, "random patches (paper: 227 of 256; 32 px data: pad 4, crop 32) [train]", role="train")
    register("hflip", hflip, "horizontal reflection with probability p [train]", role="train")
    register("pca-lighting", pca_lighting, "PCA colour noise, alpha ~ N(0, 0.1) per image (section 4.1) [train]", role="train")
    register("center", center, "the centre patch [test]", role="test")
    register(
        "ten-crop",
        ten_crop,
        "4 corners + centre and their reflections, softmax averaged (section 4.1; 32 px: of images padded by 4) [test]",
        role="test",
    )
