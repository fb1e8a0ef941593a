"""The paper beyond the table (testbed/analyses.py, testbed/neighbours.py): ensembles over seeds
(Table 2), fc7 nearest neighbours (Figure 4), tower colourfulness (Figure 3 as a number), LRN's
divisor, and the at-chance flag. Each checked against a computation written out here."""

from __future__ import annotations

import colorsys
import json
import sqlite3

import numpy as np
import pytest
import torch
from conftest import run_testbed

from testbed import analyses
from testbed.model import build_model, paper_layers
from testbed.neighbours import nearest

SLOW = 1800  # seconds: a bound for a busy shared machine (a few seconds each when idle)

TRAINS = """
name = "trains"
[data]
dataset = "synthetic"
train_size = 512
test_size = 100
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
[augment]
train = ["hflip"]
test = "center"
[train]
epochs = 3
batch_size = 32
optimizer = { name = "sgd", lr = 0.01, momentum = 0.9 }
schedule = "constant"
seeds = 2
seed_varies = ["init", "order", "augmentation", "dropout"]  # the same data for both seeds: one test set to ensemble on
"""

# the smallest experiment a new user writes: every other key is the paper's default
DEFAULTS = """
name = "defaults"
[data]
train_size = 256
test_size = 50
[model]
width = 0.25
[train]
epochs = 2
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trains")
    (root / "trains.toml").write_text(TRAINS)
    proc = run_testbed("run", root / "trains.toml", "--out", root / "run", "--json", "-q", timeout=SLOW)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = run_testbed("report", root / "run", timeout=SLOW)
    assert report.returncode == 0, report.stderr[-2000:]
    return root / "run", json.loads(proc.stdout), report.stdout


def test_ensemble_is_the_average_of_the_stored_per_seed_outputs(trained):
    run_dir, doc, table = trained
    entry = doc["variants"][0]
    probs, labels = [], None
    for seed in (0, 1):
        with np.load(run_dir / "checkpoints" / "baseline" / f"seed-{seed}.outputs.npz") as f:
            probs.append(f["probabilities"].astype(np.float64))
            assert labels is None or np.array_equal(labels, f["labels"])
            labels = f["labels"]
        # each file is what the job's own error came from
        single = np.mean(probs[-1].argmax(1) != labels)
        assert single == pytest.approx(entry["metrics"]["top1_error"]["values"][seed], abs=1e-9)
    mean = (probs[0] + probs[1]) / 2
    ranked = np.argsort(-mean, axis=1, kind="stable")
    top1 = np.mean(ranked[:, 0] != labels)
    top5 = np.mean([labels[i] not in ranked[i, :5] for i in range(len(labels))])
    assert entry["ensemble"]["top1_error"] == pytest.approx(top1, abs=1e-9)
    assert entry["ensemble"]["top5_error"] == pytest.approx(top5, abs=1e-9)
    assert entry["ensemble"]["seeds"] == [0, 1] and entry["ensemble"]["images"] == 100
    row = sqlite3.connect(run_dir / "results.sqlite").execute("SELECT top1_error, top5_error FROM ensembles").fetchone()
    assert row == pytest.approx((top1, top5))
    assert "ensemble top-1/5" in table and f"{100 * top1:.1f} / {100 * top5:.1f} (2)" in table


def test_ensemble_aligns_seeds_by_image_over_the_images_they_share():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=(2, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1])
    keys = np.arange(6)
    # seed 1 saw images 2..5 and two it alone has, in another order
    order = np.array([5, 3, 2, 4])
    other = {
        "probabilities": np.concatenate([p[1][order], p[1][:2]]),
        "labels": np.concatenate([labels[order], [3, 3]]),
        "keys": np.concatenate([keys[order], [90, 91]]),
        "views": "center",
    }
    result = analyses.ensemble([{"probabilities": p[0], "labels": labels, "keys": keys, "views": "center"}, other])
    shared = [2, 3, 4, 5]
    expected = np.mean(((p[0][shared] + p[1][shared]) / 2).argmax(1) != labels[shared])
    assert result["images"] == 4 and result["top1_error"] == pytest.approx(expected)


def test_a_run_that_trains_is_not_flagged_and_reports_the_analyses(trained):
    _, doc, table = trained
    entry = doc["variants"][0]
    assert max(entry["metrics"]["train_error"]["values"]) < 0.85  # it learned something (chance: 0.9)
    assert not entry["at_chance"] and not entry["problems"]
    towers = entry["conv1_colourfulness"]["towers"]
    assert len(towers) == 2 and all(0 < t["mean"] < 1 for t in towers)  # grouped: two towers
    assert set(entry["lrn_divisor"]) == {"norm1", "norm2"}
    assert "conv1 colourfulness" in table and "LRN's effective strength" in table and "at chance" not in table


def test_a_default_experiment_on_generated_data_is_flagged_at_chance_with_a_suggestion(tmp_path):
    (tmp_path / "defaults.toml").write_text(DEFAULTS)
    shown = run_testbed("show", tmp_path / "defaults.toml")
    assert shown.returncode == 0 and "known not to train" in shown.stderr
    proc = run_testbed(
        "run",
        tmp_path / "defaults.toml",
        "--out",
        tmp_path / "run",
        "--json",
        "-q",
        "--set",
        "train.stop_at_chance=2",
        "--set",
        "train.epochs=4",
        timeout=SLOW,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "known not to train" in proc.stderr
    entry = json.loads(proc.stdout)["variants"][0]
    assert entry["metrics"]["train_error"]["values"][0] > 0.85
    (problem,) = entry["problems"]
    assert problem["status"] == "at-chance" and problem["message"].startswith("at chance")
    assert 'model.init = "kaiming"' in problem["message"] and 'data.preprocess = "standardize"' in problem["message"]
    assert "act" in problem["message"]  # the saturation statistics' diagnosis names a layer
    assert problem["epoch"] == 2  # train.stop_at_chance ended it after epoch 2 of 4
    report = run_testbed("report", tmp_path / "run")
    assert "at chance 1/1" in report.stdout and "baseline seed 0: at chance: training error" in report.stdout


# ---------------------------------------------------------------------------- Figure 4


def test_nearest_finds_planted_near_duplicates_and_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    bank = torch.randn(5000, 64, generator=gen)
    planted = torch.tensor([3, 1234, 4999, 2500])
    queries = bank[planted] + 1e-3 * torch.randn(4, 64, generator=gen)
    d, i = nearest(queries, bank, k=5, chunk=700)  # chunks that do not divide the bank
    assert i[:, 0].tolist() == planted.tolist()
    brute = torch.cdist(queries.double(), bank.double())
    want_d, want_i = brute.topk(5, largest=False)
    # float32 |q|^2 - 2q.b + |b|^2 loses about sqrt(eps * |q|^2) ~ 2e-3 on a near-zero distance
    assert torch.equal(i, want_i) and torch.allclose(d.double(), want_d, rtol=1e-5, atol=1e-2)


def test_fc7_neighbours_share_the_query_class_and_find_a_planted_copy(trained, registry):
    from testbed.assembly import build_pipeline
    from testbed.checkpoint import load
    from testbed.data import load_dataset
    from testbed.neighbours import fc7_features, neighbour_table
    from testbed.results import Store

    run_dir, _, _ = trained
    variant = Store.open_run(run_dir).experiment().baseline
    data = load_dataset(variant.config["data"], registry)
    built = build_model(variant.config["model"], 10, 32, registry, "cpu")
    built.module.load_state_dict(load(run_dir / "checkpoints" / "baseline" / "seed-0.pt")["model"])
    pipeline = build_pipeline(variant, data, built, registry, torch.device("cpu"))
    table = neighbour_table(built.module, pipeline, data, queries=20, k=5)
    same = (data.train_labels[table["neighbours"]] == data.test_labels[table["queries"]].unsqueeze(1)).float().mean()
    assert same > 0.3  # chance: 0.1
    copy = data.train_images[77:78].clone()
    copy[0, 0, 0, 0] ^= 1  # one pixel off by one level
    bank = fc7_features(built.module, pipeline, data.train_images)
    _, idx = nearest(fc7_features(built.module, pipeline, copy), bank, k=1)
    assert idx.item() == 77
    drawn = run_testbed("report", run_dir, "--plots", "--neighbours", "baseline", timeout=SLOW)
    assert drawn.returncode == 0, drawn.stderr[-1500:]
    assert (run_dir / "plots" / "neighbours-baseline.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------- Figure 3 as a number


def chroma_by_hand(kernel: torch.Tensor) -> float:
    """colorsys: HSV chroma = value * saturation, per pixel of the kernel scaled to [0, 1]."""
    k = kernel.double()
    k = (k - k.min()) / (k.max() - k.min())
    values = []
    for y in range(k.shape[1]):
        for x in range(k.shape[2]):
            _h, s, v = colorsys.rgb_to_hsv(*k[:, y, x].tolist())
            values.append(s * v)
    return sum(values) / len(values)


def test_colourfulness_is_zero_for_grey_kernels_and_the_chroma_for_coloured_ones():
    gen = torch.Generator().manual_seed(2)
    grey = torch.randn(8, 1, 5, 5, generator=gen).expand(8, 3, 5, 5)
    assert analyses.kernel_colourfulness(grey).abs().max() < 1e-6
    red = torch.stack([torch.ones(5, 5), -torch.ones(5, 5), -torch.ones(5, 5)]).unsqueeze(0)
    assert analyses.kernel_colourfulness(red).item() == pytest.approx(1.0)
    mixed = torch.randn(6, 3, 5, 5, generator=gen)
    got = analyses.kernel_colourfulness(mixed)
    assert got.tolist() == pytest.approx([chroma_by_hand(k) for k in mixed], abs=1e-6)


def test_a_grey_tower_and_a_coloured_tower_are_told_apart(registry, tiny_config):
    from testbed.experiment import build_experiment

    variant = build_experiment(tiny_config, registry, "tiny.toml").baseline
    model = build_model(variant.config["model"], 10, 32, registry, "cpu").module
    conv1 = dict(paper_layers(model))["conv1"]
    half = conv1.weight.shape[0] // 2
    with torch.no_grad():
        conv1.weight[:half] = conv1.weight[:half, :1].expand_as(conv1.weight[:half])  # tower A: grey
    a, b = analyses.tower_colourfulness(model)
    assert a < 1e-6 and b > 0.2


# ---------------------------------------------------------------------------- LRN's divisor


def lrn_divisor_by_hand(a: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The paper's (k + alpha/n * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a_j^2) ^ beta, channel by channel."""
    n_channels = a.shape[1]
    out = torch.empty_like(a, dtype=torch.float64)
    for i in range(n_channels):
        lo, hi = max(0, i - size // 2), min(n_channels - 1, i + size // 2)
        out[:, i] = (k + alpha / size * (a[:, lo : hi + 1].double() ** 2).sum(1)) ** beta
    return out


@pytest.mark.parametrize("placement", ["grouped", "single", {"name": "two-device", "devices": ["cpu", "cpu"]}])
def test_divisor_statistics_follow_the_formula_per_tower(registry, tiny_config, placement):
    from testbed.experiment import build_experiment
    from testbed.model import TowerSplit

    tiny_config["model"].update(placement=placement, normalization={"name": "lrn", "k": 1.0, "alpha": 0.5, "beta": 0.75})
    variant = build_experiment(tiny_config, registry, "tiny.toml").baseline
    model = build_model(variant.config["model"], 10, 32, registry, "cpu").module.eval()
    towers_of = {}  # each norm1 layer's input, split into the channels of each tower it holds
    for path, module in model.named_modules():
        if path.rsplit(".", 1)[-1] == "norm1":  # grouped/single: a TowerSplit; two-device: one module per tower
            parts = len(module.towers) if isinstance(module, TowerSplit) else 1
            module.register_forward_pre_hook(
                lambda _m, i, path=path, parts=parts: towers_of.__setitem__(path, i[0].detach().chunk(parts, 1))
            )
    probe = analyses.DivisorProbe(model)
    with torch.no_grad():
        model(3 * torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)))
    stats = probe.result()["norm1"]
    probe.close()
    assert sum(len(parts) for parts in towers_of.values()) == (1 if placement == "single" else 2)
    want = torch.cat([lrn_divisor_by_hand(part, 5, 0.5, 0.75, 1.0).flatten() for parts in towers_of.values() for part in parts])
    assert stats["elements"] == want.numel() and stats["resting"] == pytest.approx(1.0)
    assert stats["mean"] == pytest.approx(float(want.mean()), rel=1e-5)
    assert stats["max"] == pytest.approx(float(want.max()), rel=1e-5)
    assert stats["std"] == pytest.approx(float(want.std()), rel=1e-4)
    assert stats["median"] == pytest.approx(float(want.median()), rel=1e-3)
    assert stats["cv"] > 0.01 and stats["mean_excess"] == pytest.approx(float(want.mean()) - 1, rel=1e-4)


def test_the_divisor_is_what_the_layer_divides_by(registry):
    norm = registry.create("normalization", {"name": "lrn", "alpha": 2.0, "k": 1.5}, 12, key="model.normalization")
    a = torch.randn(4, 12, 6, 6, generator=torch.Generator().manual_seed(4)) * 2
    assert torch.allclose(norm.divisor(a), a / norm(a), rtol=1e-4)
    assert norm.resting_divisor() == pytest.approx(1.5**0.75)


def test_quantiles_of_a_large_layer_come_from_a_sample_within_their_stated_precision():
    d = (0.5 * torch.randn(3_000_000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)).exp()  # skewed, like a divisor
    sample = analyses.quantile_sample(d)
    assert len(sample) == analyses.QUANTILE_SAMPLE
    for p in (0.01, 0.5, 0.99):
        estimate = torch.quantile(sample, p)
        rank = float((d < estimate).double().mean())  # where the estimate falls in the whole layer
        assert abs(rank - p) < 0.0005, (p, rank)
    small = d[:1000]
    assert analyses.quantile_sample(small) is small  # below the limit: exact quantiles
