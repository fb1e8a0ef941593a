"""Data: what a dataset plugin returns, the statistics preprocessing needs, and the batch pipeline.

Small datasets are ``InMemoryData``: uint8 tensors, moved once to the training device and
augmented a whole batch at a time there. Large ones are ``StreamingData``: torch Datasets of
uint8 images read by DataLoader workers (or of encoded files the workers read and the main
process decodes a batch at a time, e.g. on the GPU). Either way the pipeline is::

    uint8 batch -> float -> preprocess (mean / standardize / none) -> train augmentations -> model

Preprocessing comes first so that crops and flips move the mean-subtracted image, as
subtracting a mean image cropped at the same offset would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from testbed.errors import BadInput


@dataclass(frozen=True)
class DataRequest:
    """What the experiment asks of a dataset plugin."""

    root: Path | None  # data.root if given, else None (the plugin decides, e.g. $TESTBED_DATA/<name>)
    image_size: int | None  # None: the dataset's own size
    classes: int | None  # None: the dataset's own class count
    train_size: int | None
    test_size: int | None
    seed: int  # for generated data and for subsets, independent of the training seed

    def data_home(self) -> Path | None:
        env = os.environ.get("TESTBED_DATA")
        return Path(env).expanduser() if env else None


@dataclass
class DataStats:
    """Training-set statistics, in raw pixel units (0-255)."""

    pixel_mean: torch.Tensor  # [3, H, W]: the paper's per-pixel mean image
    channel_mean: torch.Tensor  # [3]
    channel_std: torch.Tensor  # [3]
    rgb_eigenvalues: torch.Tensor  # [3], of the RGB covariance of pixels scaled to [0, 1]
    rgb_eigenvectors: torch.Tensor  # [3, 3], columns are eigenvectors


def compute_stats(batches) -> DataStats:
    """One pass over uint8 batches [B, 3, H, W]: per-pixel mean, channel moments, RGB covariance."""
    count = 0
    pixel_sum = None
    moment1 = torch.zeros(3, dtype=torch.float64)
    moment2 = torch.zeros(3, 3, dtype=torch.float64)
    pixels = 0
    for batch in batches:
        x = batch.to(torch.float64)
        pixel_sum = x.sum(0) if pixel_sum is None else pixel_sum + x.sum(0)
        count += x.shape[0]
        flat = x.permute(1, 0, 2, 3).reshape(3, -1)
        moment1 += flat.sum(1)
        moment2 += flat @ flat.T
        pixels += flat.shape[1]
    if not count:
        raise BadInput("the training set is empty")
    mean_rgb = moment1 / pixels
    cov = moment2 / pixels - torch.outer(mean_rgb, mean_rgb)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / 255.0**2)
    return DataStats(
        pixel_mean=(pixel_sum / count).float(),
        channel_mean=mean_rgb.float(),
        channel_std=cov.diagonal().clamp_min(1e-12).sqrt().float(),
        rgb_eigenvalues=eigenvalues.clamp_min(0).float(),
        rgb_eigenvectors=eigenvectors.float(),
    )


def balanced_subset(labels: torch.Tensor, size: int | None, seed: int, key: str) -> torch.Tensor | None:
    """Indices of a seeded, class-balanced subset of ``size`` items (None: keep everything)."""
    if size is None or size >= len(labels):
        return None
    classes = torch.unique(labels)
    if size < len(classes):
        raise BadInput(f"{key} = {size}: smaller than the {len(classes)} classes; a balanced subset needs at least one per class")
    generator = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=generator)] for idx in per_class]
    base, extra = divmod(size, len(classes))
    chosen = [idx[: base + (1 if i < extra else 0)] for i, idx in enumerate(per_class)]
    return torch.sort(torch.cat(chosen)).values


@dataclass
class InMemoryData:
    """A dataset held as uint8 tensors [N, 3, H, W] with int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: list[str]
    _stats: DataStats | None = field(default=None, repr=False)

    @property
    def image_size(self) -> int:
        return self.train_images.shape[-1]

    def subset(self, train_size, test_size, seed) -> InMemoryData:
        out = self
        for split, size in (("train", train_size), ("test", test_size)):
            idx = balanced_subset(getattr(out, f"{split}_labels"), size, seed, f"data.{split}_size")
            if idx is not None:
                fields = dict(vars(out))
                fields[f"{split}_images"] = fields[f"{split}_images"][idx]
                fields[f"{split}_labels"] = fields[f"{split}_labels"][idx]
                fields["_stats"] = None
                out = InMemoryData(**fields)
        return out

    def resized(self, size: int) -> InMemoryData:
        if size == self.image_size:
            return self

        def resize(x):
            chunks = [
                F.interpolate(c.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False) for c in x.split(1024)
            ]
            return torch.cat(chunks).round_().clamp_(0, 255).to(torch.uint8)

        return InMemoryData(resize(self.train_images), self.train_labels, resize(self.test_images), self.test_labels, self.class_names)

    def stats(self) -> DataStats:
        if self._stats is None:
            self._stats = compute_stats(self.train_images.split(2048))
        return self._stats

    def __len__(self):
        return len(self.train_labels)


@dataclass
class StreamingData:
    """A dataset too large for memory: map-style torch Datasets returning (uint8 [3, S, S], label).

    A sample that cannot be read is returned as None and dropped by the loader (and counted).

    ``decode_batch`` (optional) takes decoding out of the DataLoader workers: the datasets' items
    are then (encoded, label), ``encoded`` a uint8 1-D tensor (say a file's bytes) that the
    workers only read, and the main process calls ``decode_batch(encoded: list[Tensor]) ->
    (images, failed)`` on each batch's encoded samples, in order. ``images``: uint8 [B, 3, S, S]
    on the CPU, one per sample it decoded, in order; ``failed``: the positions (in ``encoded``)
    of those it could not, which are dropped and counted like unreadable samples. It may decode
    on a GPU (a batched nvJPEG decode). Iterate through ``batches()``, which honours both forms.
    """

    train_set: object
    test_set: object
    class_names: list[str]
    image_size: int
    workers: int = 4
    stats_sample: int = 2000  # images used to estimate the training-set statistics
    decode_batch: Callable[[list[torch.Tensor]], tuple[torch.Tensor, list[int]]] | None = None
    _stats: DataStats | None = field(default=None, repr=False)

    def stats(self) -> DataStats:
        if self._stats is None:
            n = len(self.train_set)
            step = max(1, n // self.stats_sample)
            batches = self.batches(torch.utils.data.Subset(self.train_set, range(0, n, step)), 256)
            self._stats = compute_stats(images for images, _labels, _skipped in batches)
        return self._stats

    def batches(self, dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """(uint8 images [B, 3, S, S] on the CPU, int64 labels [B], samples dropped as unreadable)
        per batch of ``dataset`` (``train_set``, ``test_set`` or a Subset of one), in order, read
        by ``workers`` DataLoader workers: the one way testbed iterates streaming data. A batch
        may come out smaller than ``batch_size``, or empty, when samples were dropped."""
        if self.decode_batch is None:
            yield from _loader(dataset, batch_size, False, self.workers, None)
            return
        for packed, lengths, labels, skipped in _loader(dataset, batch_size, False, self.workers, None, collate_fn=_collate_encoded):
            if not len(labels):
                yield torch.empty(0, 3, 1, 1, dtype=torch.uint8), labels, skipped
                continue
            images, failed = self.decode_batch(list(packed.split(lengths.tolist())))
            failed = sorted(set(int(i) for i in failed))
            if failed and not 0 <= failed[0] <= failed[-1] < len(labels):
                raise ValueError(f"decode_batch named failed positions {failed} outside 0..{len(labels) - 1}")
            if failed:
                keep = torch.ones(len(labels), dtype=torch.bool)
                keep[failed] = False
                labels, skipped = labels[keep], skipped + len(failed)
            if len(images) != len(labels):
                raise ValueError(
                    f"decode_batch returned {len(images)} images for {len(labels) + len(failed)} samples of which {len(failed)} failed"
                )
            yield (images if len(labels) else torch.empty(0, 3, 1, 1, dtype=torch.uint8)), labels, skipped

    def __len__(self):
        return len(self.train_set)

    def decode_rate(self, sample: int = 32) -> float | None:
        """Images/s one CPU core turns from files into items (uint8 images; with
        ``decode_batch``, encoded files: one DataLoader worker's share), if the training set
        measures it: an optional ``decode_rate(sample)`` method of the dataset plugin's
        train_set. None when it does not say."""
        measure = getattr(self.train_set, "decode_rate", None)
        return float(measure(sample)) if callable(measure) else None


def workers_needed(images_per_s: float, per_core: float) -> int:
    """DataLoader workers (one core each) that decode ``images_per_s`` at ``per_core`` images/s each."""
    return max(1, math.ceil(images_per_s / per_core))


def _collate_dropping_unreadable(samples):
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([s[0] for s in kept]), torch.tensor([s[1] for s in kept]), skipped


def _collate_encoded(samples):
    """For ``decode_batch`` datasets: (the readable samples' encoded tensors end to end in one
    uint8 tensor, their lengths, labels, skipped). One tensor per batch crosses from a worker,
    not one per sample (which costs several times as much)."""
    kept = [s for s in samples if s is not None]
    for encoded, _label in kept:
        if encoded.dtype != torch.uint8 or encoded.dim() != 1:
            raise TypeError(f"a dataset with decode_batch must give uint8 1-D tensors, got {encoded.dtype} {tuple(encoded.shape)}")
    packed = torch.cat([e for e, _label in kept]) if kept else torch.empty(0, dtype=torch.uint8)
    lengths = torch.tensor([len(e) for e, _label in kept], dtype=torch.int64)
    return packed, lengths, torch.tensor([label for _e, label in kept], dtype=torch.long), len(samples) - len(kept)


def _loader(dataset, batch_size, shuffle, workers, generator, drop_last=False, collate_fn=_collate_dropping_unreadable):
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        collate_fn=collate_fn,
        # its own generator: otherwise each iterator draws a seed from the global RNG, which would
        # shift the dropout stream of a run resumed mid-epoch
        generator=generator if generator is not None else torch.Generator(),
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


class Preprocess:
    """Turns float raw-pixel batches into model inputs. ``pixel_scale`` [3]: what one raw pixel
    unit of each channel becomes (augmentations that add colour in pixel units need it)."""

    pixel_scale: torch.Tensor

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device) -> Preprocess:
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self


@dataclass
class AugmentContext:
    input_size: int  # what the model takes (227 or 32)
    image_size: int  # what the dataset stores (256 or 32)
    stats: DataStats
    pixel_scale: torch.Tensor  # from the preprocess step, [3]


class Augmentation:
    """A train-time augmentation: ``__call__(batch [B, 3, H, W] float, generator) -> batch``."""

    role = "train"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError


class TestViews:
    """Test-time views: ``__call__(batch) -> [V, B, 3, input, input]``; softmax averaged over V."""

    role = "test"
    __test__ = False  # not a pytest test class

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre size x size patch; images smaller than that are zero-padded around (after
    preprocessing zero is the mean colour), as a random crop with padding would see them."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        dh, dw = max(0, size - h), max(0, size - w)
        x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


class Pipeline:
    """Batches of model inputs for one job: the data, its preprocessing and augmentations, on a device."""

    def __init__(
        self,
        data,
        preprocess: Preprocess,
        train_augs: list,
        test_views: TestViews,
        input_size: int,
        device,
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.data = data
        self.memory_format = memory_format  # of the model inputs
        self.device = torch.device(device)
        self.preprocess = preprocess.to(self.device)
        self.train_augs = train_augs
        self.test_views = test_views
        self.input_size = input_size
        self.skipped = 0  # unreadable samples dropped so far (streaming data)
        if isinstance(data, InMemoryData):
            self._train = (data.train_images.to(self.device), data.train_labels.to(self.device))
            self._test = (data.test_images.to(self.device), data.test_labels.to(self.device))

    @property
    def train_size(self) -> int:
        return len(self.data.train_labels) if isinstance(self.data, InMemoryData) else len(self.data.train_set)

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, self.train_size // batch_size)  # incomplete last batch dropped

    def _train_input(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.preprocess.apply(images.to(self.device, non_blocking=True).float())
        for aug in self.train_augs:
            x = aug(x, generator)
        if x.shape[-1] != self.input_size:  # no crop in the pipeline: take the centre
            x = center_crop(x, self.input_size)
        return x.contiguous(memory_format=self.memory_format)

    def train_batches(
        self, epoch: int, seed: int, batch_size: int, generator: torch.Generator, start_step: int = 0, rank: int = 0, world: int = 1
    ):
        """(inputs, labels) for one epoch; the order depends only on (seed, epoch).

        With ``world`` > 1 each rank takes its slice of every global batch."""
        order_gen = torch.Generator().manual_seed(_mix(seed, epoch))
        steps = self.steps_per_epoch(batch_size)
        local = batch_size // world
        if isinstance(self.data, InMemoryData):
            images, labels = self._train
            order = torch.randperm(len(labels), generator=order_gen).to(self.device)
            for step in range(start_step, steps):
                idx = order[step * batch_size + rank * local : step * batch_size + (rank + 1) * local]
                yield self._train_input(images[idx], generator), labels[idx]
        else:
            order = torch.randperm(len(self.data.train_set), generator=order_gen)[: steps * batch_size]
            mine = order.view(steps, batch_size)[start_step:, rank * local : (rank + 1) * local].flatten().tolist()
            subset = torch.utils.data.Subset(self.data.train_set, mine)
            for images, labels, skipped in self.data.batches(subset, local):
                self.skipped += skipped
                if len(labels):
                    yield self._train_input(images, generator), labels.to(self.device, non_blocking=True)

    def test_batches(self, batch_size: int, rank: int = 0, world: int = 1, views: bool = True):
        """(views [V, B, 3, S, S], labels) over this rank's share of the held-out set.

        ``views=False`` gives the centre patch only (V = 1): the cheap per-epoch check; the
        configured test views (ten-crop costs ten forward passes) are for the final numbers."""
        make_views = self.test_views if views else (lambda x: center_crop(x, self.input_size).unsqueeze(0))
        if isinstance(self.data, InMemoryData):
            images, labels = self._test
            for start in range(rank * batch_size, len(labels), batch_size * world):
                yield make_views(self._preprocessed(images[start : start + batch_size])), labels[start : start + batch_size]
        else:
            shard = torch.utils.data.Subset(self.data.test_set, range(rank, len(self.data.test_set), world))
            for images, labels, skipped in self.data.batches(shard, batch_size):
                self.skipped += skipped
                if len(labels):
                    yield make_views(self._preprocessed(images)), labels.to(self.device, non_blocking=True)

    def _preprocessed(self, images: torch.Tensor) -> torch.Tensor:
        return self.preprocess.apply(images.to(self.device, non_blocking=True).float())


def _mix(seed: int, epoch: int) -> int:
    """A generator seed for (run seed, epoch) that differs for every pair."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def augmentation_generator(device, seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The augmentations' random stream for one epoch; each DDP rank draws its own."""
    gen = torch.Generator(device=device)
    gen.manual_seed((_mix(seed, epoch) ^ 0x5EED) + rank * 0x9E3779B1)
    return gen


# Datasets already loaded by this process, by their [data] table (preprocess aside). Safe as
# module state because a dataset is a function of its [data] table alone (the dataset plugin
# contract: "the same table must give the same data every time"), so validation, every job of
# a serial run and every job a Dask worker process runs share one copy. clear_datasets() empties
# it (tests that rewrite a data folder between runs in one process).
_LOADED: dict[str, object] = {}


def clear_datasets() -> None:
    _LOADED.clear()


def _dataset_key(data_cfg: dict) -> str:
    import json

    return json.dumps({k: v for k, v in data_cfg.items() if k != "preprocess"}, sort_keys=True)


def loaded_dataset(data_cfg: dict):
    """The dataset of a [data] table if this process has loaded it, else None."""
    return _LOADED.get(_dataset_key(data_cfg))


def load_dataset(data_cfg: dict, registry, seed: int | None = None) -> InMemoryData | StreamingData:
    """The dataset a [data] table describes, subset and resized; loaded once per process.
    ``seed``: the data seed of a job whose seed varies the subset (default: ``data.seed``)."""
    if seed is not None:
        data_cfg = {**data_cfg, "seed": seed}
    key = _dataset_key(data_cfg)
    if key in _LOADED:
        return _LOADED[key]
    root = data_cfg["root"]
    request = DataRequest(
        root=Path(root).expanduser() if root else None,
        image_size=data_cfg["image_size"],
        classes=data_cfg["classes"],
        train_size=data_cfg["train_size"],
        test_size=data_cfg["test_size"],
        seed=data_cfg["seed"],
    )
    data = registry.create("dataset", data_cfg["dataset"], request, key="data.dataset")
    if isinstance(data, InMemoryData):
        if request.classes is not None and request.classes < len(data.class_names):
            keep_train = data.train_labels < request.classes
            keep_test = data.test_labels < request.classes
            data = InMemoryData(
                data.train_images[keep_train],
                data.train_labels[keep_train],
                data.test_images[keep_test],
                data.test_labels[keep_test],
                data.class_names[: request.classes],
            )
        elif request.classes is not None and request.classes > len(data.class_names):
            raise BadInput(f"data.classes = {request.classes}: the dataset has only {len(data.class_names)} classes")
        data = data.subset(request.train_size, request.test_size, request.seed)
        if request.image_size is not None:
            data = data.resized(request.image_size)
    elif not isinstance(data, StreamingData):
        raise TypeError(f"dataset plugin returned {type(data).__name__}, not InMemoryData or StreamingData")
    _LOADED[key] = data
    return data
