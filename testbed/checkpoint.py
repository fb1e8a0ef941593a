"""Checkpoints: written atomically at every epoch end (and at a requested stop mid-epoch),
loaded so that no code in the file can run, with every random stream a job draws from.

A checkpoint is a dict of tensors and plain containers (``torch.load(weights_only=True)``):
the model, optimizer, schedule and scaler states, the epoch and step reached, the partial
sums of an interrupted epoch, the augmentation generator's state and the RNG states, the
history of finished epochs. A resumed job continues every random stream where it stopped, so
its metrics equal an uninterrupted run's on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import torch

from testbed.errors import BadInput
from testbed.rundir import TMP_MARK

FORMAT = "testbed-checkpoint"
VERSION = 1


class UnsafeCheckpoint(BadInput):
    """A checkpoint file that the testbed did not write (or that is damaged)."""


def rng_state(cuda_devices=()) -> dict:
    """The global random streams: Python's, torch's CPU generator, NumPy's if present, and the
    CUDA generators of ``cuda_devices`` only (asking for every GPU's would create a CUDA
    context on each of them)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    indices = sorted({torch.device(d).index or 0 for d in map(torch.device, cuda_devices) if d.type == "cuda"})
    if indices:
        state["cuda"] = {str(i): torch.cuda.get_rng_state(i) for i in indices}
    try:
        import numpy

        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():  # a machine with fewer GPUs restores what it has
        items = enumerate(cuda) if isinstance(cuda, list) else ((int(i), s) for i, s in cuda.items())  # a list in older checkpoints
        for index, cuda_state in items:
            if index < torch.cuda.device_count():
                torch.cuda.set_rng_state(cuda_state, index)
    if "numpy" in state:
        import numpy

        kind, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), pos, has_gauss, cached))


def save(path: Path, state: dict) -> None:
    """Write atomically: a temp file in the same folder, fsync, rename over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass


def owner(variant, seed: int) -> dict:
    """Whose checkpoint it is: the variant's name, the seed, and a digest of the variant's whole
    resolved configuration, so that a checkpoint of another experiment (or of this one before a
    change to the file) is never resumed as this job's."""
    text = json.dumps(variant.config, sort_keys=True, default=str)
    return {"variant": variant.name, "seed": seed, "config_digest": hashlib.sha256(text.encode()).hexdigest()}


def load(path: Path, expect: dict | None = None) -> dict:
    """Load with weights_only=True: tensors and plain containers only, no code can run.
    ``expect``: the job's ``owner()``; a checkpoint of another job is refused (one written before
    checkpoints carried a digest is checked by variant and seed only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(
            f"{path}: refused: not a checkpoint written by testbed ({first[:160]}). Nothing in it was run. "
            f"Delete it to restart this job from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UnsafeCheckpoint(f"{path}: refused: not a testbed checkpoint (no '{FORMAT}' marker)")
    if state.get("version") != VERSION:
        raise UnsafeCheckpoint(f"{path}: checkpoint version {state.get('version')} is not {VERSION}")
    if expect is not None:
        mismatched = [key for key, want in expect.items() if key in state and state[key] != want]
        if mismatched:
            theirs = f"variant {state.get('variant')!r}, seed {state.get('seed')!r}"
            raise UnsafeCheckpoint(
                f"{path}: refused: a checkpoint of another job ({theirs}; its {', '.join(mismatched)} differs from this job's). "
                f"Nothing was loaded. Delete it to restart this job from scratch"
            )
    return state


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state a checkpoint keeps: DDP's wrapped module, else the model itself."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model
