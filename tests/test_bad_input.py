"""Bad input never gives a traceback: exit code 2 and one line on stderr, "error: ...", naming
the file, the key and the value. One table row per kind of bad input; most run in-process
through click's CliRunner, a few as `python -m testbed` subprocesses (what users get)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from testbed.cli import main

# A small, valid experiment on generated data: `run` validates it in well under a second.
TINY = """\
name = "tiny"
[data]
dataset = "synthetic"
image_size = 32
train_size = 40
test_size = 20
[model]
geometry = "cifar"
width = 0.125
[train]
epochs = 1
batch_size = 20
schedule = "constant"
"""
TANH = '\n[[variant]]\nname = "tanh"\nmodel.activation = "tanh"\n'


@dataclass
class Case:
    """`testbed <command> FILE <args>`, FILE holding `text` (or made by `setup(tmp_path) -> path`)."""

    command: str
    text: str | bytes | None = ""
    args: tuple = ()
    needles: tuple = ()  # what the error line must contain ({tmp} is the test's tmp_path)
    setup: Callable[[Path], Path] | None = None
    skip: str | None = None
    extra: dict = field(default_factory=dict)


def _dir(tmp: Path) -> Path:
    (tmp / "folder").mkdir()
    return tmp / "folder"


def _empty_data_folder(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    path = tmp / "exp.toml"
    path.write_text(TINY.replace('dataset = "synthetic"', f'dataset = {{ name = "cifar10", download = false }}\nroot = "{tmp / "empty"}"'))
    return path


def _not_a_run(tmp: Path) -> Path:
    (tmp / "notes").mkdir()
    (tmp / "notes" / "todo.txt").write_text("not a run")
    return tmp / "notes"


def _empty_folder(tmp: Path) -> Path:
    (tmp / "nothing").mkdir()
    return tmp / "nothing"


def _a_file(tmp: Path) -> Path:
    (tmp / "file.txt").write_text("x")
    return tmp / "file.txt"


def _damaged_run(tmp: Path) -> Path:
    run = tmp / "damaged"
    run.mkdir()
    (run / "results.sqlite").write_text("garbage" * 100)
    (run / "experiment.json").write_text("{not json")
    (run / "run.json").write_text("{}")
    return run


def _run_with_wrong_experiment(tmp: Path) -> Path:
    """A sound store beside an experiment.json that is JSON, but not an experiment."""
    import sqlite3

    run = tmp / "damaged"
    run.mkdir()
    sqlite3.connect(run / "results.sqlite").close()
    (run / "experiment.json").write_text("[]")
    (run / "run.json").write_text("{}")
    return run


DEEP = "x = " + "[" * 5000 + "]" * 5000
NO_CUDA = "this machine has CUDA" if torch.cuda.is_available() else None

CASES = {
    # the acceptance criteria
    "misspelled key": Case("show", "[model]\nactivaton = 'relu'", needles=("model.activaton", "did you mean 'activation'")),
    "unknown component": Case("show", "[model]\nactivation = 'rleu'", needles=("model.activation = 'rleu'", "did you mean 'relu'", "tanh")),
    # files
    "missing file": Case("show", None, needles=("{tmp}/exp.toml", "no such experiment file")),
    "folder as FILE": Case("show", setup=_dir, needles=("{tmp}/folder", "is a folder")),
    "non-UTF-8 file": Case("show", b'name = "\xff\xfe"\n[model]\n', needles=("{tmp}/exp.toml", "not UTF-8")),
    "malformed TOML": Case("show", "[model\nwidth = 1", needles=("{tmp}/exp.toml", "malformed TOML", "line 1")),
    "deeply nested arrays": Case("show", DEEP, needles=("{tmp}/exp.toml", "nested too deeply")),
    "deeply nested tables": Case("show", "x = " + "{a = " * 3000 + "1" + "}" * 3000, needles=("nested too deeply",)),
    "integer too long to read": Case("show", "[train]\nepochs = 1" + "0" * 5000, needles=("{tmp}/exp.toml", "too large")),
    # keys, types, values
    "unknown section": Case("show", "[modle]\nwidth = 1", needles=("modle", "did you mean 'model'")),
    "wrong type": Case("show", "[train]\nepochs = 'ten'", needles=("train.epochs = 'ten'", "expected an integer")),
    "huge integer": Case("show", f"[train]\nepochs = {10**30}", needles=(f"train.epochs = {10**30}", "out of range")),
    "huge integer parameter": Case(
        "show", f"[augment]\ntrain = [{{ name = 'random-crop', padding = {10**30} }}]", needles=("augment.train[0].padding", "too large")
    ),
    "negative size": Case("show", "[train]\nbatch_size = -8", needles=("train.batch_size = -8", "out of range")),
    "negative image size": Case("show", "[data]\nimage_size = -32", needles=("data.image_size = -32",)),
    "width 0": Case("show", "[model]\nwidth = 0", needles=("model.width = 0", "out of range")),
    "dropout 1.5": Case("show", "[model]\ndropout = 1.5", needles=("model.dropout = 1.5", "0 <= value <= 0.99")),
    "unknown dataset": Case("show", "[data]\ndataset = 'imagenett'", needles=("data.dataset = 'imagenett'", "cifar10", "synthetic")),
    "skip conv1": Case("show", "[model]\nskip = ['conv1']", needles=("model.skip", "conv1", "conv3, conv4, conv5")),
    "augment.test a train augmentation": Case("show", "[augment]\ntest = 'hflip'", needles=("augment.test = 'hflip'", "center, ten-crop")),
    "augment.train a test view": Case(
        "show",
        "[augment]\ntrain = ['random-crop', 'ten-crop']",
        needles=("augment.train[1] = 'ten-crop'", "hflip, pca-lighting, random-crop"),
    ),
    "unknown parameter": Case(
        "show", "[model]\nnormalization = { name = 'lrn', sise = 3 }", needles=("model.normalization.sise", "did you mean 'size'")
    ),
    "parameter choice": Case(
        "show",
        "[model]\nnormalization = { name = 'lrn', alpha_convention = 'per-trem' }",
        needles=("alpha_convention = 'per-trem'", "did you mean 'per-term'"),
    ),
    "parameter refused by its component": Case(
        "show", "[model]\nnormalization = { name = 'lrn', size = 4 }", needles=("lrn", "odd", "got 4")
    ),
    # variants
    "variant name ../x": Case("show", TANH.replace('"tanh"\nmodel', '"../x"\nmodel'), needles=("variant[0].name = '../x'",)),
    "variant name .hidden": Case(
        "show", TANH.replace('"tanh"\nmodel', '".hidden"\nmodel'), needles=("variant[0].name = '.hidden'", "no leading dot")
    ),
    "variant name a/b": Case("show", TANH.replace('"tanh"\nmodel', '"a/b"\nmodel'), needles=("variant[0].name = 'a/b'",)),
    "variant name too long": Case("show", TANH.replace('"tanh"\nmodel', f'"{"a" * 300}"\nmodel'), needles=("variant[0].name", "at most")),
    "duplicate variant names": Case("show", TANH + TANH, needles=("variant[1].name = 'tanh'", "duplicate")),
    "variant key": Case(
        "show", TANH + "model.activaton = 'relu'\n", needles=("variant 'tanh'", "model.activaton", "did you mean 'activation'")
    ),
    # command line
    "--set without =": Case("show", TINY, args=("--set", "train.epochs"), needles=("--set train.epochs", "dotted.key=value")),
    "--set unknown key": Case("show", TINY, args=("--set", "train.epoch=2"), needles=("--set train.epoch", "did you mean 'epochs'")),
    "--set bad value": Case(
        "show", TINY, args=("--set", "model.activation=rleu"), needles=("model.activation = 'rleu'", "did you mean 'relu'")
    ),
    "--only unknown variant": Case(
        "run", TINY + TANH, args=("--only", "tahn"), needles=("--only tahn", "did you mean 'tanh'", "baseline, tanh")
    ),
    "--seeds 0": Case("run", TINY, args=("--seeds", "0"), needles=("--seeds 0", "1..1000")),
    "--device cuda without CUDA": Case("run", TINY, args=("--device", "cuda"), needles=("--device cuda", "no CUDA device"), skip=NO_CUDA),
    "--device nonsense": Case("run", TINY, args=("--device", "quantum"), needles=("--device quantum", "cpu")),
    # data
    "missing data folder": Case(
        "run", setup=_empty_data_folder, needles=("{tmp}/exp.toml", "CIFAR-10 not found", "{tmp}/empty", "download is off")
    ),
    # run directories
    "resume: folder not a run": Case("resume", setup=_not_a_run, needles=("{tmp}/notes", "not a testbed run")),
    "resume: empty folder": Case("resume", setup=_empty_folder, needles=("{tmp}/nothing", "not a testbed run")),
    "resume: no such folder": Case("resume", setup=lambda tmp: tmp / "nowhere", needles=("{tmp}/nowhere", "no such run directory")),
    "resume: a file": Case("resume", setup=_a_file, needles=("{tmp}/file.txt",)),
    "resume: damaged run": Case("resume", setup=_damaged_run, needles=("{tmp}/damaged", "damaged results store")),
    "report: folder not a run": Case("report", setup=_not_a_run, needles=("{tmp}/notes", "not a testbed run")),
    "report: no such folder": Case("report", setup=lambda tmp: tmp / "nowhere", needles=("{tmp}/nowhere", "no such run directory")),
    "report: damaged run": Case("report", setup=_damaged_run, needles=("{tmp}/damaged", "damaged results store")),
    "report: experiment.json of the wrong shape": Case(
        "report", setup=_run_with_wrong_experiment, needles=("{tmp}/damaged", "damaged results store")
    ),
}

# Run as real subprocesses too: the closest thing to a user at a terminal.
SUBPROCESS = ["misspelled key", "unknown component", "deeply nested arrays", "resume: folder not a run"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    """No user cache of CIFAR-10 (a missing data folder must stay missing), no installed plugins."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TESTBED_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.chdir(tmp_path)  # a default run directory (runs/...) would land here
    return dict(os.environ)


def _target(case: Case, tmp: Path) -> Path:
    if case.setup is not None:
        return case.setup(tmp)
    path = tmp / "exp.toml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    elif case.text is not None:
        path.write_text(case.text)
    return path


def _argv(case: Case, tmp: Path) -> list[str]:
    argv = [case.command, str(_target(case, tmp)), *case.args]
    if case.command == "run":
        argv += ["--out", str(tmp / "out"), "--quiet"]
    return argv


def check_one_error_line(code: int, stdout: str, stderr: str, needles, tmp: Path) -> str:
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, f"exit {code}; stderr: {stderr!r}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        needle = needle.replace("{tmp}", str(tmp))
        assert needle in line, f"{needle!r} not in {line!r}"
    assert len(line) < 1000, line
    return line


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_cli(case: Case, tmp_path, env):
    if case.skip:
        pytest.skip(case.skip)
    result = CliRunner().invoke(main, _argv(case, tmp_path))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    check_one_error_line(result.exit_code, result.stdout, result.stderr, case.needles, tmp_path)
    assert not (tmp_path / "out").exists(), "bad input must be refused before a run directory is made"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_subprocess(name, tmp_path, env):
    case = CASES[name]
    proc = subprocess.run(
        [sys.executable, "-m", "testbed", *_argv(case, tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    check_one_error_line(proc.returncode, proc.stdout, proc.stderr, case.needles, tmp_path)
    assert proc.stdout == ""


# ------------------------------------------------------------------------------ the output folder


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One real (tiny) run directory, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "exp.toml").write_text(TINY)
    (tmp / "run").mkdir()  # an empty folder is fine as --out
    result = CliRunner().invoke(main, ["run", str(tmp / "exp.toml"), "--out", str(tmp / "run"), "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp / "run" / "results.sqlite").is_file()
    return tmp / "run"


def _run(tmp: Path, out: Path, *args: str):
    (tmp / "exp.toml").write_text(TINY)
    return CliRunner().invoke(main, ["run", str(tmp / "exp.toml"), "--out", str(out), "--quiet", "--device", "cpu", *args])


def test_existing_run_is_not_overwritten(finished_run, tmp_path, env):
    before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*")}
    result = _run(tmp_path, finished_run)
    line = check_one_error_line(
        result.exit_code, result.stdout, result.stderr, ("--out", str(finished_run), "already holds a run"), tmp_path
    )
    assert "--force" in line and f"testbed resume {finished_run}" in line
    assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("*")} == before


def test_report_of_a_finished_run_works(finished_run, env):
    result = CliRunner().invoke(main, ["report", str(finished_run), "--json"])
    assert result.exit_code == 0, result.output


def test_force_refuses_to_delete_a_folder_that_is_not_a_run(tmp_path, env):
    precious = _not_a_run(tmp_path)
    result = _run(tmp_path, precious, "--force")
    check_one_error_line(result.exit_code, result.stdout, result.stderr, ("--out", str(precious), "not a testbed run"), tmp_path)
    assert (precious / "todo.txt").read_text() == "not a run"


def test_out_is_a_file(tmp_path, env):
    target = _a_file(tmp_path)
    result = _run(tmp_path, target, "--force")
    check_one_error_line(result.exit_code, result.stdout, result.stderr, ("--out", str(target), "not a folder"), tmp_path)
    assert target.read_text() == "x"


def test_force_replaces_a_run(tmp_path, env):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")  # what prepare_run_dir looks for
    (out / "stale.txt").write_text("from the old run")
    result = _run(tmp_path, out, "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and (out / "results.sqlite").is_file()
