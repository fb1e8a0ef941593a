"""What the imagefolder loader can feed a GPU: its per-core decode rate, the DataLoader workers a
step rate needs, `testbed bench` reporting both beside the step, and the decoders the decode
benchmark compares (PIL, torchvision one by one and batched, nvJPEG when CUDA is there) giving
the same images, and batched decoding behind the streaming loader (workers read, the training
process decodes: nvJPEG on a GPU) giving the per-file loader's images. On a generated
ImageNet-layout folder of a few hundred JPEGs at 256-500 px.
No timing is asserted: the rates are measured in benchmarks/decode_throughput.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_testbed
from PIL import Image

from testbed.data import DataRequest, Pipeline, StreamingData, workers_needed
from testbed_builtins.imagefolder import batch_decoded, imagefolder, load_image
from testbed_builtins.preprocess import Raw

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 4, 60, 15  # 300 JPEGs


def photo_like(h: int, w: int, seed: int) -> Image.Image:
    """Smooth colour fields plus a little noise: compresses like a photograph, unlike pure noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    pixels = (smooth + torch.randn(3, h, w, generator=g) * 8).clamp(0, 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet-layout")
    g = torch.Generator().manual_seed(0)
    seed = 0
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(v) for v in torch.randint(256, 501, (2,), generator=g))
                photo_like(h, w, seed).save(folder / f"img{i}.JPEG", quality=90)
                seed += 1
    return root


def request(root, **kw) -> DataRequest:
    fields = dict(root=root, image_size=None, classes=None, train_size=None, test_size=None, seed=0) | kw
    return DataRequest(**fields)


def test_workers_needed_is_the_rate_over_one_cores_rate_rounded_up():
    assert workers_needed(3000, 1000) == 3
    assert workers_needed(3001, 1000) == 4
    assert workers_needed(10, 1000) == 1  # at least one
    assert workers_needed(10_000, 450.0) == 23  # 22.2 workers' worth


def test_streaming_loader_says_what_it_can_feed(jpeg_folder, capsys):
    data = imagefolder(request(jpeg_folder), in_memory="no", workers=3)
    assert isinstance(data, StreamingData) and len(data.train_set) == CLASSES * TRAIN_PER_CLASS
    err = capsys.readouterr().err
    assert "one core decodes about" in err and "3 workers feed about" in err
    rate = data.decode_rate(8)
    assert rate is not None and 0 < rate < math.inf


def test_a_dataset_that_does_not_measure_itself_says_nothing():
    data = StreamingData(list(range(4)), list(range(2)), ["a", "b"], 32, workers=0)
    assert data.decode_rate() is None


def test_bench_reports_the_pipeline_beside_the_step(jpeg_folder, tmp_path):
    toml = tmp_path / "feed.toml"
    toml.write_text(f"""
name = "feed"
[data]
dataset = {{ name = "imagefolder", in_memory = "no", workers = 2 }}
root = "{jpeg_folder}"
image_size = 32
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
[augment]
train = ["hflip"]
[train]
batch_size = 16
""")
    done = run_testbed("bench", str(toml), "--json", "--steps", "2")
    assert done.returncode == 0, done.stderr
    (r,) = json.loads(done.stdout)["variants"]
    assert r["workers"] == 2 and r["decode_images_per_s_per_core"] > 0
    assert r["workers_needed"] == math.ceil(r["train_images_per_s"] / r["decode_images_per_s_per_core"])
    slower = "data pipeline" if r["data_images_per_s"] < r["train_images_per_s"] else "training step"
    assert r["limited_by"] == slower


def _decoded_files(root: Path, n: int = 12) -> list[str]:
    return sorted(str(p) for p in (root / "train").rglob("*.JPEG"))[:n]


def test_batched_torchvision_decode_gives_the_loaders_images(jpeg_folder):
    """decode_jpeg over a list (what the benchmark times as 'batched') is the loader's decode."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from testbed_builtins.imagefolder import _resize_crop

    paths = _decoded_files(jpeg_folder)
    batched = decode_jpeg([read_file(p) for p in paths], mode=ImageReadMode.RGB)
    for path, image in zip(paths, batched):
        assert torch.equal(_resize_crop(image, 256, 224), load_image(path, 256, 224))


def test_pil_decode_agrees_with_torchvision_within_jpeg_rounding(jpeg_folder):
    """PIL (libjpeg-turbo too, possibly another IDCT) and torchvision decode the same pixels to
    within a couple of grey levels on average: the benchmark compares like with like."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    for path in _decoded_files(jpeg_folder, 6):
        ours = decode_image(read_file(path), mode=ImageReadMode.RGB).float()
        with Image.open(path) as im:
            theirs = torch.from_numpy(__import__("numpy").asarray(im.convert("RGB"))).permute(2, 0, 1).float()
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().mean() < 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device; none here")
def test_gpu_decode_behind_the_same_loader_matches_the_cpu(jpeg_folder):
    cpu = imagefolder(request(jpeg_folder, train_size=40, test_size=8), in_memory="yes", decode_device="cpu")
    gpu = imagefolder(request(jpeg_folder, train_size=40, test_size=8), in_memory="yes", decode_device="cuda")
    assert torch.equal(cpu.train_labels, gpu.train_labels)
    diff = (cpu.train_images.float() - gpu.train_images.float()).abs()
    assert diff.mean() < 2.0  # nvJPEG's IDCT and upsampling differ from libjpeg's by rounding


# ---------------------------------------------------------------------------- batched decoding when streaming


@pytest.fixture
def mixed_folder(jpeg_folder, tmp_path) -> Path:
    """A few of the generated JPEGs per class, plus what batched decoding must hand to the CPU
    fallback (a PNG, a PNG named .JPEG, a greyscale JPEG) or drop (a JPEG's magic number then
    junk, which fails the batched decode call as a whole; junk named .JPEG)."""
    root = tmp_path / "mixed"
    for split, per in (("train", 6), ("val", 2)):
        for c in range(CLASSES):
            src, dst = jpeg_folder / split / f"n{c:08d}", root / split / f"n{c:08d}"
            dst.mkdir(parents=True)
            for i in range(per):
                shutil.copy(src / f"img{i}.JPEG", dst / f"img{i}.JPEG")
    photo_like(300, 280, 1000).save(root / "train/n00000000/real.png")
    photo_like(260, 330, 1001).save(root / "train/n00000000/png-inside.JPEG", format="PNG")
    photo_like(270, 300, 1002).convert("L").save(root / "train/n00000001/grey.JPEG", quality=90)
    (root / "train/n00000002/corrupt.JPEG").write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 4)
    (root / "train/n00000003/junk.JPEG").write_bytes(b"junk")
    (root / "val/n00000001/corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    return root


def _streamed(data: StreamingData, dataset, batch_size: int):
    """Everything the loader gives over ``dataset``: (images, labels, samples dropped)."""
    images, labels, skipped = [], [], 0
    for x, y, dropped in data.batches(dataset, batch_size):
        assert x.dtype == torch.uint8 and x.device.type == "cpu" and len(x) == len(y)
        if len(y):
            images.append(x)
            labels.append(y)
        skipped += dropped
    return torch.cat(images), torch.cat(labels), skipped


def test_batched_decoding_behind_the_streaming_loader_gives_the_per_file_images(mixed_folder, capsys):
    """The byte path (workers read, one decode_jpeg call per batch, here on the CPU) gives the
    per-file path's pixels exactly, falls back for PNGs and greyscale, drops and counts the same
    corrupt files and names them: in the loader's batches, the statistics and the training batches."""
    per_file = imagefolder(request(mixed_folder, image_size=64), in_memory="no", workers=0)
    capsys.readouterr()
    batched = batch_decoded(per_file, device="cpu")
    assert per_file.decode_batch is None and batched.decode_batch is not None
    batched.workers = 1  # the encoded files cross from a worker process
    assert _streamed(batched, batched.train_set, 1)[0].shape == (CLASSES * 6 + 3, 3, 64, 64)  # one per batch too
    for split, kept, dropped in (("train_set", CLASSES * 6 + 3, 2), ("test_set", CLASSES * 2, 1)):
        want = _streamed(per_file, getattr(per_file, split), 5)
        got = _streamed(batched, getattr(batched, split), 5)
        assert want[0].shape == (kept, 3, 64, 64) and want[2] == dropped
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
    err = capsys.readouterr().err
    for name in ("n00000002/corrupt.JPEG", "n00000003/junk.JPEG", "n00000001/corrupt.JPEG"):
        assert err.count(name) == 2, err  # each path names it once (the batched one though it met it twice)
    assert torch.equal(batched.stats().pixel_mean, per_file.stats().pixel_mean)
    assert torch.equal(batched.stats().rgb_eigenvectors, per_file.stats().rgb_eigenvectors)

    def training_batches(data):
        pipeline = Pipeline(data, Raw(data.stats()), [], None, 64, "cpu")
        batches = list(pipeline.train_batches(1, 0, 8, torch.Generator()))
        return torch.cat([x for x, _y in batches]), torch.cat([y for _x, y in batches]), pipeline.skipped

    want, got = training_batches(per_file), training_batches(batched)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
    assert len(want[1]) + want[2] == 24  # three steps of 8, whatever was dropped


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG decoding needs a CUDA device; none here")
def test_streamed_gpu_decoding_matches_the_cpu_and_trains(jpeg_folder, tmp_path):
    cpu = imagefolder(request(jpeg_folder, train_size=40, test_size=8), in_memory="no", workers=0, decode_device="cpu")
    gpu = imagefolder(request(jpeg_folder, train_size=40, test_size=8), in_memory="no", workers=2, decode_device="cuda")
    assert cpu.decode_batch is None and gpu.decode_batch is not None
    for split in ("train_set", "test_set"):
        want = _streamed(cpu, getattr(cpu, split), 16)
        got = _streamed(gpu, getattr(gpu, split), 16)
        assert torch.equal(got[1], want[1]) and got[2] == want[2] == 0
        assert got[0].shape == want[0].shape
        assert (got[0].float() - want[0].float()).abs().mean() < 2.0  # nvJPEG's IDCT and upsampling differ by rounding
    toml = tmp_path / "gpu-decode.toml"
    toml.write_text(f"""
name = "gpu-decode"
[data]
dataset = {{ name = "imagefolder", in_memory = "no", workers = 2, decode_device = "cuda" }}
root = "{jpeg_folder}"
image_size = 32
train_size = 64
test_size = 16
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
[train]
epochs = 1
batch_size = 16
schedule = "constant"
seeds = 1
""")
    done = run_testbed("run", str(toml), "--json", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the GPU decodes each batch" in done.stderr

    def statuses(doc):
        if isinstance(doc, dict):
            return [v for k, v in doc.items() if k == "status"] + [s for v in doc.values() for s in statuses(v)]
        return [s for v in doc for s in statuses(v)] if isinstance(doc, list) else []

    found = statuses(json.loads(done.stdout))
    assert found and all(s == "ok" for s in found), done.stdout[-3000:]
