"""The grid runner end to end: metrics arithmetic, determinism, resume, failure isolation, safe loading."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import scipy.stats
import torch
from click.testing import CliRunner
from conftest import run_testbed, start_testbed
from torch import nn

import testbed
from testbed.cli import main

LEARNING = ("top1_error", "top5_error", "train_error", "train_loss", "epochs_to_target")

TINY = """
name = "tiny"
[data]
dataset = "synthetic"
train_size = {train_size}
test_size = 100
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
[augment]
train = [{{ name = "random-crop", padding = 2 }}, "hflip", "pca-lighting"]
[train]
epochs = {epochs}
batch_size = 32
optimizer = {{ name = "sgd", lr = 0.02 }}
schedule = "constant"
seeds = {seeds}
target_train_error = 0.85
"""


def experiment(tmp_path: Path, variants: str = "", epochs: int = 2, seeds: int = 1, train_size: int = 256) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(epochs=epochs, seeds=seeds, train_size=train_size) + variants)
    return path


def learning_metrics(doc: dict) -> dict:
    return {v["name"]: {m: v["metrics"][m]["values"] for m in LEARNING} for v in doc["variants"]}


def test_mean_std_and_delta_come_from_the_stored_seeds(tmp_path):
    file = experiment(tmp_path, '[[variant]]\nname = "no-lrn"\nmodel.normalization = "none"\npaper = { top1 = 1.4, top5 = 1.2 }\n', seeds=2)
    proc = run_testbed("run", str(file), "--out", str(tmp_path / "run"), "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    db = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    stored = {}
    for variant, seed, metrics in db.execute("SELECT variant, seed, metrics FROM jobs"):
        stored.setdefault(variant, {})[seed] = json.loads(metrics)
    # the per-epoch rows agree with the final metrics: the last epoch's test error is top1_error
    for variant, seed, top1 in db.execute("SELECT variant, seed, test_top1 FROM epochs WHERE epoch = 2"):
        assert stored[variant][seed]["top1_error"] == top1
    by_name = {v["name"]: v for v in doc["variants"]}
    for name, variant in by_name.items():
        for metric in ("top1_error", "top5_error", "train_error", "train_loss"):
            values = [stored[name][s][metric] for s in (0, 1)]
            assert variant["metrics"][metric]["values"] == values
            assert variant["metrics"][metric]["mean"] == pytest.approx(sum(values) / 2)
            assert variant["metrics"][metric]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    base, var = by_name["baseline"]["metrics"]["top1_error"], by_name["no-lrn"]["metrics"]["top1_error"]
    d = by_name["no-lrn"]["delta_vs_baseline"]["top1_error"]
    assert d["delta"] == pytest.approx(var["mean"] - base["mean"])
    # the same data and seeds: a paired test on the two seeds' differences
    differences = [v - b for v, b in zip(var["values"], base["values"])]
    assert d["test"] == "paired-t" and d["se"] == pytest.approx(statistics.stdev(differences) / 2**0.5)
    assert d["p_value"] == pytest.approx(scipy.stats.ttest_rel(var["values"], base["values"]).pvalue)
    assert d["verdict"] in ("better", "worse", "inconclusive") and "paper_check" in d and "seeds_needed" in d
    assert by_name["no-lrn"]["paper"] == {"top1": 1.4, "top5": 1.2}
    # the run directory holds the store, the resolved experiment and both kinds of plot
    run = tmp_path / "run"
    assert (run / "experiment.json").is_file() and (run / "experiment.toml").is_file()
    assert (run / "plots" / "learning-curves.png").stat().st_size > 1000
    assert (run / "plots" / "conv1-baseline.png").stat().st_size > 1000
    # report prints the same document from the store
    again = run_testbed("report", str(run), "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == doc
    table = run_testbed("report", str(run))
    assert "no-lrn" in table.stdout and "+1.4/+1.2" in table.stdout


def test_same_seed_same_metrics_on_cpu(tmp_path):
    file = experiment(tmp_path, '[[variant]]\nname = "tanh"\nmodel.activation = "tanh"\n')
    runs = [run_testbed("run", str(file), "--out", str(tmp_path / f"run{i}"), "--json", "-q") for i in (1, 2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    first, second = (learning_metrics(json.loads(r.stdout)) for r in runs)
    assert first == second


def test_a_model_learns_on_synthetic_data(tmp_path):
    proc = run_testbed("run", str(experiment(tmp_path, epochs=6, train_size=640)), "--out", str(tmp_path / "run"), "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["variants"][0]["metrics"]
    assert metrics["top1_error"]["mean"] < 0.6  # chance is 0.9
    assert metrics["epochs_to_target"]["mean"] is not None


def wait_for(predicate, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def completed_epochs(run: Path) -> int:
    try:
        db = sqlite3.connect(run / "results.sqlite", timeout=1)
        return db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_resume_after_sigkill_gives_the_uninterrupted_metrics(tmp_path):
    file = experiment(tmp_path, epochs=4, train_size=640)
    reference = run_testbed("run", str(file), "--out", str(tmp_path / "reference"), "--json", "-q")
    assert reference.returncode == 0, reference.stderr

    run = tmp_path / "killed"
    proc = start_testbed("run", file, "--out", run, "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (run / "checkpoints" / "baseline" / "seed-0.pt").exists() and completed_epochs(run) >= 1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert completed_epochs(run) < 4, "the run finished before it could be killed; make it longer"
    resumed = run_testbed("resume", str(run), "--json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert learning_metrics(json.loads(resumed.stdout)) == learning_metrics(json.loads(reference.stdout))


def test_ctrl_c_stops_at_a_safe_point_and_resume_finishes_identically(tmp_path):
    file = experiment(tmp_path, epochs=3, train_size=960)
    reference = run_testbed("run", str(file), "--out", str(tmp_path / "reference"), "--json", "-q")
    run = tmp_path / "interrupted"
    proc = start_testbed("run", file, "--out", run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: completed_epochs(run) >= 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert f"testbed resume {run}" in err and "Traceback" not in err
    resumed = run_testbed("resume", str(run), "--json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert learning_metrics(json.loads(resumed.stdout)) == learning_metrics(json.loads(reference.stdout))


def test_a_diverging_variant_is_isolated(tmp_path):
    file = experiment(
        tmp_path, '[[variant]]\nname = "huge-lr"\ntrain.optimizer.lr = 1e6\n[[variant]]\nname = "tanh"\nmodel.activation = "tanh"\n'
    )
    proc = run_testbed("run", str(file), "--out", str(tmp_path / "run"), "--json", "-q")
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    status = {v["name"]: v["status"] for v in doc["variants"]}
    assert status == {"baseline": "ok", "huge-lr": "diverged", "tanh": "ok"}
    problem = next(v for v in doc["variants"] if v["name"] == "huge-lr")["problems"][0]
    assert problem["epoch"] >= 1 and problem["step"] >= 1 and "loss became" in problem["message"]
    table = run_testbed("report", str(tmp_path / "run"))
    assert "diverged" in table.stdout


class ExplodingActivation(nn.Module):
    def forward(self, x):
        raise RuntimeError("this activation always fails")


class BrokenPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        def exploding():
            return ExplodingActivation()

        register("exploding", exploding, "raises in forward")


def test_a_failing_component_is_recorded_with_its_plugin(tmp_path, register_plugin):
    register_plugin(BrokenPlugin(), "broken-plugin")
    file = experiment(tmp_path, '[[variant]]\nname = "boom"\nmodel.activation = "exploding"\n')
    result = CliRunner().invoke(main, ["run", str(file), "--out", str(tmp_path / "run"), "--json", "-q"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    by_name = {v["name"]: v for v in doc["variants"]}
    assert by_name["baseline"]["status"] == "ok"
    assert by_name["boom"]["status"] == "failed"
    problem = by_name["boom"]["problems"][0]
    assert problem["plugin"] == "broken-plugin" and "always fails" in problem["message"]


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_fails_only_its_job(tmp_path):
    file = experiment(tmp_path, '[[variant]]\nname = "other"\nmodel.normalization = "none"\n', epochs=1)
    run = tmp_path / "run"
    proc = run_testbed("run", str(file), "--out", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    # make both jobs look unfinished and plant a malicious pickle where the baseline's checkpoint is
    db = sqlite3.connect(run / "results.sqlite")
    db.execute("UPDATE jobs SET status = 'interrupted'")
    db.commit()
    (run / "checkpoints" / "other" / "seed-0.pt").unlink()  # the other job starts over
    marker = tmp_path / "code-ran"
    ckpt = run / "checkpoints" / "baseline" / "seed-0.pt"
    torch.save({"format": "testbed-checkpoint", "evil": Payload(marker)}, ckpt)
    resumed = run_testbed("resume", str(run), "--json", "-q")
    assert resumed.returncode == 2, resumed.stderr  # bad input, but only after the rest of the grid ran
    assert "Traceback" not in resumed.stderr
    assert not marker.exists()
    variants = {v["name"]: v for v in json.loads(resumed.stdout)["variants"]}
    assert variants["other"]["status"] == "ok"
    problem = variants["baseline"]["problems"][0]
    assert problem["status"] == "refused" and "refused" in problem["message"] and str(ckpt) in problem["message"]


def test_resume_skips_finished_jobs(tmp_path):
    file = experiment(tmp_path, epochs=1)
    run = tmp_path / "run"
    first = run_testbed("run", str(file), "--out", str(run), "--json", "-q")
    again = run_testbed("resume", str(run), "--json", "-q")
    assert again.returncode == 0
    assert learning_metrics(json.loads(again.stdout)) == learning_metrics(json.loads(first.stdout))
    db = sqlite3.connect(run / "results.sqlite")
    assert db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 1  # nothing was trained again
