"""Fuzzed experiment files (tests/fuzz_strategies.py) end in exit 0, or exit 2 with one line on
stderr, never a traceback: a few hundred in this process through the CLI's own entry, a few
as `python -m testbed` subprocesses. benchmarks/fuzz.py runs thousands."""

from __future__ import annotations

import math
import tomllib

import pytest
from conftest import run_testbed
from fuzz_strategies import cases, judge, nested, outcome, to_toml, valid_experiment, write_case
from hypothesis import HealthCheck, given, settings

from testbed import plugins
from testbed.experiment import build_experiment

REGISTRY = plugins.registry()


def fuzz(examples: int) -> settings:
    """No example database (nothing written into the repository), no deadline (the first case
    pays for imports), and no health check that a slow shared CI machine would trip."""
    return settings(max_examples=examples, database=None, deadline=None, suppress_health_check=list(HealthCheck))


def test_the_toml_writer_round_trips_what_it_writes():
    """The strategies' TOML writer is itself right, or the fuzzing tests the wrong text."""
    doc = {
        "name": "x",
        "data": {"seed": 3},
        "model": {"width": 0.5, "activation": {"name": "elu", "alpha": 1.5}, "skip": ["conv3"]},
        "train": {"target_train_error": math.inf},
        "variant": [{"name": "t", "model": {"activation": "tanh", "dropout": 0.0}}],
    }
    back = tomllib.loads(to_toml(doc))
    assert back["variant"] == doc["variant"] and back["model"] == doc["model"] and back["train"]["target_train_error"] == math.inf
    assert tomllib.loads(to_toml({"k": nested(30)}))["k"] == nested(30)


@fuzz(40)
@given(valid_experiment(REGISTRY))
def test_files_drawn_from_the_schema_are_accepted(doc):
    """Unmutated, every drawn file is a valid experiment: the mutations start from valid input."""
    build_experiment(tomllib.loads(to_toml(doc)), REGISTRY)  # raises BadInput if the strategies drew an invalid file


@fuzz(200)
@given(case=cases(REGISTRY))
def test_fuzzed_experiment_files_exit_0_or_2_with_one_line(case, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "exp.toml"
    code, failure = outcome(case, path)
    assert failure is None, f"{failure}\nargs: {case.sets!r}\nfile:\n{case.text!r}"


@fuzz(1)
@given(case=cases(REGISTRY))
def test_fuzzed_files_in_a_real_process(case, tmp_path_factory):
    """What users get: `python -m testbed show` in a fresh process (stderr as the terminal sees it)."""
    path = write_case(case, tmp_path_factory.mktemp("fuzz") / "exp.toml")
    done = run_testbed(*case.argv(path), timeout=300)
    assert judge(done.returncode, done.stderr) is None, f"exit {done.returncode}: {done.stderr[-2000:]}\nfile:\n{case.text!r}"


@pytest.mark.parametrize(
    "text, args",
    [
        ('[model]\n"act\\u001civation" = "relu"\n', ()),  # a control character that splits lines
        ('[model]\nactivation = "r\\u001b[31mlu"\n', ()),  # a terminal escape sequence in a value
        ("", ("--set", "model.activation=r\u2028lu")),
    ],
)
def test_error_lines_escape_what_a_terminal_would_act_on(text, args, tmp_path):
    from click.testing import CliRunner

    from testbed.cli import main

    (tmp_path / "exp.toml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(main, ["show", str(tmp_path / "exp.toml"), *args])
    assert result.exit_code == 2
    assert judge(result.exit_code, result.stderr) is None, repr(result.stderr)
    assert all(ch.isprintable() for ch in result.stderr.rstrip("\n")), repr(result.stderr)
    assert "\\x1c" in result.stderr or "\\x1b" in result.stderr or "\\u2028" in result.stderr
