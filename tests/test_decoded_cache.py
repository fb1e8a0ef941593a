"""The decoded-CIFAR cache: a large folder's JPEGs are decoded once per machine, not once per
process, and a cache file serves only the exact folder it was made from."""

from __future__ import annotations

import os

import pytest
import torch

from testbed_builtins import datasets


@pytest.fixture
def cifar_folder(tmp_path, monkeypatch):
    """A CIFAR-10-layout folder of 3 PNGs per class and split, a private user cache, and a cache
    threshold low enough for it."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for c, name in enumerate(datasets.CIFAR10_CLASSES):
            (tmp_path / "cifar" / split / name).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "cifar" / split / name / f"{c}-{i}.png")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "DISK_CACHE_FROM", 10)
    monkeypatch.setattr(datasets, "_CIFAR_CACHE", {})
    return tmp_path / "cifar"


def _load(root):
    datasets._CIFAR_CACHE.clear()  # the in-process cache would hide the disk
    return datasets._load_cifar(root)


def _same(a, b):
    return all(torch.equal(getattr(a, n), getattr(b, n)) for n in ("train_images", "train_labels", "test_images", "test_labels"))


def test_a_second_process_reads_the_cache_instead_of_decoding(cifar_folder, monkeypatch):
    first = _load(cifar_folder)
    files = list((cifar_folder.parent / "cache" / "testbed" / "decoded").glob("cifar10-*.pt"))
    assert len(files) == 1 and first.train_images.shape == (30, 3, 32, 32)

    def no_decoding(*args):
        raise AssertionError("decoded although a cache file for this folder exists")

    monkeypatch.setattr(datasets, "decode_folder_split", no_decoding)
    again = _load(cifar_folder)
    assert _same(first, again) and again.class_names == datasets.CIFAR10_CLASSES


def test_a_changed_file_is_decoded_again(cifar_folder):
    from PIL import Image

    first = _load(cifar_folder)
    changed = cifar_folder / "train" / "bird" / "2-1.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # another modification time for sure, whatever the clock's resolution
    again = _load(cifar_folder)
    index = sorted(p.name for p in (cifar_folder / "train" / "bird").iterdir()).index("2-1.png") + 2 * 3
    assert torch.equal(again.train_images[index], torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))
    assert not torch.equal(first.train_images[index], again.train_images[index])
    assert len(list((cifar_folder.parent / "cache" / "testbed" / "decoded").glob("cifar10-*.pt"))) == 1  # the new replaced the old


def test_a_damaged_cache_file_is_replaced(cifar_folder):
    first = _load(cifar_folder)
    (path,) = (cifar_folder.parent / "cache" / "testbed" / "decoded").glob("cifar10-*.pt")
    path.write_bytes(path.read_bytes()[:100])
    again = _load(cifar_folder)
    assert _same(first, again)
    assert torch.load(path, weights_only=True)["train_images"].shape == (30, 3, 32, 32)


def test_small_folders_and_unwritable_caches_only_decode(cifar_folder, monkeypatch):
    monkeypatch.setattr(datasets, "DISK_CACHE_FROM", 1000)
    small = _load(cifar_folder)
    assert not (cifar_folder.parent / "cache" / "testbed" / "decoded").exists()
    monkeypatch.setattr(datasets, "DISK_CACHE_FROM", 10)
    (cifar_folder.parent / "cache").write_text("a file where the cache folder would be")
    assert _same(small, _load(cifar_folder))


def test_a_full_disk_leaves_no_partial_file(cifar_folder, monkeypatch):
    """torch.save reports a full disk as RuntimeError: the load still succeeds, and the half-written
    file is removed."""

    def full(obj, target):
        with open(target, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing file: No space left on device")

    monkeypatch.setattr(torch, "save", full)
    data = _load(cifar_folder)
    assert data.train_images.shape == (30, 3, 32, 32)
    assert list((cifar_folder.parent / "cache" / "testbed" / "decoded").iterdir()) == []
