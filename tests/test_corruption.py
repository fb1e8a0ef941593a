"""A damaged run directory is refused clearly (exit 2, naming the file), and nothing else in it
is touched: a truncated results store, a store with a missing table, a checkpoint cut short,
a checkpoint of another experiment. The files are hashed before and after."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from testbed.cli import main

TINY = """
name = "tiny"
[data]
dataset = "synthetic"
image_size = 32
train_size = 64
test_size = 32
[model]
geometry = "cifar"
width = 0.125
[augment]
train = ["hflip"]
test = "center"
[train]
epochs = 1
batch_size = 32
optimizer = { name = "sgd", lr = 0.01 }
schedule = "constant"
[[variant]]
name = "tanh"
model.activation = "tanh"
"""


class Done:
    """`testbed ARGS` run in this process through the CLI's own entry (a subprocess would spend
    most of its time importing torch); the shape of subprocess.CompletedProcess."""

    def __init__(self, *args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def run_testbed(*args, timeout=None) -> Done:
    return Done(*args)


# what resume and report may write: the job's new status, the lock's holder, the plots
MAY_CHANGE = ("results.sqlite", ".lock", "plots/")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run of TINY, and one of the same file with another learning rate."""
    tmp = tmp_path_factory.mktemp("runs")
    (tmp / "tiny.toml").write_text(TINY)
    for name, extra in (("run", ()), ("other", ("--set", "train.optimizer.lr=0.05", "--only", "baseline"))):
        done = run_testbed("run", tmp / "tiny.toml", "--out", tmp / name, "-q", "--device", "cpu", *extra, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    return tmp


def hashes(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def unchanged_except(before: dict, after: dict, allowed=MAY_CHANGE) -> None:
    kept = lambda h: {k: v for k, v in h.items() if not k.startswith(allowed)}  # noqa: E731
    assert kept(after) == kept(before)


def copy_run(runs: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs / "run", tmp_path / "run"))


def one_error_line(done, *needles) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in done.stderr
    return lines[0]


# ---------------------------------------------------------------------------- the store


def _truncate(store: Path, keep: float) -> None:
    data = store.read_bytes()
    store.write_bytes(data[: int(len(data) * keep)])


def _drop_table(store: Path, table: str) -> None:
    db = sqlite3.connect(store)
    db.execute(f"DROP TABLE {table}")
    db.commit()
    db.close()


@pytest.mark.parametrize("command", ["report", "resume"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda s: _truncate(s, 0.0), id="truncated to nothing"),
        pytest.param(lambda s: _truncate(s, 0.3), id="truncated to 30%"),
        pytest.param(lambda s: _truncate(s, 0.7), id="truncated to 70%"),
        pytest.param(lambda s: s.write_bytes(s.read_bytes()[:100]), id="cut inside the header"),
        pytest.param(lambda s: _drop_table(s, "epochs"), id="missing table epochs"),
        pytest.param(lambda s: _drop_table(s, "jobs"), id="missing table jobs"),
    ],
)
def test_a_damaged_store_is_refused_and_left_as_it_was(runs, tmp_path, command, damage):
    run = copy_run(runs, tmp_path)
    damage(run / "results.sqlite")
    before = hashes(run)
    done = run_testbed(command, run, "-q" if command == "resume" else "--json", timeout=300)
    one_error_line(done, str(run / "results.sqlite"), "damaged results store")
    if command == "report":
        assert json.loads(done.stdout)["file"] == str(run / "results.sqlite")
    unchanged_except(before, hashes(run), allowed=(".lock",))  # the store itself too: read-only, never "repaired"


def test_report_opens_the_store_read_only(runs, tmp_path):
    """A store on a read-only file (as on a shared, read-only results folder) still reports."""
    run = copy_run(runs, tmp_path)
    store = run / "results.sqlite"
    store.chmod(0o444)
    run.chmod(0o555)  # no journal can be created next to it either
    try:
        before = hashes(run)
        done = run_testbed("report", run, "--json", timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert {v["name"] for v in json.loads(done.stdout)["variants"]} == {"baseline", "tanh"}
        assert hashes(run) == before
    finally:
        run.chmod(0o755)


# ---------------------------------------------------------------------------- the checkpoints


def _to_resume(run: Path) -> Path:
    """The baseline's job marked interrupted, so that resume loads its checkpoint."""
    db = sqlite3.connect(run / "results.sqlite")
    db.execute("UPDATE jobs SET status = 'interrupted' WHERE variant = 'baseline'")
    db.commit()
    db.close()
    return run / "checkpoints" / "baseline" / "seed-0.pt"


def _resume_refuses(run: Path, *needles) -> None:
    store_before = sqlite3.connect(run / "results.sqlite")
    tanh_before = store_before.execute("SELECT * FROM jobs WHERE variant = 'tanh'").fetchall()
    store_before.close()
    before = hashes(run)
    done = run_testbed("resume", run, "-q", "--json", "--device", "cpu", timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    problem = next(p for v in doc["variants"] if v["name"] == "baseline" for p in v["problems"])
    assert problem["status"] == "refused"
    for needle in needles:
        assert needle in problem["message"], (needle, problem["message"])
    unchanged_except(before, hashes(run))  # the refused checkpoint included: never overwritten
    db = sqlite3.connect(f"{(run / 'results.sqlite').as_uri()}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT * FROM jobs WHERE variant = 'tanh'").fetchall() == tanh_before  # the other job untouched
    db.close()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_checkpoint_cut_at_a_random_byte_is_refused(runs, tmp_path, seed):
    run = copy_run(runs, tmp_path)
    ckpt = _to_resume(run)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: random.Random(seed).randrange(1, len(data))])
    _resume_refuses(run, str(ckpt), "refused", "Nothing in it was run")


def test_a_checkpoint_of_another_experiment_is_refused(runs, tmp_path):
    """Same variant name, same seed, same shapes (only the learning rate differs): it would load
    without complaint, and the job would go on with another experiment's weights."""
    run = copy_run(runs, tmp_path)
    ckpt = _to_resume(run)
    shutil.copyfile(runs / "other" / "checkpoints" / "baseline" / "seed-0.pt", ckpt)
    _resume_refuses(run, str(ckpt), "another job", "config_digest", "Nothing was loaded")


def test_a_checkpoint_of_another_variant_is_refused(runs, tmp_path):
    run = copy_run(runs, tmp_path)
    ckpt = _to_resume(run)
    shutil.copyfile(run / "checkpoints" / "tanh" / "seed-0.pt", ckpt)
    _resume_refuses(run, str(ckpt), "variant 'tanh'")
