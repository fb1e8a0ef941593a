"""Data: synthetic shapes, subsets, statistics, preprocessing and the paper's augmentations."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import needs_cifar, run_testbed

from testbed.data import AugmentContext, DataRequest, InMemoryData, balanced_subset, center_crop, compute_stats, load_dataset
from testbed.errors import BadInput
from testbed.experiment import build_experiment
from testbed_builtins.augmentations import TenCrop, crop_batch, hflip, pca_lighting, random_crop, ten_crop
from testbed_builtins.datasets import synthetic
from testbed_builtins.preprocess import Raw, Standardize, SubtractMean


def request(**kw):
    base = dict(root=None, image_size=None, classes=None, train_size=None, test_size=None, seed=0)
    return DataRequest(**{**base, **kw})


def test_synthetic_is_deterministic_and_balanced():
    a = synthetic(request(train_size=200, test_size=50, seed=3))
    b = synthetic(request(train_size=200, test_size=50, seed=3))
    c = synthetic(request(train_size=200, test_size=50, seed=4))
    assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert not torch.equal(a.train_images, c.train_images)
    assert a.train_images.shape == (200, 3, 32, 32) and a.train_images.dtype == torch.uint8
    assert torch.bincount(a.train_labels).tolist() == [20] * 10
    assert not torch.equal(a.train_images[:50], a.test_images)  # train and test are different draws


def test_synthetic_any_size_and_class_count():
    data = synthetic(request(image_size=67, classes=13, train_size=130, test_size=26))
    assert data.train_images.shape == (130, 3, 67, 67) and len(data.class_names) == 13


def test_balanced_subset_takes_equal_shares_per_class():
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, 95, seed=1, key="data.train_size")
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    assert sorted(counts) == [9] * 5 + [10] * 5 and len(set(idx.tolist())) == 95
    assert torch.equal(idx, balanced_subset(labels, 95, seed=1, key="k"))
    assert not torch.equal(idx, balanced_subset(labels, 95, seed=2, key="k"))
    with pytest.raises(BadInput, match="data.train_size"):
        balanced_subset(labels, 5, seed=0, key="data.train_size")


def test_stats_of_a_known_covariance():
    """compute_stats recovers the eigen-decomposition of the RGB covariance it was drawn from."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    eigenvalues = torch.tensor([900.0, 225.0, 36.0], dtype=torch.float64)  # std 30, 15, 6 pixel levels
    cov = q @ torch.diag(eigenvalues) @ q.T
    pixels = torch.randn(2000 * 64, 3, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + 128
    images = pixels.round().clamp(0, 255).to(torch.uint8).view(2000, 8, 8, 3).permute(0, 3, 1, 2)
    stats = compute_stats(images.split(500))
    got = stats.rgb_eigenvalues.double() * 255**2  # stats are on the [0, 1] scale
    assert torch.allclose(got.sort().values, eigenvalues.sort().values, rtol=0.03)
    top = stats.rgb_eigenvectors[:, stats.rgb_eigenvalues.argmax()].double()
    assert abs(float(top @ q[:, 0])) > 0.999  # same direction up to sign
    assert stats.pixel_mean.shape == (3, 8, 8)
    assert torch.allclose(stats.channel_mean.double(), torch.full((3,), 128.0, dtype=torch.float64), atol=1.0)
    assert torch.allclose(stats.channel_std.double() ** 2, cov.diagonal(), rtol=0.05)


def stats_for(images):
    return compute_stats([images])


def context(stats, input_size=32, image_size=32, pixel_scale=None):
    return AugmentContext(input_size, image_size, stats, pixel_scale if pixel_scale is not None else torch.ones(3))


def test_pca_lighting_shift_has_the_specified_distribution():
    """shift = 255 * V (a * l), a ~ N(0, 0.1): its covariance is 255^2 V diag(0.01 l^2) V^T."""
    torch.manual_seed(1)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    stats = stats_for(images)
    aug = pca_lighting(context(stats), std=0.1)
    gen = torch.Generator().manual_seed(0)
    shifts = aug.shifts(200_000, gen, "cpu").double()
    v, lam = stats.rgb_eigenvectors.double(), stats.rgb_eigenvalues.double()
    expected = 255.0**2 * v @ torch.diag(0.01 * lam * lam) @ v.T
    empirical = torch.cov(shifts.T)
    assert torch.allclose(empirical, expected, rtol=0.02, atol=0.01 * expected.abs().max())  # ~5 sampling sd
    assert shifts.mean(0).abs().max() < 0.01 * expected.diagonal().sqrt().max()
    # the same shift is added to every pixel of an image
    x = torch.zeros(5, 3, 4, 4)
    out = aug(x, torch.Generator().manual_seed(3))
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    assert not torch.allclose(out[0], out[1])  # each image draws its own


def test_pca_lighting_in_standardized_units():
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    stats = stats_for(images)
    raw = pca_lighting(context(stats))(torch.zeros(3, 3, 2, 2), torch.Generator().manual_seed(0))
    pre = Standardize(stats)
    scaled = pca_lighting(context(stats, pixel_scale=pre.pixel_scale))(torch.zeros(3, 3, 2, 2), torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled, raw * pre.pixel_scale.view(1, 3, 1, 1))


def test_ten_crop_returns_exactly_the_ten_views():
    stats = stats_for(torch.zeros(2, 3, 10, 10, dtype=torch.uint8))
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    views = ten_crop(context(stats, input_size=6, image_size=10))(x)
    assert views.shape == (10, 2, 3, 6, 6)
    corners = [x[..., :6, :6], x[..., :6, 4:], x[..., 4:, :6], x[..., 4:, 4:], x[..., 2:8, 2:8]]
    expected = corners + [c.flip(-1) for c in corners]
    for got, want in zip(views, expected):
        assert torch.equal(got, want)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 10


def test_ten_crop_with_padding_at_32px():
    stats = stats_for(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    views = TenCrop(context(stats), padding=4)(torch.ones(1, 3, 32, 32))
    assert views.shape == (10, 1, 3, 32, 32)
    assert views[0, 0, 0, 0, 0] == 0 and views[4].min() == 1  # a corner view sees padding, the centre none


def test_center_crop_pads_images_smaller_than_the_input():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6) + 1
    out = center_crop(x, 8)
    assert out.shape == (2, 3, 8, 8)
    assert torch.equal(out[..., 1:6, 1:7], x)  # 3 rows of padding: 1 above, 2 below; 2 columns: 1 each side
    assert out.sum() == x.sum()
    assert torch.equal(center_crop(x, 4), x[..., :4, 1:5])


def test_images_smaller_than_the_input_train_and_evaluate(tmp_path):
    """28 px images into the 32 px net: no crop in training, centre views at test time (each
    epoch) and ten padded crops at the end, all on padded images instead of failing a job."""
    file = tmp_path / "small.toml"
    file.write_text(
        '[data]\ndataset = "synthetic"\nimage_size = 28\ntrain_size = 64\ntest_size = 20\n'
        '[model]\ngeometry = "cifar"\nwidth = 0.125\n'
        '[augment]\ntrain = []\ntest = "center"\n'
        "[train]\nepochs = 2\nbatch_size = 32\nseeds = 1\n"
        '[[variant]]\nname = "ten-crop"\naugment.test = { name = "ten-crop", padding = 4 }\n'
    )
    proc = run_testbed("run", str(file), "--out", str(tmp_path / "run"), "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert '"status": "ok"' in proc.stdout


def test_a_cifar_folder_missing_a_test_class_is_refused_before_training(tmp_path):
    from PIL import Image

    from testbed_builtins.datasets import CIFAR10_CLASSES

    for split, classes in (("train", CIFAR10_CLASSES), ("test", CIFAR10_CLASSES[:-1])):
        for name in classes:
            (tmp_path / "cifar" / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32)).save(tmp_path / "cifar" / split / name / "0.png")
    file = tmp_path / "e.toml"
    file.write_text(f'[data]\ndataset = "cifar10"\nroot = "{tmp_path / "cifar"}"\n')
    proc = run_testbed("run", str(file), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert "test/truck: cannot list the class folder" in proc.stderr and "Traceback" not in proc.stderr


def test_random_crop_cuts_windows_of_the_padded_image():
    stats = stats_for(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    x = torch.arange(16 * 3 * 8 * 8, dtype=torch.float32).view(16, 3, 8, 8) + 1
    out = random_crop(context(stats, input_size=8, image_size=8), padding=2)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for b in range(16):
        matches = [(t, s) for t in range(5) for s in range(5) if torch.equal(padded[b, :, t : t + 8, s : s + 8], out[b])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 3  # images get different offsets


def test_crop_batch_matches_slicing():
    x = torch.randn(3, 2, 9, 9)
    top, left = torch.tensor([0, 2, 4]), torch.tensor([4, 1, 0])
    out = crop_batch(x, top, left, 5)
    for b in range(3):
        assert torch.equal(out[b], x[b, :, top[b] : top[b] + 5, left[b] : left[b] + 5])


def test_hflip_flips_about_half_the_images():
    stats = stats_for(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    x = torch.randn(400, 3, 4, 4)
    out = hflip(context(stats, 4, 4))(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert torch.all(flipped ^ same) and 150 < flipped.sum() < 250


def test_preprocessing_of_a_known_image():
    """The three choices on a 2x2 image whose training-set statistics are worked out by hand."""
    train = torch.tensor([[[[0, 100], [200, 40]]] * 3, [[[20, 120], [220, 60]]] * 3], dtype=torch.uint8)
    train[:, 1] += 10  # green brighter
    stats = compute_stats([train])
    image = train[:1].float()
    # mean: per-pixel mean over the two images, raw scale kept: image 0 is 10 below it everywhere
    torch.testing.assert_close(SubtractMean(stats).apply(image), torch.full_like(image, -10.0))
    # standardize: per-channel mean over all 8 pixels, per-channel population std
    values = train[:, 0].double().flatten()
    mean, std = values.mean(), values.std(unbiased=False)
    want = (image[0, 0].double() - mean) / std
    torch.testing.assert_close(Standardize(stats).apply(image)[0, 0].double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(Standardize(stats).apply(image)[0, 1].double(), want, rtol=1e-5, atol=1e-5)  # same shape
    # none: raw pixels
    torch.testing.assert_close(Raw(stats).apply(image), image)
    assert torch.equal(SubtractMean(stats).pixel_scale, torch.ones(3))
    torch.testing.assert_close(
        Standardize(stats).pixel_scale.double(), 1 / train.double().transpose(0, 1).reshape(3, -1).std(1, unbiased=False), rtol=1e-5, atol=0
    )


def test_pipeline_batches_are_deterministic_per_seed_and_epoch(registry):
    exp = build_experiment(
        {
            "data": {"dataset": "synthetic", "train_size": 64, "test_size": 20},
            "model": {"width": 0.125},
            "augment": {"train": [{"name": "random-crop", "padding": 4}, "hflip", "pca-lighting"]},
            "train": {"batch_size": 16},
        },
        registry,
    )
    variant = exp.baseline
    data = load_dataset(variant.config["data"], registry)

    from testbed.assembly import build_pipeline
    from testbed.data import augmentation_generator
    from testbed.model import build_model

    built = build_model(variant.config["model"], 10, 32, registry, "cpu")
    pipe = build_pipeline(variant, data, built, registry, "cpu")
    assert pipe.steps_per_epoch(16) == 4

    def epoch(seed, n):
        return [(x.clone(), y.clone()) for x, y in pipe.train_batches(n, seed, 16, augmentation_generator("cpu", seed, n))]

    a, b, c = epoch(0, 1), epoch(0, 1), epoch(0, 2)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    seen = torch.cat([y for _, y in a])
    assert len(seen) == 64
    # resuming at step 2 gives the rest of the same epoch (with the generator state of that moment)
    gen = augmentation_generator("cpu", 0, 1)
    it = pipe.train_batches(1, 0, 16, gen)
    next(it), next(it)
    state = gen.get_state()
    gen2 = augmentation_generator("cpu", 0, 1)
    gen2.set_state(state)
    rest = list(pipe.train_batches(1, 0, 16, gen2, start_step=2))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a[2:], rest))
    views, labels = next(pipe.test_batches(8))
    assert views.shape == (10, 8, 3, 32, 32) and labels.shape == (8,)  # ten-crop, the paper's default


def test_in_memory_subset_and_resize():
    data = synthetic(request(train_size=100, test_size=40))
    sub = data.subset(50, 20, seed=0)
    assert len(sub.train_labels) == 50 and torch.bincount(sub.test_labels).tolist() == [2] * 10
    big = sub.resized(48)
    assert big.train_images.shape == (50, 3, 48, 48) and big.train_images.dtype == torch.uint8
    assert isinstance(big, InMemoryData)


@needs_cifar
def test_cifar10_from_the_shared_jpeg_folder(registry):
    exp = build_experiment({"data": {"dataset": "cifar10", "train_size": 1000, "test_size": 500}}, registry)
    data = load_dataset(exp.baseline.config["data"], registry)
    assert data.train_images.shape == (1000, 3, 32, 32) and data.test_images.shape == (500, 3, 32, 32)
    assert torch.bincount(data.train_labels).tolist() == [100] * 10
    assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
    mean = data.stats().channel_mean
    assert 100 < float(mean.mean()) < 140  # natural images, not noise or zeros


def test_cifar10_missing_says_where_it_looked(registry, tmp_path):
    exp = build_experiment({"data": {"dataset": {"name": "cifar10", "download": False}, "root": str(tmp_path)}}, registry)
    with pytest.raises(BadInput) as info:
        load_dataset(exp.baseline.config["data"], registry)
    message = str(info.value)
    assert str(tmp_path) in message and "TESTBED_DATA" in message


def test_mean_subtraction_stats_are_cached_with_the_dataset():
    data = synthetic(request(train_size=100, test_size=20))
    assert data.stats() is data.stats()
    assert math.isclose(float(data.stats().pixel_mean.mean()), float(data.train_images.float().mean()), rel_tol=1e-5)
