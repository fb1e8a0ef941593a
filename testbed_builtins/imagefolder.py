"""The ``imagefolder`` dataset: ImageNet-layout folders of JPEG/PNG files.

Layout::

    ROOT/train/<class>/*.jpg|*.jpeg|*.png
    ROOT/val/<class>/...      (or ROOT/test/<class>/... when there is no val/)

ROOT is ``data.root``, else ``$TESTBED_DATA/imagefolder``. Class names are the sorted
folder names under ``train/``; the held-out split must have the same folders.

Preprocessing is the paper's (section 2): the shorter side is resized to ``resize`` px
(bilinear, antialiased) and the central ``crop`` x ``crop`` patch is kept, so every stored
image is uint8 [3, crop, crop]. Greyscale, palette, RGBA and CMYK files become RGB;
16-bit PNGs are scaled to 8 bits. ``data.image_size`` sets the stored size (the crop) and
scales ``resize`` by the same factor (with the defaults, both become ``image_size``).

Small sets (decoded size under ``memory_limit_gib``) are decoded once, by ``workers``
processes, and held in memory; larger ones stream from disk through DataLoader workers.
``decode_device = "cuda"`` (or ``"auto"`` with a GPU there) decodes on the GPU with nvJPEG,
a batch at a time: in memory, the whole set at load time; streaming, the workers only read the
files and the training process decodes each batch (``StreamingData.decode_batch``).
Files without an image extension are ignored (counted, one warning). Files with an image
extension that cannot be decoded are skipped: at load time in memory (one warning naming
them), or as they are met when streaming (the loader drops them; one warning per file).
A corrupt file never stops a run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Literal

import torch

from testbed import hookimpl
from testbed.data import DataRequest, InMemoryData, StreamingData, balanced_subset
from testbed.errors import BadInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # compared case-insensitively
HELD_OUT = ("val", "test")  # the first that exists is the held-out split
LAYOUT_HINT = "a folder holding train/<class>/*.jpg and val/<class>/*.jpg (or test/<class>/*.jpg)"
DECODE_BATCH = 64  # images per in-memory decoding task
SERIAL_BELOW = 256  # up to this many images are decoded in the main process (workers take time to start)
MAX_ASPECT = 16  # longer side kept before resizing, in multiples of the shorter (bounds memory; the crop is central)


def _say(message: str) -> None:
    print(f"imagefolder: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """A short reason for a decode failure (torchvision's messages start with a C++ source location)."""
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"^.*?\.(?:cpp|cu|h):\d+,\s*", "", text)
    return text.splitlines()[0][:160]


# ---------------------------------------------------------------------------- decoding


def _to_rgb_uint8(image: torch.Tensor) -> torch.Tensor:
    if image.dtype != torch.uint8:  # 16-bit PNG
        from torchvision.transforms.v2.functional import to_dtype

        image = to_dtype(image, torch.uint8, scale=True)
    return image


def _resize_crop(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """Shorter side to ``resize`` (bilinear, antialiased), then the central ``crop`` x ``crop``."""
    from torchvision.transforms.v2.functional import center_crop
    from torchvision.transforms.v2.functional import resize as resize_fn

    h, w = image.shape[-2:]
    if min(h, w) < 1:
        raise ValueError(f"empty image ({h}x{w})")
    short = min(h, w)
    if max(h, w) > MAX_ASPECT * short:  # a sliver: only its centre can reach the crop
        image = center_crop(image, [min(h, MAX_ASPECT * short), min(w, MAX_ASPECT * short)])
    image = resize_fn(image, [resize], antialias=True)
    return center_crop(image, [crop, crop]).contiguous()


def decode_file(data: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """A file's bytes (uint8 1-D) -> uint8 [3, crop, crop] on the CPU. Raises on an undecodable file."""
    from torchvision.io import ImageReadMode, decode_image

    return _resize_crop(_to_rgb_uint8(decode_image(data, mode=ImageReadMode.RGB)), resize, crop)


def load_image(path: str, resize: int, crop: int) -> torch.Tensor:
    """One file -> uint8 [3, crop, crop] on the CPU. Raises on an unreadable file."""
    from torchvision.io import read_file

    return decode_file(read_file(path), resize, crop)


def _is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


_DECODE_STREAMS: dict[int, torch.cuda.Stream] = {}


@contextlib.contextmanager
def _own_stream(device):
    """On a GPU, a CUDA stream of the decoder's own, current while it works and drained when it
    is done. nvJPEG is reported (pytorch/vision#9606) to write its output before work queued on
    the caller's stream has run, so with the training step's kernels still queued it could be
    handed (and overwrite) memory they are about to read; a stream that only decodes is idle."""
    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _DECODE_STREAMS:
        _DECODE_STREAMS[index] = torch.cuda.Stream(index)
    stream = _DECODE_STREAMS[index]
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        stream.synchronize()


def decode_batch(datas: list[torch.Tensor], resize: int, crop: int, device="cuda") -> tuple[torch.Tensor, dict[int, BaseException]]:
    """Files' bytes (uint8 1-D tensors) -> (uint8 [K, 3, crop, crop] on the CPU, the K files it
    decoded in order; {position: exception} for the others).

    The JPEGs are decoded in one torchvision.io.decode_jpeg call on ``device`` (nvJPEG on
    "cuda", libjpeg-turbo on "cpu") and resized and cropped there as ``load_image`` does;
    anything it cannot decode (PNG, CMYK, odd JPEGs) falls back to the CPU path, file by file.
    On the CPU every image is the one ``load_image`` gives."""
    with _own_stream(device):
        return _decode_batch(datas, resize, crop, device)


def _decode_batch(datas, resize, crop, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    jpegs = [i for i, d in enumerate(datas) if _is_jpeg(d)]
    decoded: dict[int, torch.Tensor] = {}
    if jpegs:
        try:
            decoded = dict(zip(jpegs, decode_jpeg([datas[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)))
        except Exception:  # one bad file fails the batch: retry one by one
            for i in jpegs:
                try:
                    decoded[i] = decode_jpeg(datas[i], mode=ImageReadMode.RGB, device=device)
                except Exception:
                    pass
    images: list[torch.Tensor] = []
    failures: dict[int, BaseException] = {}
    for i, data in enumerate(datas):
        try:
            image = decoded.pop(i, None)  # frees the full-size image once cropped
            if image is not None and image.shape[0] == 3:
                images.append(_resize_crop(image, resize, crop))
            else:
                images.append(decode_file(data, resize, crop).to(device))
        except Exception as exc:
            failures[i] = exc
    if not images:
        return torch.empty(0, 3, crop, crop, dtype=torch.uint8), failures
    return torch.stack(images).cpu(), failures  # one copy off the GPU per batch


def _decode_paths(paths: list[str], resize: int, crop: int, device: str) -> list[torch.Tensor | BaseException]:
    """``decode_batch`` of files by path: each an image or the exception that stopped it."""
    from torchvision.io import read_file

    out: list[torch.Tensor | BaseException | None] = [None] * len(paths)
    readable, datas = [], []
    for i, path in enumerate(paths):
        try:
            datas.append(read_file(path))
            readable.append(i)
        except Exception as exc:
            out[i] = exc
    images, failures = decode_batch(datas, resize, crop, device)
    decoded = iter(images)
    for k, i in enumerate(readable):
        out[i] = failures[k] if k in failures else next(decoded)
    return out


# ---------------------------------------------------------------------------- the split datasets


class _Paths:
    """File paths packed into one bytes object, so DataLoader workers do not copy a million
    Python strings by touching their reference counts (fork's copy-on-write)."""

    def __init__(self, base: str, relative: list[str]):
        encoded = [r.encode("utf-8", "surrogateescape") for r in relative]
        self.base = base
        self.blob = b"".join(encoded)
        self.offsets = torch.tensor([0] + [len(e) for e in encoded], dtype=torch.int64).cumsum(0)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return os.path.join(self.base, self.blob[start:end].decode("utf-8", "surrogateescape"))


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split as a map-style Dataset: ``(uint8 [3, crop, crop], label)``, or None for a file
    that cannot be read (a warning names it, once per file, across workers and epochs).

    With ``encoded`` set (``batch_decoded``) the items are ``(encoded file, label)`` instead:
    the worker only reads the file; ``_BatchDecoder`` decodes a batch of them."""

    def __init__(self, base: str, relative: list[str], labels: list[int], resize: int, crop: int):
        self.paths = _Paths(base, relative)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.resize, self.crop = resize, crop
        self.warned = torch.zeros(len(relative), dtype=torch.uint8).share_memory_()
        self.encoded = False

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return self.paths[i]

    def decode_rate(self, sample: int = 32) -> float:
        """Images/s one CPU core decodes and resizes (what one DataLoader worker can feed): up to
        ``sample`` files spread over the split, read and decoded in this process on one thread
        (the second pass counts, so the files are in the page cache as an epoch would find them).
        An ``encoded`` split's workers only read: then it is files read per second."""
        picks = range(0, len(self), max(1, len(self) // sample))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            elapsed, done = 0.0, 0
            for _attempt in range(2):  # the first pass warms the caches
                tick, done = time.perf_counter(), 0
                for i in picks:
                    try:
                        self._item(i)
                        done += 1
                    except Exception:
                        pass
                elapsed = time.perf_counter() - tick
        finally:
            torch.set_num_threads(threads)
        return done / elapsed if done and elapsed > 0 else 0.0

    def _item(self, i: int) -> torch.Tensor:
        if self.encoded:
            return _read_encoded(self.paths[i])
        return load_image(self.paths[i], self.resize, self.crop)

    def __getitem__(self, i: int):
        try:
            return self._item(i), int(self.labels[i])
        except Exception as exc:  # never stop an epoch for one file
            if not self.warned[i]:
                self.warned[i] = 1
                _say(f"warning: skipping unreadable {self.paths[i]}: {_reason(exc)}")
            return None


# ---------------------------------------------------------------------------- decoding a streamed batch
#
# An encoded item is the file's bytes followed by its path (UTF-8) and the path's length (4 bytes,
# little-endian), in one uint8 tensor: the core packs a batch of such tensors into one, and the
# path lets the decoder name a file it cannot decode.


def _read_encoded(path: str) -> torch.Tensor:
    name = path.encode("utf-8", "surrogateescape")
    with open(path, "rb") as f:
        buffer = bytearray(f.read())
    buffer += name
    buffer += len(name).to_bytes(4, "little")
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _split_encoded(encoded: torch.Tensor) -> tuple[torch.Tensor, str]:
    """(the file's bytes, its path) of an encoded item."""
    n = int.from_bytes(bytes(encoded[-4:].tolist()), "little")
    end = len(encoded) - 4 - n
    return encoded[:end], bytes(encoded[end:-4].numpy()).decode("utf-8", "surrogateescape")


class _BatchDecoder:
    """``StreamingData.decode_batch`` of the encoded splits: ``decode_batch`` on ``device``,
    a warning naming each file it cannot decode (once per file, in this process)."""

    def __init__(self, resize: int, crop: int, device: str):
        self.resize, self.crop, self.device = resize, crop, device
        self.warned: set[str] = set()

    def __call__(self, encoded: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        datas, paths = zip(*(_split_encoded(e) for e in encoded)) if encoded else ((), ())
        images, failures = decode_batch(list(datas), self.resize, self.crop, self.device)
        for i, exc in failures.items():
            if paths[i] not in self.warned:
                self.warned.add(paths[i])
                _say(f"warning: skipping unreadable {paths[i]}: {_reason(exc)}")
        return images, sorted(failures)


def batch_decoded(data: StreamingData, device: str = "cuda") -> StreamingData:
    """The same streamed imagefolder data, decoded a batch at a time on ``device`` (``decode_batch``)
    in the process that iterates it, its DataLoader workers only reading the files."""
    splits = []
    for split in (data.train_set, data.test_set):
        split = copy.copy(split)  # shares the paths, labels and warnings
        split.encoded = True
        splits.append(split)
    decoder = _BatchDecoder(data.train_set.resize, data.train_set.crop, device)
    return dataclasses.replace(data, train_set=splits[0], test_set=splits[1], decode_batch=decoder, _stats=None)


class _Indexed(torch.utils.data.Dataset):
    """For the in-memory load: (index, image or the exception) without warnings."""

    def __init__(self, split: ImageFolderSplit):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        try:
            return i, load_image(self.split.path(i), self.split.resize, self.split.crop)
        except Exception as exc:
            return i, RuntimeError(_reason(exc))


def _collate_indexed(samples):
    """(indices of decoded images, their stack, [(index, failure)]): one tensor per batch crosses
    the process boundary, not one per image."""
    good = [(i, r) for i, r in samples if not isinstance(r, BaseException)]
    bad = [(i, r) for i, r in samples if isinstance(r, BaseException)]
    images = torch.stack([r for _i, r in good]) if good else None
    return torch.tensor([i for i, _r in good], dtype=torch.int64), images, bad


def _decode_all(split: ImageFolderSplit, name: str, workers: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a split decoded into uint8 [N, 3, S, S]; unreadable files dropped with a warning."""
    n, size = len(split), split.crop
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    ok = torch.zeros(n, dtype=torch.bool)
    failures: list[tuple[str, str]] = []

    def take(i, result):
        if isinstance(result, BaseException):
            failures.append((split.path(i), _reason(result)))
        else:
            images[i] = result
            ok[i] = True

    batch = DECODE_BATCH
    if device == "cuda":
        for start in range(0, n, batch):
            idx = range(start, min(n, start + batch))
            for i, result in zip(idx, _decode_paths([split.path(i) for i in idx], split.resize, split.crop, device)):
                take(i, result)
    else:
        workers = min(workers, math.ceil(n / batch)) if n > SERIAL_BELOW else 0
        loader = torch.utils.data.DataLoader(_Indexed(split), batch_size=batch, num_workers=workers, collate_fn=_collate_indexed)
        for idx, batch_images, bad in loader:
            if batch_images is not None:
                images[idx] = batch_images
                ok[idx] = True
            for i, result in bad:
                take(i, result)
    if failures:
        failures.sort()
        shown = "; ".join(f"{path} ({why})" for path, why in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        _say(f"warning: skipped {len(failures)} unreadable file(s) of {n} in {name}/: {shown}{more}")
        return images[ok], split.labels[ok]
    return images, split.labels


# ---------------------------------------------------------------------------- scanning


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(split_dir: Path, class_names: list[str], ignored: list[str]) -> tuple[list[str], list[int], list[str]]:
    """(paths relative to split_dir, labels, empty class folders); non-image files go to ``ignored``."""
    relative, labels, empty = [], [], []
    for label, name in enumerate(class_names):
        found = []
        for folder, dirs, files in os.walk(split_dir / name, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_folder = os.path.relpath(folder, split_dir)
            for f in sorted(files):
                if f.startswith("."):
                    continue  # .DS_Store, ._x.jpg resource forks, editor droppings
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                    found.append(os.path.join(rel_folder, f))
                else:
                    ignored.append(os.path.join(folder, f))
        if not found:
            empty.append(name)
        relative += found
        labels += [label] * len(found)
    return relative, labels, empty


def _root(request: DataRequest) -> Path:
    if request.root is not None:
        root = request.root
        where = "data.root"
    elif request.data_home() is not None:
        root = request.data_home() / "imagefolder"
        where = "$TESTBED_DATA/imagefolder"
    else:
        raise BadInput(
            f"imagefolder: no data folder given; set data.root to {LAYOUT_HINT} "
            f"(or set TESTBED_DATA to a folder holding imagefolder/train/...)"
        )
    if not root.is_dir():
        raise BadInput(f"imagefolder: no such folder {root} ({where}); set data.root to {LAYOUT_HINT}")
    return root


def _splits(root: Path) -> tuple[Path, Path, list[str]]:
    train = root / "train"
    if not train.is_dir():
        inside = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise BadInput(f"imagefolder: no train/ folder in {root} (it holds: {inside}); set data.root to {LAYOUT_HINT}")
    held = next((root / h for h in HELD_OUT if (root / h).is_dir()), None)
    if held is None:
        raise BadInput(f"imagefolder: no val/ or test/ folder in {root} for the held-out images; set data.root to {LAYOUT_HINT}")
    names = _class_folders(train)
    if not names:
        raise BadInput(f"imagefolder: {train} has no class folders; it must hold one folder of images per class")
    held_names = _class_folders(held)
    if not held_names:
        loose = sum(1 for p in held.iterdir() if p.is_file())
        extra = f" ({loose} files lie directly in it; sort them into {held.name}/<class>/ folders)" if loose else ""
        raise BadInput(f"imagefolder: {held} has no class folders{extra}")
    missing = sorted(set(names) - set(held_names))
    extra = sorted(set(held_names) - set(names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing in {held.name}/: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"in {held.name}/ but not in train/: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        raise BadInput(f"imagefolder: {root}: the class folders of train/ and {held.name}/ differ ({'; '.join(parts)})")
    return train, held, names


# ---------------------------------------------------------------------------- the factory


def imagefolder(
    request: DataRequest,
    *,
    resize: int = 256,
    crop: int = 256,
    in_memory: Literal["auto", "yes", "no"] = "auto",
    workers: int = 4,
    memory_limit_gib: float = 2.0,
    decode_device: Literal["cpu", "cuda", "auto"] = "cpu",
):
    """ImageNet layout (train/ and val/ or test/, one folder per class): shorter side to 256, centre 256 crop.

    ``decode_device``: "cpu" decodes in worker processes (file by file); "cuda" with nvJPEG in
    batches (in memory at load time; streaming, each batch in the training process, the workers
    only reading files); "auto": "cuda" when a GPU is there."""
    if resize < 1 or crop < 1:
        raise ValueError(f"resize and crop must be >= 1 px, got resize={resize}, crop={crop}")
    if crop > resize:
        raise ValueError(f"crop = {crop} is larger than resize = {resize}: the crop must fit in the resized shorter side")
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: decode in the main process), got {workers}")
    if memory_limit_gib < 0:
        raise ValueError(f"memory_limit_gib must be >= 0, got {memory_limit_gib}")
    if decode_device == "cuda" and not torch.cuda.is_available():
        raise ValueError("decode_device = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    if request.image_size is not None:  # store at data.image_size, keeping the resize:crop ratio
        resize, crop = max(request.image_size, round(resize * request.image_size / crop)), request.image_size

    root = _root(request)
    train_dir, held_dir, names = _splits(root)
    if request.classes is not None:
        if request.classes > len(names):
            raise BadInput(f"data.classes = {request.classes}: {train_dir} has only {len(names)} class folders")
        names = names[: request.classes]

    ignored: list[str] = []
    splits = []
    for split_dir, size, key in ((train_dir, request.train_size, "data.train_size"), (held_dir, request.test_size, "data.test_size")):
        relative, labels, empty = _scan(split_dir, names, ignored)
        if split_dir is train_dir and empty:
            _say(f"warning: {len(empty)} class folder(s) of {train_dir} hold no images: {', '.join(empty[:5])}")
        if not relative:
            raise BadInput(f"imagefolder: no {'/'.join(IMAGE_EXTENSIONS)} images in the class folders of {split_dir}")
        idx = balanced_subset(torch.tensor(labels), size, request.seed, key)
        if idx is not None:
            keep = idx.tolist()
            relative, labels = [relative[i] for i in keep], [labels[i] for i in keep]
        splits.append(ImageFolderSplit(str(split_dir), relative, labels, resize, crop))
    if ignored:
        _say(f"ignored {len(ignored)} file(s) that are not {'/'.join(IMAGE_EXTENSIONS)} images (e.g. {ignored[0]})")
    train_set, test_set = splits

    n = len(train_set) + len(test_set)
    in_bytes = n * 3 * crop * crop
    if in_memory == "auto":
        keep_in_memory = in_bytes <= memory_limit_gib * 2**30
    else:
        keep_in_memory = in_memory == "yes"
    device = "cuda" if decode_device == "cuda" or (decode_device == "auto" and torch.cuda.is_available()) else "cpu"

    if not keep_in_memory:
        data = StreamingData(train_set, test_set, list(names), crop, workers)
        if device == "cuda":
            data = batch_decoded(data, device)
            rate = data.decode_rate(16)
            _say(
                f"streaming {len(train_set)} + {len(test_set)} images from {root} ({in_bytes / 2**30:.1f} GiB decoded; "
                f"{workers} workers read the files, the GPU decodes each batch in the training process, {crop} px); "
                f"one core reads about {rate:.0f} files/s"
            )
            return data
        rate = train_set.decode_rate(16)
        _say(
            f"streaming {len(train_set)} + {len(test_set)} images from {root} ({in_bytes / 2**30:.1f} GiB decoded; "
            f"{workers} workers, {crop} px); one core decodes about {rate:.0f} images/s, so {workers} workers feed "
            f"about {rate * max(workers, 1):.0f} images/s (`testbed bench` compares it with the training step)"
        )
        return data

    started = time.monotonic()
    if n > 1000:
        _say(f"decoding {n} images from {root} into memory ({in_bytes / 2**30:.2f} GiB, {crop} px, on {device})...")
    train = _decode_all(train_set, train_dir.name, workers, device)
    test = _decode_all(test_set, held_dir.name, workers, device)
    for (_images, labels), folder in ((train, train_dir), (test, held_dir)):
        if not len(labels):
            raise BadInput(f"imagefolder: none of the images in {folder} could be decoded")
    if n > 1000:
        _say(f"decoded in {time.monotonic() - started:.0f} s")
    return InMemoryData(*train, *test, class_names=list(names))


@hookimpl
def register_datasets(register):
    register(
        "imagefolder",
        imagefolder,
        "ImageNet layout (train/ + val/ or test/, a folder per class, JPEG/PNG): shorter side to 256, centre crop",
        image_size=256,  # what `testbed show` may assume without loading; the class count depends on the folder
    )
