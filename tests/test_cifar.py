"""The CIFAR-10 path end to end on a slice of the real data (../shared/datasets in CI)."""

from __future__ import annotations

import json

from conftest import needs_cifar, run_testbed

SLICE = """
name = "cifar-slice"
[data]
dataset = "cifar10"
train_size = 2000
test_size = 1000
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.25
init = "kaiming"
[augment]
train = [{ name = "random-crop", padding = 4 }, "hflip", "pca-lighting"]
test = "center"
[train]
epochs = 3
batch_size = 64
optimizer = { name = "sgd", lr = 0.02, momentum = 0.9, weight_decay = 5e-4 }
schedule = "constant"
seeds = 1
"""


@needs_cifar
def test_a_cifar_slice_learns_and_reports(tmp_path):
    file = tmp_path / "slice.toml"
    file.write_text(SLICE)
    run = run_testbed("run", file, "--out", tmp_path / "run", "--json", "-q", timeout=900)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    top1 = doc["variants"][0]["metrics"]["top1_error"]["mean"]
    assert top1 < 0.8, top1  # chance is 0.9; 3 epochs of 2,000 real images
    assert doc["variants"][0]["components"]["dataset"] == {
        "name": "cifar10",
        "params": {"download": True},
        "plugin": "builtin.datasets",
        "version": doc["variants"][0]["components"]["dataset"]["version"],
    }
    for name in ("results.sqlite", "plots/learning-curves.png", "plots/conv1-baseline.png"):
        assert (tmp_path / "run" / name).is_file(), name
    report = run_testbed("report", tmp_path / "run", "--json")
    assert json.loads(report.stdout) == doc
