"""The GPU path exercised on the CPU: bf16 autocast and torch.compile train, stay close to fp32,
and a bf16 job resumes exactly; fp16 with its GradScaler wherever autocast offers fp16.

The jobs run in this process (testbed.train.Job), on generated data, with a model small enough
for a few seconds per job. Tolerances, and why:

- bf16 keeps 8 significant bits (unit roundoff 2^-9 = 0.2%): one forward pass of the net in
  bf16 autocast gives logits within 5% (relative to their largest magnitude) of fp32. Trained
  from the same weights on the same batches, the first epoch's mean loss stays within 0.05 of
  fp32's (out of about 2.4 at the start). Later epochs are compared only as "both learned":
  training amplifies any difference, rounding included (fp32 runs whose operations are merely
  reordered drift apart the same way), so by the third epoch the two courses differ by more
  than rounding would suggest while both fall well below chance.
- torch.compile (inductor) reorders and fuses float32 operations: the first epoch's loss within
  1e-2 of eager's. One compiled job only (compiling the forward and backward graphs is most of
  its time).
"""

from __future__ import annotations

import math

import pytest
import torch

from testbed import plugins
from testbed.assembly import autocast, build_for_training
from testbed.data import load_dataset
from testbed.experiment import build_experiment
from testbed.train import Interrupted, JobContext, run_job

CLASSES = 10
VOLATILE = ("train_s", "eval_s", "images_per_s", "resumed_mid_epoch")  # timings, and how the epoch was reached


def variant(precision: str = "fp32", compile_it: bool = False, epochs: int = 3, train_size: int = 256):
    raw = {
        "name": "precision",
        "data": {"dataset": "synthetic", "image_size": 32, "train_size": train_size, "test_size": 64, "preprocess": "standardize"},
        "model": {"geometry": "cifar", "width": 0.125, "init": "kaiming", "dropout": 0.0},  # learns in three short epochs
        "augment": {"train": []},
        "train": {
            "epochs": epochs,
            "batch_size": 32,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
            "schedule": "constant",
            "seeds": 1,
            "precision": precision,
            "compile": compile_it,
        },
    }
    return build_experiment(raw, plugins.registry()).variants[0]


def context(v, checkpoint, **kw) -> JobContext:
    registry = plugins.registry()
    return JobContext(v, 0, load_dataset(v.config["data"], registry), registry, torch.device("cpu"), checkpoint, **kw)


def losses(result) -> list[float]:
    return [r["train_loss"] for r in result["history"]]


def assert_learned(result):
    first, last = losses(result)[0], losses(result)[-1]
    assert last < first - 0.1, losses(result)
    assert last < math.log(CLASSES) - 0.2, losses(result)  # below chance-level cross-entropy


@pytest.fixture(scope="module")
def fp32_job(tmp_path_factory):
    return run_job(context(variant("fp32"), tmp_path_factory.mktemp("fp32") / "job.pt"))


@pytest.fixture(scope="module")
def bf16_job(tmp_path_factory):
    return run_job(context(variant("bf16"), tmp_path_factory.mktemp("bf16") / "job.pt"))


def test_bf16_autocast_forward_is_within_bf16_rounding_of_fp32():
    v = variant("bf16")
    registry = plugins.registry()
    data = load_dataset(v.config["data"], registry)
    torch.manual_seed(0)
    model = build_for_training(v.config, data, registry, torch.device("cpu")).module.eval()
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = model(x)
        with autocast("bf16", x.device):
            got = model(x)
    assert got.dtype == torch.bfloat16  # autocast really ran the layers in bf16
    assert (got.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_bf16_training_learns_close_to_fp32(fp32_job, bf16_job):
    fp32, bf16 = fp32_job, bf16_job
    assert_learned(bf16)
    assert_learned(fp32)
    assert abs(losses(bf16)[0] - losses(fp32)[0]) <= 0.05, (losses(bf16), losses(fp32))


def _comparable(history):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in history]


def test_bf16_job_stopped_mid_epoch_resumes_exactly(bf16_job, tmp_path):
    v, whole = variant("bf16"), bf16_job

    ctx = context(v, tmp_path / "stopped.pt", sync_every=3)

    def stop_in_second_epoch(progress):
        if progress.epoch == 2 and progress.step >= 3:
            ctx.stop.requested = True

    ctx.on_progress = stop_in_second_epoch
    with pytest.raises(Interrupted):
        run_job(ctx)
    resumed = run_job(context(v, tmp_path / "stopped.pt"))
    assert [r["resumed_mid_epoch"] for r in resumed["history"]] == [False, True, False]  # stopped in epoch 2
    assert _comparable(resumed["history"]) == _comparable(whole["history"])
    for (name, a), (_, b) in zip(whole["model"].state_dict().items(), resumed["model"].state_dict().items()):
        assert torch.equal(a, b), name


def _fp16_autocast_on_cpu() -> str | None:
    """None if fp16 autocast and GradScaler work on this CPU, else the reason they do not."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3))
        torch.amp.GradScaler("cpu")
    except Exception as exc:  # older torch: no fp16 CPU autocast or no CPU GradScaler
        return f"fp16 autocast/GradScaler unavailable on this CPU: {str(exc).splitlines()[0][:120]}"
    if y.dtype != torch.float16:
        return "this torch's CPU autocast does not run convolutions in fp16"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_fp16_autocast_on_cpu() is not None, reason=str(_fp16_autocast_on_cpu()))
def test_fp16_with_grad_scaler_learns_close_to_fp32(fp32_job, tmp_path):
    fp32 = fp32_job
    fp16 = run_job(context(variant("fp16", epochs=2), tmp_path / "fp16.pt"))  # fp16 convolutions are slow on a CPU
    assert_learned(fp16)
    # The scaler starts at 2^16, where the scaled gradients overflow fp16: it skips those steps,
    # halving its scale each time, so the first epoch has a few updates fewer than fp32's (out of
    # 8) and its loss may lag by more than rounding would explain: 0.15 rather than bf16's 0.05.
    assert abs(losses(fp16)[0] - losses(fp32)[0]) <= 0.15, (losses(fp16), losses(fp32))
    scale = torch.load(tmp_path / "fp16.pt", weights_only=True)["scaler"]["scale"]
    assert 0 < scale < 2.0**16  # the checkpoint keeps the scaler, which backed off from the overflow


def _compiler_missing() -> str | None:
    import shutil

    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile on a CPU needs a C++ compiler (inductor generates C++), none found"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_compiler_missing() is not None, reason=str(_compiler_missing()))
def test_compiled_training_learns_close_to_eager(fp32_job, tmp_path):
    eager = fp32_job
    compiled = run_job(context(variant("fp32", compile_it=True, epochs=2), tmp_path / "compiled.pt"))
    assert_learned(compiled)
    assert abs(losses(compiled)[0] - losses(eager)[0]) <= 1e-2, (losses(compiled), losses(eager))
