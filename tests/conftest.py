"""Shared fixtures. Tests never load plugins installed on the machine (only built-ins), and
they find CIFAR-10 under $TESTBED_DATA (../shared/datasets next to the repository by default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["TESTBED_DISABLE_PLUGIN_AUTOLOAD"] = "1"
REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TESTBED_DATA", str(REPO.parent / "shared" / "datasets"))

from testbed import plugins  # noqa: E402


def _command(args) -> list[str]:
    return [sys.executable, "-m", "testbed", *map(str, args)]


def _env(extra: dict | None) -> dict:
    inherited = {k: v for k, v in os.environ.items() if k != "TESTBED_SCHEDULER"}  # a user's cluster is not the tests'
    return {**inherited, "TESTBED_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "2", **(extra or {})}


def run_testbed(*args, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m testbed ARGS` in a fresh process, as a user runs it (built-in plugins only, 2 threads)."""
    return subprocess.run(_command(args), capture_output=True, text=True, env=_env(env), timeout=timeout, cwd=REPO)


def start_testbed(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """The same, started in the background (to be signalled or killed)."""
    return subprocess.Popen(_command(args), env=_env(env), cwd=REPO, **popen)


def cifar_root() -> Path:
    return Path(os.environ["TESTBED_DATA"]) / "cifar10"


needs_cifar = pytest.mark.skipif(
    not (cifar_root() / "train").is_dir(),
    reason="CIFAR-10 not found under $TESTBED_DATA/cifar10 (set TESTBED_DATA=../shared/datasets; CI always has it)",
)


@pytest.fixture
def registry():
    return plugins.registry()


@pytest.fixture
def register_plugin():
    """Register a throwaway plugin object for one test; unregistered afterwards."""
    added = []

    def register(plugin, name):
        plugins.manager().register(plugin, name=name)
        added.append(plugin)  # before building the registry, which may raise (e.g. a duplicate name)
        plugins.invalidate_registry()
        return plugins.registry()

    yield register
    for plugin in added:
        plugins.manager().unregister(plugin)
    plugins.invalidate_registry()


@pytest.fixture
def tiny_config():
    """A small, fast experiment (as a dict of TOML tables) on synthetic data."""
    return {
        "name": "tiny",
        "data": {"dataset": "synthetic", "image_size": 32, "train_size": 256, "test_size": 100, "preprocess": "standardize"},
        "model": {"geometry": "cifar", "width": 0.125, "init": "kaiming"},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.01}, "schedule": "constant", "seeds": 1},
    }
