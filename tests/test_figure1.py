"""Figure 1: speed-up factors per setting, lower bounds where a run never reached the target."""

from __future__ import annotations

import json

from conftest import run_testbed
from rich.console import Console

from testbed.report import render_speedups
from testbed.results import _factor, _time_to_target


def runs(*epochs, ran=5, seconds_per_epoch=10.0):
    """Final metrics of finished seeds: epochs to target (None: never) of runs of `ran` epochs."""
    return [
        {
            "epochs_to_target": e,
            "time_to_target_s": None if e is None else e * seconds_per_epoch,
            "epochs": ran,
            "train_time_s": ran * seconds_per_epoch,
        }
        for e in epochs
    ]


def test_factor_when_both_reach_the_target():
    relu, tanh = _time_to_target("relu", runs(2, 2)), _time_to_target("tanh", runs(6, 8))
    f = _factor(tanh, relu, "epochs")
    assert f["value"] == 3.5 and f["bound"] is None and f["text"] == "3.5x"
    assert _factor(tanh, relu, "seconds")["value"] == 3.5


def test_a_run_that_never_reached_the_target_gives_a_lower_bound():
    relu = _time_to_target("relu", runs(2, 2, ran=10))
    tanh = _time_to_target("tanh", runs(None, 8, ran=10))  # seed 0 never got there in 10 epochs
    assert tanh["reached"] == 1 and tanh["epochs_bound"] == [11, 8]
    f = _factor(tanh, relu, "epochs")
    assert f["bound"] == "lower" and f["text"] == ">= 4.7x"  # (11 + 8) / 2 / 2 = 4.75, rounded down: a bound
    seconds = _factor(tanh, relu, "seconds")
    assert seconds["bound"] == "lower" and seconds["value"] == (100 + 80) / 2 / 20


def test_a_reference_that_never_got_there_gives_an_upper_bound_and_neither_gives_none():
    slow_relu = _time_to_target("relu", runs(None, ran=4))
    tanh = _time_to_target("tanh", runs(2, ran=4))
    f = _factor(tanh, slow_relu, "epochs")
    assert f["bound"] == "upper" and f["text"] == "<= 0.4x"  # 2 / 5
    upper = _factor(_time_to_target("tanh", runs(3, ran=6)), _time_to_target("relu", runs(None, ran=6)), "epochs")
    assert upper["text"] == "<= 0.5x"  # 3 / 7 = 0.43, rounded up: a bound
    never = _factor(_time_to_target("tanh", runs(None, ran=4)), slow_relu, "epochs")
    assert never["value"] is None and "neither" in never["text"]


def test_the_table_shows_the_bound_not_a_number_it_did_not_measure():
    relu = _time_to_target("baseline", runs(3, ran=6))
    tanh = _time_to_target("tanh", runs(None, ran=6))
    compare = {
        "key": "model.activation",
        "reference": "relu",
        "paper_factor": 6,
        "rows": [
            {
                "setting": "mean, paper init",
                "reference": "relu",
                "compared": "tanh",
                "measured": {"relu": relu, "tanh": tanh},
                "factor_epochs": _factor(tanh, relu, "epochs"),
                "factor_seconds": _factor(tanh, relu, "seconds"),
            }
        ],
    }
    console = Console(record=True, width=200)
    render_speedups(compare, console)
    text = console.export_text()
    assert ">= 2.3x" in text  # 7 epochs at least, over 3
    assert ">= 7.0" in text and "6x" in text


EXPERIMENT = """
name = "fig1"
setting = "standardized"
[compare]
key = "model.activation"
reference = "relu"
paper_factor = 6
[data]
dataset = "synthetic"
train_size = 320
test_size = 100
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
normalization = "none"
dropout = 0.0
[augment]
train = []
test = "center"
[train]
epochs = 2
batch_size = 32
optimizer = { name = "sgd", lr = 0.02 }
schedule = "constant"
target_train_error = 0.85
[[variant]]
name = "tanh"
setting = "standardized"
model.activation = "tanh"
[[variant]]
name = "relu-raw"
setting = "raw pixels"
data.preprocess = "none"
train.optimizer.lr = 0.0005
[[variant]]
name = "tanh-raw"
setting = "raw pixels"
data.preprocess = "none"
model.activation = "tanh"
train.optimizer.lr = 0.0005
"""


def test_a_figure1_grid_reports_factors_per_setting_and_draws_the_figure(tmp_path):
    file = tmp_path / "fig1.toml"
    file.write_text(EXPERIMENT)
    proc = run_testbed("run", file, "--out", tmp_path / "run", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {row["setting"]: row for row in doc["compare"]["rows"]}
    assert set(rows) == {"standardized", "raw pixels"}
    assert rows["raw pixels"]["measured"]["relu"]["variant"] == "relu-raw"
    assert rows["standardized"]["measured"]["tanh"]["variant"] == "tanh"
    assert (tmp_path / "run" / "plots" / "figure1.png").stat().st_size > 1000
    # the saturation statistics are stored per epoch and shown by report
    report = run_testbed("report", tmp_path / "run")
    assert "saturated units per layer" in report.stdout and "speed-up" in report.stdout
    import sqlite3

    extra = (
        sqlite3.connect(tmp_path / "run" / "results.sqlite").execute("SELECT extra FROM epochs WHERE variant = 'tanh-raw'").fetchone()[0]
    )
    saturation = json.loads(extra)["saturation"]
    assert set(saturation) == {f"act{i}" for i in range(1, 8)} and all(0 <= v <= 1 for v in saturation.values())
