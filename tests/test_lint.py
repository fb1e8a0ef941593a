"""ruff keeps the house style: `ruff check` (pycodestyle, pyflakes, import order, bugbear,
pyupgrade) and `ruff format --check` over the repository, with the settings in pyproject.toml's
[tool.ruff]. Run the same by hand: `ruff check . && ruff format --check .`; `ruff check --fix .`
and `ruff format .` fix most of what they find."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.fail("ruff is not installed; it is in the test extra: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_check_finds_nothing():
    done = ruff("check", "--output-format", "concise", ".")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_ruff_format_would_change_nothing():
    done = ruff("format", "--check", ".")
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
