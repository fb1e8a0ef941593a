"""Datasets: generated shapes (the offline default), CIFAR-10, and ImageNet-layout folders."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from pathlib import Path

import torch

from testbed import hookimpl
from testbed.data import DataRequest, InMemoryData
from testbed.errors import BadInput

# ---------------------------------------------------------------------------- synthetic

SHAPES = 5  # disk, square, diamond, ring, cross
TEXTURES = 4  # solid, horizontal stripes, vertical stripes, checker


def _hsv_to_rgb(h, s, v):
    """Vectorised HSV -> RGB, all inputs in [0, 1], shape [...] -> [..., 3]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    return v.unsqueeze(-1) - (v * s).unsqueeze(-1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def render_shapes(labels: torch.Tensor, size: int, classes: int, generator: torch.Generator, noise: float) -> torch.Tensor:
    """Images [B, 3, size, size] uint8 of class-dependent shapes, textures and hues, with nuisance
    variation in position, scale, hue, brightness, background and pixel noise."""
    b = labels.shape[0]

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator)

    shape_id = labels % SHAPES
    texture_id = (labels // SHAPES) % TEXTURES
    hue = (labels.float() * 0.61803398875 + uniform(-0.03, 0.03)) % 1.0
    colour = _hsv_to_rgb(hue, uniform(0.55, 1.0), uniform(0.6, 1.0))  # [B, 3]
    background = _hsv_to_rgb(uniform(0, 1), uniform(0, 0.35), uniform(0.15, 0.55))

    grid = (torch.arange(size).float() + 0.5) / size
    cy, cx, radius = uniform(0.3, 0.7), uniform(0.3, 0.7), uniform(0.2, 0.33)
    v = (grid.view(1, size, 1) - cy.view(b, 1, 1)) / radius.view(b, 1, 1)
    u = (grid.view(1, 1, size) - cx.view(b, 1, 1)) / radius.view(b, 1, 1)
    r = torch.sqrt(u * u + v * v)
    masks = torch.stack(
        [
            r <= 1.0,
            torch.maximum(u.abs(), v.abs()) <= 0.85,
            u.abs() + v.abs() <= 1.15,
            (r >= 0.55) & (r <= 1.0),
            ((u.abs() <= 0.32) & (v.abs() <= 1.0)) | ((v.abs() <= 0.32) & (u.abs() <= 1.0)),
        ]
    )  # [SHAPES, B, H, W]
    mask = masks[shape_id, torch.arange(b)].float()
    period = uniform(0.45, 0.6).view(b, 1, 1)
    stripes_h = (torch.sin(2 * math.pi * v / period) > 0).float().expand(b, size, size)
    stripes_v = (torch.sin(2 * math.pi * u / period) > 0).float().expand(b, size, size)
    textures = torch.stack([torch.ones_like(stripes_h), stripes_h, stripes_v, (stripes_h + stripes_v) % 2])
    shade = 0.45 + 0.55 * textures[texture_id, torch.arange(b)]
    ramp = 0.8 + 0.4 * grid.view(1, 1, size) * uniform(-1, 1).view(b, 1, 1)  # lighting gradient
    fg = colour.view(b, 3, 1, 1) * shade.unsqueeze(1)
    bg = background.view(b, 3, 1, 1) * ramp.unsqueeze(1)
    img = mask.unsqueeze(1) * fg + (1 - mask.unsqueeze(1)) * bg
    img = img * 255 + noise * torch.randn(b, 3, size, size, generator=generator)
    return img.round().clamp(0, 255).to(torch.uint8)


def _generate(n: int, size: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]
    chunk = max(1, 2**21 // (size * size))
    images = [render_shapes(part, size, classes, generator, noise=10.0) for part in labels.split(chunk)]
    return torch.cat(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8), labels


def synthetic(request: DataRequest, *, train_images: int = 2000, test_images: int = 500):
    """Generated on the fly, deterministic from data.seed; data.train_size/test_size override the counts."""
    size = request.image_size or 32
    classes = request.classes or 10
    n_train = request.train_size or train_images
    n_test = request.test_size or test_images
    if size < 8:
        raise ValueError(f"image_size must be >= 8 px, got {size}")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    if min(n_train, n_test) < classes:
        raise ValueError(f"{min(n_train, n_test)} images cannot hold all {classes} classes")
    train = _generate(n_train, size, classes, request.seed * 2)
    test = _generate(n_test, size, classes, request.seed * 2 + 1)
    return InMemoryData(*train, *test, class_names=[f"class{c}" for c in range(classes)])


# ---------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "testbed"


def decode_folder_split(split_dir: Path, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode train/<class>/*.jpg|png into uint8 [N, 3, H, W] (all images must share one size)."""
    import warnings

    from torchvision.io import ImageReadMode, decode_image, read_file

    # torchvision 0.29 deprecates its decoders in favour of torchcodec, warning on every call.
    warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision are deprecated.*")
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = split_dir / name
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        except OSError as exc:  # missing or unreadable class folder
            raise BadInput(
                f"{folder}: cannot list the class folder ({exc.strerror or exc}); {split_dir} needs one folder per class: "
                f"{', '.join(class_names)}"
            ) from None
        for path in files:
            try:
                images.append(decode_image(read_file(str(path)), mode=ImageReadMode.RGB))
            except (RuntimeError, OSError) as exc:
                raise BadInput(f"{path}: not a readable image ({exc}); remove or replace it") from None
            labels.append(label)
    if not images:
        raise BadInput(f"{split_dir}: no .jpg/.png images in its class folders")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise BadInput(f"{split_dir}: images of different sizes {sorted(shapes)[:3]}; CIFAR-10 images are all 3x32x32")
    return torch.stack(images), torch.tensor(labels)


# Decoded CIFAR-10 folders by absolute path, so that subsets and resizes of one folder (several
# [data] tables) decode its 60,000 JPEGs once per process. A folder's images do not change
# while testbed runs; testbed.data.clear_datasets() does not clear this one (nothing needs it to).
_CIFAR_CACHE: dict[str, InMemoryData] = {}

# Across processes, a large folder's decoded images are kept in the user cache (never in the
# project): decoding CIFAR-10's 60,000 JPEGs took 15-29 s here, listing the folder for the key
# and reading the file back under 1 s, and every `testbed run` and every Dask worker process
# would decode them again (README, Performance).
DISK_CACHE_FROM = 5000  # images: smaller folders decode faster than a cache file is worth
CACHE_FORMAT = 1  # part of every key: raise it when decode_folder_split's output changes
_SUFFIXES = (".jpg", ".jpeg", ".png")


def _folder_digest(root: Path, names: list[str]) -> tuple[str, int]:
    """(a digest of every image file's name, size and modification time, the number of files):
    a cache file is used only for exactly the folder it was decoded from."""
    import torchvision  # its decoder (libjpeg-turbo inside) makes the pixels: a new one, a new key

    digest, count = hashlib.sha256(f"{CACHE_FORMAT}|{torchvision.__version__}|{root.resolve()}".encode()), 0
    for split in ("train", "test"):
        for name in names:
            try:
                with os.scandir(root / split / name) as entries:
                    files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.name.lower().endswith(_SUFFIXES))
            except OSError:
                files = []  # decode_folder_split names the folder in its error
            count += len(files)
            digest.update(repr((split, name, files)).encode())
    return digest.hexdigest()[:24], count


def _decode_cifar_folder(root: Path, names: list[str]) -> InMemoryData:
    """Both splits decoded, through the user cache when the folder is large."""
    key, count = _folder_digest(root, names)
    folder = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]  # one cache file per folder: a new one replaces it
    path = default_cache() / "decoded" / f"cifar10-{folder}-{key}.pt"
    if count >= DISK_CACHE_FROM and path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            return InMemoryData(saved["train_images"], saved["train_labels"], saved["test_images"], saved["test_labels"], names)
        except Exception:  # a cut or foreign file: decode again and replace it
            pass
    data = InMemoryData(*decode_folder_split(root / "train", names), *decode_folder_split(root / "test", names), names)
    if count >= DISK_CACHE_FROM:
        tensors = ("train_images", "train_labels", "test_images", "test_labels")
        partial = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".partial")  # unique per writer
            os.close(handle)
            torch.save({name: getattr(data, name) for name in tensors}, partial)
            os.replace(partial, path)  # atomic: a reader never sees half a file
            for stale in path.parent.glob(f"cifar10-{folder}-*.pt"):
                if stale != path:
                    stale.unlink(missing_ok=True)
        except (OSError, RuntimeError):  # read-only or full (torch.save says RuntimeError): decoding again is the only cost
            if partial is not None:
                Path(partial).unlink(missing_ok=True)
    return data


def _load_cifar(root: Path) -> InMemoryData | None:
    key = str(root.resolve())
    if key in _CIFAR_CACHE:
        return _CIFAR_CACHE[key]
    if (root / "train").is_dir() and (root / "test").is_dir():
        names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if names != sorted(CIFAR10_CLASSES):
            raise BadInput(f"{root / 'train'}: expected the 10 CIFAR-10 class folders, found {names[:12]}")
        data = _decode_cifar_folder(root, CIFAR10_CLASSES)
    elif (root / "cifar-10-batches-py").is_dir():
        data = _from_torchvision(root, download=False)
    else:
        return None
    _CIFAR_CACHE[key] = data
    return data


def _from_torchvision(root: Path, download: bool) -> InMemoryData:
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False):
        ds = CIFAR10(str(root), train=train, download=download)
        splits += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)]
    return InMemoryData(*splits, class_names=list(CIFAR10_CLASSES))


def cifar10(request: DataRequest, *, download: bool = True):
    """CIFAR-10 from data.root, else $TESTBED_DATA/cifar10, else the user cache (downloaded there)."""
    candidates = []
    if request.root is not None:
        candidates.append(request.root)
    elif request.data_home() is not None:
        candidates.append(request.data_home() / "cifar10")
    cache = default_cache() / "cifar10"
    candidates.append(cache)
    for root in candidates:
        data = _load_cifar(root)
        if data is not None:
            return data
    looked = ", ".join(str(c) for c in candidates)
    if download and request.root is None:
        try:
            cache.mkdir(parents=True, exist_ok=True)
            data = _from_torchvision(cache, download=True)
            _CIFAR_CACHE[str(cache.resolve())] = data
            return data
        except Exception as exc:  # no network, no disk space, ...
            reason = f"download failed ({type(exc).__name__}: {str(exc)[:120]})"
    else:
        reason = "download is off" if not download else "data.root was given, so nothing is downloaded"
    raise BadInput(
        f"CIFAR-10 not found (looked in {looked}); {reason}. Fix: set TESTBED_DATA to a folder holding "
        f"cifar10/train/<class>/*.jpg and cifar10/test/<class>/*.jpg (e.g. TESTBED_DATA=../shared/datasets), "
        f"or set data.root, or allow the download"
    )


@hookimpl
def register_datasets(register):
    # image_size and classes: what `testbed show` may assume without loading the data
    register(
        "synthetic", synthetic, "generated class-dependent shapes, colours and textures; deterministic, offline", image_size=32, classes=10
    )
    register(
        "cifar10", cifar10, "CIFAR-10: imagefolder JPEGs under $TESTBED_DATA/cifar10, or torchvision's download", image_size=32, classes=10
    )
