"""The imagefolder dataset plugin: layout, the paper's resize/crop, colour conversion, bad files,
subsets, streaming, and a run through the CLI on a small fake folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from testbed.data import DataRequest, InMemoryData, StreamingData, load_dataset
from testbed.errors import BadInput, ComponentError
from testbed_builtins.imagefolder import imagefolder, load_image

# torchvision 0.29 deprecates torchvision.io decoding in favour of TorchCodec (one warning per call).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CLASSES = ["ant", "bee", "cat"]
TRAIN_PER_CLASS = 4  # readable images per class folder in train/
VAL_PER_CLASS = 2
SIZES = [(300, 400), (64, 48), (50, 80), (257, 256)]  # (height, width)
GREY, CMYK_RGB = 77, (255, 0, 0)


def _noise_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def gradient_image(h=300, w=400) -> Image.Image:
    """Red rises linearly left to right, green top to bottom: the crop's position shows in its values."""
    x = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    y = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    rgb = torch.stack([x * 255 / (w - 1), y * 255 / (h - 1), torch.full((h, w), 128.0)], -1)
    return Image.fromarray(rgb.round().to(torch.uint8).numpy(), "RGB")


def make_folder(root: Path, held_out: str = "val") -> Path:
    """train/<3 classes>/ with 4 readable images each (mixed sizes, a greyscale PNG, a CMYK JPEG),
    plus a corrupt .jpg and a README.txt; val/ with 2 per class."""
    seed = 0
    for split, count in (("train", TRAIN_PER_CLASS), (held_out, VAL_PER_CLASS)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = SIZES[(i + c) % len(SIZES)]
                _noise_image(h, w, seed).save(folder / f"img{i}.{'png' if i % 2 else 'jpg'}")
                seed += 1
    # The special files replace readable ones, so the per-class counts stay as above.
    (root / "train/ant/img3.png").unlink()
    gradient_image().save(root / "train/ant/img3.png")
    (root / "train/bee/img1.png").unlink()
    Image.new("L", (40, 30), GREY).save(root / "train/bee/img1.png")
    (root / "train/cat/img0.jpg").unlink()
    Image.new("CMYK", (60, 45), (0, 255, 255, 0)).save(root / "train/cat/img0.jpg", quality=95)
    (root / "train/ant/broken.jpg").write_bytes(os.urandom(500))
    (root / "train/ant/README.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("imagefolder"))


def request(root, **kw) -> DataRequest:
    fields = dict(root=root, image_size=None, classes=None, train_size=None, test_size=None, seed=0)
    fields.update(kw)
    return DataRequest(**fields)


# ---------------------------------------------------------------------------- registration


def test_registered_with_its_parameters(registry):
    component = registry.get("dataset", "imagefolder")
    assert component.plugin == "builtin.imagefolder"
    params = {p.name: p for p in component.params}
    assert params["resize"].default == 256 and params["crop"].default == 256
    assert params["in_memory"].choices == ("auto", "yes", "no")
    assert params["workers"].default == 4
    assert component.contract == {"image_size": 256}  # no class count: it depends on the folder


# ---------------------------------------------------------------------------- in memory


def test_shapes_dtype_labels_and_classes(folder, capsys):
    data = imagefolder(request(folder), workers=0)
    assert isinstance(data, InMemoryData)
    assert data.class_names == CLASSES
    assert data.train_images.dtype == torch.uint8
    assert data.train_images.shape == (len(CLASSES) * TRAIN_PER_CLASS, 3, 256, 256)
    assert data.test_images.shape == (len(CLASSES) * VAL_PER_CLASS, 3, 256, 256)
    assert data.train_labels.tolist() == [c for c in range(3) for _ in range(TRAIN_PER_CLASS)]
    assert data.test_labels.tolist() == [c for c in range(3) for _ in range(VAL_PER_CLASS)]
    assert data.image_size == 256


def test_corrupt_file_skipped_and_named(folder, capsys):
    data = imagefolder(request(folder, image_size=16), workers=0)
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file" in err
    assert "broken.jpg" in err
    assert len(data.train_labels) == len(CLASSES) * TRAIN_PER_CLASS  # the broken one is not among them


def test_non_image_files_ignored_with_a_count(folder, capsys):
    imagefolder(request(folder, image_size=16), workers=0)
    err = capsys.readouterr().err
    assert "ignored 1 file" in err and "README.txt" in err


def test_greyscale_and_cmyk_become_rgb(folder):
    grey = load_image(str(folder / "train/bee/img1.png"), 256, 256)
    assert grey.shape == (3, 256, 256) and grey.dtype == torch.uint8
    assert (grey == GREY).all()
    cmyk = load_image(str(folder / "train/cat/img0.jpg"), 256, 256)
    assert cmyk.shape == (3, 256, 256)
    mean = cmyk.float().mean((1, 2))
    assert (mean - torch.tensor(CMYK_RGB, dtype=torch.float)).abs().max() < 8, mean


def test_rgba_and_16_bit_png(tmp_path):
    Image.new("RGBA", (20, 10), (10, 200, 30, 40)).save(tmp_path / "a.png")
    rgba = load_image(str(tmp_path / "a.png"), 8, 8)
    assert rgba.shape == (3, 8, 8) and rgba[:, 0, 0].tolist() == [10, 200, 30]
    Image.fromarray(torch.full((12, 12), 65535, dtype=torch.int32).numpy(), "I").convert("I;16").save(tmp_path / "b.png")
    deep = load_image(str(tmp_path / "b.png"), 8, 8)
    assert deep.dtype == torch.uint8 and deep.shape == (3, 8, 8)


def test_shorter_side_to_256_then_centre_crop():
    """A 300x400 (h x w) gradient: the width is resized to 400*256/300 = 341 and the central 256
    columns (offset 42) are kept, so red spans about source columns 49..348; green spans it all."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.png"
        gradient_image(300, 400).save(path)
        image = load_image(str(path), 256, 256).float()
        gradient_image(400, 300).save(path)  # portrait: the crop is vertical
        portrait = load_image(str(path), 256, 256).float()
    assert image.shape == (3, 256, 256)
    scale = 300 / 256
    left, right = (42 + 0.5) * scale - 0.5, (42 + 255 + 0.5) * scale - 0.5  # source columns of the crop's edges
    assert abs(image[0, :, 0].mean() - left * 255 / 399) < 3
    assert abs(image[0, :, 255].mean() - right * 255 / 399) < 3
    assert image[1, 0, :].mean() < 3 and image[1, 255, :].mean() > 252  # full height kept
    assert (image[2] - 128).abs().max() <= 1
    assert abs(portrait[1, 0, :].mean() - left * 255 / 399) < 3  # the same, transposed
    assert portrait[0, :, 0].mean() < 3 and portrait[0, :, 255].mean() > 252


def test_dataset_image_matches_load_image(folder):
    data = imagefolder(request(folder), workers=0)
    expected = load_image(str(folder / "train/ant/img3.png"), 256, 256)
    assert any(torch.equal(expected, image) for image in data.train_images[data.train_labels == 0])


def test_image_size_overrides_resize_and_crop(folder):
    data = imagefolder(request(folder, image_size=40), workers=0)
    assert data.train_images.shape[1:] == (3, 40, 40) and data.test_images.shape[1:] == (3, 40, 40)
    expected = load_image(str(folder / "train/ant/img3.png"), 40, 40)
    assert any(torch.equal(expected, image) for image in data.train_images)
    # resize:crop ratio kept: 292/256 at 128 px is 146/128
    scaled = imagefolder(request(folder, image_size=128), resize=292, crop=256, workers=0)
    expected = load_image(str(folder / "train/ant/img3.png"), 146, 128)
    assert any(torch.equal(expected, image) for image in scaled.train_images)


def test_resize_crop_params(folder):
    data = imagefolder(request(folder), resize=36, crop=32, workers=0)
    assert data.train_images.shape[1:] == (3, 32, 32)


def test_classes_keeps_the_first_folders(folder):
    data = imagefolder(request(folder, image_size=16, classes=2), workers=0)
    assert data.class_names == CLASSES[:2]
    assert set(data.train_labels.tolist()) == {0, 1} and set(data.test_labels.tolist()) == {0, 1}
    with pytest.raises(BadInput, match="only 3 class folders"):
        imagefolder(request(folder, classes=5), workers=0)


def test_balanced_seeded_subsets(folder):
    data = imagefolder(request(folder, image_size=16, train_size=6, test_size=3), workers=0)
    assert torch.bincount(data.test_labels).tolist() == [1, 1, 1]
    # The subset is drawn from the file list before decoding; the broken file (class 0) may be drawn.
    counts = torch.bincount(data.train_labels, minlength=3).tolist()
    assert counts[1:] == [2, 2] and counts[0] in (1, 2)
    again = imagefolder(request(folder, image_size=16, train_size=6, test_size=3), workers=0)
    assert torch.equal(data.train_images, again.train_images)
    with pytest.raises(BadInput, match="data.train_size"):
        imagefolder(request(folder, image_size=16, train_size=2), workers=0)


def test_workers_decode_the_same_images(folder, monkeypatch, capsys):
    """In-memory loading by worker processes gives the serial result, corrupt file skipped."""
    from testbed_builtins import imagefolder as module

    serial = imagefolder(request(folder, image_size=16), workers=0)
    monkeypatch.setattr(module, "SERIAL_BELOW", 0)
    monkeypatch.setattr(module, "DECODE_BATCH", 4)
    capsys.readouterr()
    parallel = imagefolder(request(folder, image_size=16), workers=2)
    assert "broken.jpg" in capsys.readouterr().err
    assert torch.equal(serial.train_images, parallel.train_images)
    assert torch.equal(serial.train_labels, parallel.train_labels)
    assert torch.equal(serial.test_images, parallel.test_images)


# ---------------------------------------------------------------------------- streaming


def test_streaming_yields_the_in_memory_images(folder, capsys):
    memory = imagefolder(request(folder, image_size=24), workers=0)
    stream = imagefolder(request(folder, image_size=24), in_memory="no", workers=0)
    assert isinstance(stream, StreamingData)
    assert stream.class_names == CLASSES and stream.image_size == 24 and stream.workers == 0
    capsys.readouterr()
    samples = [stream.train_set[i] for i in range(len(stream.train_set))]
    assert capsys.readouterr().err.count("broken.jpg") == 1
    assert sum(s is None for s in samples) == 1  # the broken file
    kept = [s for s in samples if s is not None]
    assert torch.equal(torch.stack([s[0] for s in kept]), memory.train_images)
    assert [s[1] for s in kept] == memory.train_labels.tolist()
    test = [stream.test_set[i] for i in range(len(stream.test_set))]
    assert torch.equal(torch.stack([s[0] for s in test]), memory.test_images)
    for _ in range(2):  # later epochs: no second warning for the same file
        [stream.train_set[i] for i in range(len(stream.train_set))]
    assert "broken.jpg" not in capsys.readouterr().err


def test_streaming_through_loader_workers(folder):
    """The core's loader with worker processes drops the unreadable file and never stops."""
    stream = imagefolder(request(folder, image_size=16), in_memory="no", workers=2)
    stats = stream.stats()
    assert stats.pixel_mean.shape == (3, 16, 16)


def test_streaming_pipeline_epoch_skips_and_counts(folder, registry):
    """A streamed epoch through the core's Pipeline (worker processes) with the broken file in it."""
    from testbed.data import AugmentContext, Pipeline

    stream = imagefolder(request(folder, image_size=16), in_memory="no", workers=1)
    stats = stream.stats()
    preprocess = registry.create("preprocess", "standardize", stats)
    views = registry.create("augmentation", "center", AugmentContext(16, 16, stats, preprocess.pixel_scale))
    pipeline = Pipeline(stream, preprocess, [], views, 16, "cpu")
    seen = [labels for _x, labels in pipeline.train_batches(0, 0, 1, torch.Generator())]  # batch 1: every file
    assert len(seen) == len(stream.train_set) - 1 and pipeline.skipped == 1
    test = [labels for _v, labels in pipeline.test_batches(4)]
    assert sum(len(t) for t in test) == len(CLASSES) * VAL_PER_CLASS


def test_auto_streams_above_the_memory_limit(folder):
    assert isinstance(imagefolder(request(folder, image_size=16), memory_limit_gib=0.0, workers=0), StreamingData)
    assert isinstance(imagefolder(request(folder, image_size=16), workers=0), InMemoryData)


def test_load_dataset_through_the_core(folder, registry):
    cfg = {
        "dataset": {"name": "imagefolder", "workers": 0},
        "root": str(folder),
        "image_size": 20,
        "classes": None,
        "train_size": None,
        "test_size": None,
        "seed": 0,
        "preprocess": {"name": "standardize"},
    }
    data = load_dataset(cfg, registry)
    assert data.image_size == 20 and len(data.class_names) == 3


# ---------------------------------------------------------------------------- bad input


def test_missing_root_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no such folder .*nowhere.*data.root"):
        imagefolder(request(tmp_path / "nowhere"))


def test_default_root_under_testbed_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TESTBED_DATA", str(tmp_path))
    with pytest.raises(BadInput, match="imagefolder"):
        imagefolder(request(None))
    make_folder(tmp_path / "imagefolder", held_out="test")  # test/ serves when there is no val/
    data = imagefolder(request(None, image_size=8), workers=0)
    assert data.class_names == CLASSES and len(data.test_labels) == 6
    monkeypatch.delenv("TESTBED_DATA")
    with pytest.raises(BadInput, match="set data.root"):
        imagefolder(request(None))


def test_layout_errors(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "train/a/x.png")
    with pytest.raises(BadInput, match="no val/ or test/"):
        imagefolder(request(tmp_path))
    (tmp_path / "val").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val/loose.png")
    with pytest.raises(BadInput, match="no class folders.*1 files lie directly"):
        imagefolder(request(tmp_path))
    (tmp_path / "val" / "b").mkdir()
    with pytest.raises(BadInput, match="missing in val/: a.*in val/ but not in train/: b"):
        imagefolder(request(tmp_path))
    with pytest.raises(BadInput, match="no train/ folder"):
        imagefolder(request(tmp_path / "val"))


def test_all_unreadable_is_bad_input(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "a" / "x.jpg").write_bytes(b"junk")
    with pytest.raises(BadInput, match="none of the images"):
        imagefolder(request(tmp_path), workers=0)


def test_impossible_parameters_are_value_errors(folder, registry):
    with pytest.raises(ValueError, match="crop"):
        imagefolder(request(folder), resize=100, crop=200)
    with pytest.raises(ValueError, match="workers"):
        imagefolder(request(folder), workers=-1)
    with pytest.raises(ComponentError, match="imagefolder"):
        registry.create("dataset", {"name": "imagefolder", "crop": 300}, request(folder), key="data.dataset")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            imagefolder(request(folder), decode_device="cuda")


# ---------------------------------------------------------------------------- end to end


def test_cli_run_with_a_corrupt_file(folder, tmp_path):
    experiment = tmp_path / "tiny.toml"
    experiment.write_text(
        f"""
name = "imagefolder-tiny"
[data]
dataset = {{ name = "imagefolder", workers = 0 }}
root = {json.dumps(str(folder))}
image_size = 40
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
[train]
epochs = 1
batch_size = 4
eval_batch_size = 8
schedule = "constant"
seeds = 1
"""
    )
    env = dict(os.environ, TESTBED_DISABLE_PLUGIN_AUTOLOAD="1")
    done = subprocess.run(
        [sys.executable, "-m", "testbed", "run", str(experiment), "--json", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broken.jpg" in done.stderr
    doc = json.loads(done.stdout)
    statuses = _find(doc, "status")
    assert statuses and all(s == "ok" for s in statuses), doc


def _find(doc, key):
    """Every value under ``key`` anywhere in a JSON document."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                found.append(v)
            found += _find(v, key)
    elif isinstance(doc, list):
        for v in doc:
            found += _find(v, key)
    return found
