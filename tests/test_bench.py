"""`testbed bench`: the documented JSON keys with sane values, and FLOPs against the paper's layer
table worked out by hand. No timing is asserted: timings belong in benchmarks/, not in tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from testbed.bench import count_flops
from testbed.cli import main
from testbed.model import build_model

REPO = Path(__file__).resolve().parents[1]

# The paper's 227 px net (two towers: conv2/4/5 grouped), 1000 classes. Per layer:
# (output height = width, output maps, input maps seen by each kernel, kernel size).
PAPER_CONVS = {
    "conv1": (55, 96, 3, 11),
    "conv2": (27, 256, 96 // 2, 5),  # grouped: each kernel sees its tower's 48 maps
    "conv3": (13, 384, 256, 3),  # crosses: all 256 maps
    "conv4": (13, 384, 384 // 2, 3),
    "conv5": (13, 256, 384 // 2, 3),
}
PAPER_FCS = {"fc6": (6 * 6 * 256, 4096), "fc7": (4096, 4096), "fc8": (4096, 1000)}


def hand_flops() -> dict[str, int]:
    flops = {name: 2 * side * side * maps * fan_in * k * k for name, (side, maps, fan_in, k) in PAPER_CONVS.items()}
    flops.update({name: 2 * fan_in * out for name, (fan_in, out) in PAPER_FCS.items()})
    return flops


def test_hand_table_is_the_familiar_alexnet_cost():
    flops = hand_flops()
    assert flops["conv1"] == 210_830_400  # 105.4 M multiply-adds
    assert flops["conv2"] == 447_897_600
    assert sum(flops.values()) == 1_448_813_632  # about 0.72 G multiply-adds per image


def test_forward_and_training_flops_of_the_paper_model_match_the_hand_count(registry):
    cfg = {
        "geometry": "imagenet",
        "width": 1.0,
        "activation": "relu",
        "normalization": "lrn",
        "pooling": "overlapping",
        "dropout": 0.5,
        "init": "pytorch",
        "placement": "grouped",
        "skip": [],
    }
    with torch.device("meta"):  # shapes only: no weights are allocated or computed
        model = build_model(cfg, 1000, 227, registry, device=None).module
    counted = count_flops(model, torch.empty(2, 3, 227, 227, device="meta"))
    want = hand_flops()
    assert {name: round(entry["forward"]) for name, entry in counted["by_layer"].items()} == want
    assert counted["forward"] == sum(want.values())
    # Training: forward + weight gradient + input gradient per layer; conv1's input (the image) needs none.
    assert counted["train"] == 3 * sum(want.values()) - want["conv1"]


@pytest.fixture(scope="module")
def bench_doc():
    result = CliRunner().invoke(main, ["bench", str(REPO / "experiments" / "smoke.toml"), "--json", "--steps", "2", "--only", "no-lrn"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_json_has_the_documented_keys_and_sane_values(bench_doc):
    doc = bench_doc
    assert doc["peak_gflops"] > 0
    assert [v["name"] for v in doc["variants"]] == ["baseline", "no-lrn"]
    for v in doc["variants"]:
        for key in (
            "train_images_per_s",
            "data_images_per_s",
            "gflops_per_image",
            "peak_memory_mb",
            "step_ms",
            "data_ms",
            "train_gflops_per_image",
            "achieved_gflops",
            "loop_images_per_s",
        ):
            assert isinstance(v[key], (int, float)) and v[key] > 0, (v["name"], key, v[key])
        assert 0 < v["utilisation"] <= 1, v
        assert 0 < v["data_fraction_of_step"] and 0 < v["augment_fraction_of_step"] and 0 <= v["data_fraction_in_loop"] < 1
        assert v["train_gflops_per_image"] > 2 * v["gflops_per_image"]
        assert set(v["flops_by_layer"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    base, no_lrn = doc["variants"]
    assert base["gflops_per_image"] == no_lrn["gflops_per_image"]  # LRN does no multiply-adds
    assert base["step_time_vs_baseline"] == 1


def test_bench_table_renders(bench_doc):
    from rich.console import Console

    from testbed.bench import render_bench

    console = Console(record=True, width=240)
    render_bench(bench_doc, console)
    text = console.export_text()
    assert "no-lrn" in text and "utilisation" in text and "GFLOP/s" in text
