"""Hardening, round two: each test here failed before its fix (issue "Hardening, round two").

Signals are sent in each phase of a run with TESTBED_PAUSE_AT (testbed/faults.py), which makes
testbed wait in that phase, so that the signal certainly arrives there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, _env, run_testbed, start_testbed

import testbed
from testbed.cli import main

TINY = """
name = "tiny"
[data]
dataset = "synthetic"
train_size = {train_size}
test_size = {test_size}
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
[augment]
train = [{{ name = "random-crop", padding = 2 }}, "hflip"]
test = "{test}"
[train]
epochs = {epochs}
batch_size = 32
optimizer = {{ name = "sgd", lr = 0.02 }}
schedule = "constant"
seeds = 1
"""
LEARNING = ("top1_error", "top5_error", "train_error", "train_loss")


def tiny(tmp_path: Path, epochs=2, train_size=256, test_size=100, test="center", extra="") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.format(epochs=epochs, train_size=train_size, test_size=test_size, test=test) + extra)
    return path


def learned(doc: dict) -> dict:
    return {v["name"]: {m: v["metrics"][m]["values"] for m in LEARNING} for v in doc["variants"]}


def wait_for_line(stream, needle: str, timeout: float = 240) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = stream.readline()
        if not line:
            return False
        if needle in line:
            return True
    return False


def paused(*args, at: str) -> subprocess.Popen:
    proc = start_testbed(*map(str, args), env={"TESTBED_PAUSE_AT": at}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_line(proc.stderr, f"testbed: paused at {at}"), f"never reached phase {at}"
    return proc


def stopped(proc: subprocess.Popen, sig=signal.SIGINT, within: float = 60) -> tuple[str, str]:
    sent = time.time()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=within + 60)
    assert time.time() - sent < within, "the signal was not obeyed promptly"
    return out, err


# ---------------------------------------------------------------------------- 3. Ctrl-C and SIGTERM in every phase


@pytest.mark.parametrize("phase, sig", [("start", signal.SIGINT), ("load", signal.SIGINT), ("load", signal.SIGTERM)])
def test_a_signal_before_training_stops_at_once_with_exit_130(tmp_path, phase, sig):
    proc = paused("run", tiny(tmp_path), "--out", tmp_path / "run", at=phase)
    _, err = stopped(proc, sig, within=20)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and "Aborted" not in err


def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path):
    proc = start_testbed(
        "run", str(tiny(tmp_path)), "--out", str(tmp_path / "run"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.3)  # torch and the CLI are still being imported
    _, err = stopped(proc, within=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Aborted" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_evaluation_checkpoints_and_resume_finishes_identically(tmp_path, sig):
    file = tiny(tmp_path, test_size=400, test="ten-crop")
    reference = run_testbed("run", str(file), "--out", str(tmp_path / "reference"), "--json", "-q")
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    proc = paused("run", file, "--out", run, at="evaluate")
    _, err = stopped(proc, sig, within=60)
    assert proc.returncode == 130, err
    assert f"testbed resume {run}" in err and "Traceback" not in err
    state = torch.load(run / "checkpoints" / "baseline" / "seed-0.pt", weights_only=True)
    assert state["epoch"] == 0 and state["step"] == 8  # every step of epoch 1 done, its evaluation not
    resumed = run_testbed("resume", str(run), "--json", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert learned(json.loads(resumed.stdout)) == learned(json.loads(reference.stdout))


@pytest.mark.parametrize("phase", ["summary", "plots"])
def test_a_stop_after_training_exits_130_and_says_how_to_resume(tmp_path, phase):
    run = tmp_path / "run"
    proc = paused("run", tiny(tmp_path, epochs=1), "--out", run, at=phase)
    _, err = stopped(proc, within=20)
    assert proc.returncode == 130, err
    assert f"testbed resume {run}" in err and "Traceback" not in err
    resumed = run_testbed("resume", str(run), "--json", "-q")
    assert resumed.returncode == 0 and json.loads(resumed.stdout)["status"] == "ok"


def test_a_stop_mid_epoch_really_stops_mid_epoch(tmp_path):
    file = tiny(tmp_path, epochs=2, train_size=1920)  # 60 steps an epoch
    run = tmp_path / "run"
    proc = start_testbed("run", file, "--out", run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_line(proc.stderr, "epoch 1:")  # epoch 2 has just begun
    _, err = stopped(proc, within=60)
    assert proc.returncode == 130, err
    state = torch.load(run / "checkpoints" / "baseline" / "seed-0.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["step"] < 60, (state["epoch"], state["step"])
    resumed = run_testbed("resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr
    db = sqlite3.connect(run / "results.sqlite")
    extra = json.loads(db.execute("SELECT extra FROM epochs WHERE epoch = 2").fetchone()[0])
    assert extra["resumed_mid_epoch"] is True


# ---------------------------------------------------------------------------- 1. DDP resume: each rank its own RNG


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_a_resumed_data_parallel_run_equals_an_uninterrupted_one(tmp_path):
    file = (
        tiny(tmp_path, epochs=3, train_size=512, extra="")
        .read_text()
        .replace('init = "kaiming"', 'init = "kaiming"\nplacement = "data-parallel"')
    )
    (tmp_path / "ddp.toml").write_text(file)
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else "torchrun"
    env = {**_env(None), "OMP_NUM_THREADS": "1"}

    def launch(*args, **popen):
        return subprocess.Popen(
            [torchrun, "--standalone", "--nproc_per_node=2", "-m", "testbed", *map(str, args)],
            env=env,
            cwd=REPO,
            start_new_session=True,
            **popen,
        )

    reference = launch("run", tmp_path / "ddp.toml", "--out", tmp_path / "reference", "--json", "-q", stdout=subprocess.PIPE, text=True)
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0
    run = tmp_path / "run"
    proc = launch("run", tmp_path / "ddp.toml", "--out", run, "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and _epochs_done(run) < 1:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole launch: torchrun and both ranks
    proc.wait(timeout=60)
    assert _epochs_done(run) < 3
    resumed = launch("resume", run, "--json", "-q", stdout=subprocess.PIPE, text=True)
    again, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0
    assert learned(json.loads(again)) == learned(json.loads(out))


def _epochs_done(run: Path) -> int:
    try:
        return sqlite3.connect(run / "results.sqlite", timeout=1).execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.Error:
        return 0


# ---------------------------------------------------------------------------- 4. --json: one document on stdout, always


def test_bad_input_with_json_prints_one_error_document(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text('[model]\nactivation = "rleu"\n')
    proc = run_testbed("run", str(file), "--json")
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc == {"error": doc["error"], "file": str(file), "key": "model.activation"}
    assert "unknown activation (did you mean 'relu'?)" in doc["error"]
    assert proc.stderr.strip() == f"error: {doc['error']}"


class ChattyData:
    """A dataset plugin that prints on stdout while it loads, as torchvision's download does."""

    @testbed.hookimpl
    def register_datasets(self, register):
        from testbed_builtins.datasets import synthetic

        def chatty(request):
            print("Downloading https://example.org/data.tar.gz ... done")
            return synthetic(request)

        register("chatty", chatty, "prints while loading", image_size=32, classes=10)


def test_json_stdout_carries_only_the_document_whatever_prints(tmp_path, register_plugin):
    register_plugin(ChattyData(), "chatty")
    file = tiny(tmp_path, epochs=1).read_text().replace('dataset = "synthetic"', 'dataset = "chatty"')
    (tmp_path / "chatty.toml").write_text(file)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "chatty.toml"), "--out", str(tmp_path / "run"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "ok"
    assert "Downloading https://example.org" in result.stderr


# ---------------------------------------------------------------------------- 5. one writer per run directory


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    first = paused("run", tiny(tmp_path), "--out", run, at="evaluate")
    try:
        second = run_testbed("resume", str(run))
        assert second.returncode == 2
        line = second.stderr.strip()
        assert "in use by another testbed process" in line and f"pid {first.pid}" in line and "\n" not in line
        forced = run_testbed("run", str(tiny(tmp_path)), "--out", str(run), "--force")
        assert forced.returncode == 2 and f"pid {first.pid}" in forced.stderr
        assert (run / "results.sqlite").exists()  # --force deleted nothing
    finally:
        first.kill()
        first.wait()
    resumed = run_testbed("resume", str(run), "-q")  # the kernel released the dead process's lock
    assert resumed.returncode == 0, resumed.stderr


# ---------------------------------------------------------------------------- 6. show refuses what run refuses


@pytest.mark.parametrize(
    "extra, needle",
    [
        ('[[variant]]\nname = "big-crop"\naugment.train = [{ name = "random-crop", size = 100 }]\n', "a 100 px crop does not fit"),
        ('[[variant]]\nname = "big-batch"\ntrain.batch_size = 5000\n', "train.batch_size = 5000: larger than the 256 training images"),
    ],
)
def test_show_refuses_what_run_refuses(tmp_path, extra, needle):
    file = tiny(tmp_path, extra=extra)
    shown = run_testbed("show", str(file))
    ran = run_testbed("run", str(file), "--out", str(tmp_path / "run"))
    assert shown.returncode == ran.returncode == 2
    assert needle in shown.stderr and shown.stderr.strip() == ran.stderr.strip()


def test_machine_dependent_problems_are_bad_input_before_training(tmp_path):
    devices = tiny(tmp_path, extra='[[variant]]\nname = "gpus"\nmodel.placement = { name = "two-device", devices = ["cpu", "cuda:1"] }\n')
    proc = run_testbed("run", str(devices), "--out", str(tmp_path / "a"), "--device", "cpu")
    assert proc.returncode == 2 and "cuda:1 does not exist here" in proc.stderr
    ddp = tmp_path / "ddp.toml"
    ddp.write_text(tiny(tmp_path).read_text().replace('init = "kaiming"', 'init = "kaiming"\nplacement = "data-parallel"'))
    proc = run_testbed("run", str(ddp), "--out", str(tmp_path / "b"), env={"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"})
    assert proc.returncode == 2 and "train.batch_size = 32: must divide evenly over the 3 processes" in proc.stderr


def test_one_gpu_does_not_silently_hold_both_towers(monkeypatch):
    from testbed_builtins.placements import two_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="one CUDA device, so both towers would share cuda"):
        two_device().check_devices(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    two_device(devices=["cuda:0", "cuda:0"]).check_devices(torch.device("cuda"))  # asked for: fine


# ---------------------------------------------------------------------------- 10. smaller ones


class PoisonAfter:
    """An optimizer plugin whose 13th update makes the weights NaN: the 14th step's loss is the
    first that is not finite."""

    @testbed.hookimpl
    def register_optimizers(self, register):
        def poisoned(params):
            params = list(params)
            sgd = torch.optim.SGD(params, lr=0.01)
            original = sgd.step
            calls = [0]

            def step(closure=None):
                calls[0] += 1
                original()
                if calls[0] == 13:
                    with torch.no_grad():
                        params[0].fill_(float("nan"))

            sgd.step = step
            return sgd

        register("poisoned", poisoned, "NaN after 13 steps")


def test_divergence_is_reported_at_the_step_it_happened(tmp_path, register_plugin):
    register_plugin(PoisonAfter(), "poison")
    file = tiny(tmp_path, extra='[[variant]]\nname = "nan"\ntrain.optimizer = "poisoned"\n')
    result = CliRunner().invoke(main, ["run", str(file), "--out", str(tmp_path / "run"), "--json", "-q"])
    problem = {v["name"]: v for v in json.loads(result.stdout)["variants"]}["nan"]["problems"][0]
    assert (problem["status"], problem["epoch"], problem["step"]) == ("diverged", 2, 6)  # 8 steps an epoch: step 14 = epoch 2, step 6


def test_checkpoints_save_the_rng_of_the_jobs_devices_only(monkeypatch):
    from testbed import checkpoint

    def every_gpu():
        raise AssertionError("asked every GPU for its RNG state (a CUDA context on each)")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    state = checkpoint.rng_state([torch.device("cpu")])
    assert "cuda" not in state


def test_temp_files_left_by_a_crash_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    assert run_testbed("run", str(tiny(tmp_path, epochs=1)), "--out", str(run), "-q").returncode == 0
    stale = run / "checkpoints" / "baseline" / ".seed-0.pt.tmp-99999"
    stale.write_bytes(b"half a checkpoint")
    assert run_testbed("resume", str(run), "-q").returncode == 0
    assert not stale.exists()


def test_two_device_does_not_copy_fc7_to_the_tower_that_never_uses_it(registry, monkeypatch):
    from testbed.experiment import build_experiment
    from testbed.model import build_model

    config = build_experiment(
        {"model": {"geometry": "cifar", "width": 0.125, "init": "kaiming", "placement": {"name": "two-device", "devices": ["cpu", "cpu"]}}},
        registry,
    ).baseline.config
    model = build_model(config["model"], 10, 32, registry, "cpu").module.eval()
    tower_b = model.devices[1]
    copies = []
    original = torch.Tensor.to

    def spy(tensor, *args, **kwargs):
        if args and args[0] is tower_b:
            copies.append(tuple(tensor.shape))
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    width = model.tower_a.fc6.out_features * 2  # fc6 and fc7 are equally wide
    assert model.tower_a.fc7.out_features * 2 == width
    # fc6's gathered output goes to tower B, whose fc7 reads it; fc7's would go nowhere
    assert copies.count((2, width)) == 1, copies
