"""Trackers (TensorBoard, MLflow) follow a run and read back with their own readers; `testbed
export` writes the same from the store; the store's schema is versioned and documented; the
HTML report, loaded in headless Chromium, shows every variant and picture and makes no request.

One tiny grid (the baseline and a variant x two seeds, two epochs) is trained once for the whole module.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, run_testbed

from testbed import hookimpl
from testbed.cli import main

GRID = """
name = "tracked"
description = "a baseline and a variant, two seeds, tracked"

[track]
use = ["tensorboard", {{ name = "mlflow", tracking_uri = "{uri}" }}]

[data]
dataset = "synthetic"
image_size = 32
train_size = 128
test_size = 64
preprocess = "standardize"

[model]
geometry = "cifar"
width = 0.125
init = "kaiming"

[augment]
train = [{{ name = "random-crop", padding = 4 }}, "hflip"]
test = "center"

[train]
epochs = 2
batch_size = 32
optimizer = {{ name = "sgd", lr = 0.02, momentum = 0.9 }}
schedule = "constant"
seeds = 2

[[variant]]
name = "tanh"
model.activation = "tanh"
model.normalization = "none"
"""
VARIANTS = ("baseline", "tanh")
SEEDS = (0, 1)

needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="pip install '.[tensorboard]'")
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("sqlalchemy") is None, reason="pip install '.[mlflow]'"
)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("mlflow") is None:
        pytest.skip("needs the tensorboard and mlflow extras (pip install '.[test]')")
    root = tmp_path_factory.mktemp("tracked")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "grid.toml").write_text(GRID.format(uri=uri))
    proc = run_testbed("run", root / "grid.toml", "--out", root / "run", "--quiet", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning" not in proc.stderr.lower(), proc.stderr[-2000:]
    return {"root": root, "run": root / "run", "uri": uri}


def stored_epochs(run_dir: Path) -> dict:
    """(variant, seed) -> {epoch: row} read with plain sqlite3, not through testbed."""
    db = sqlite3.connect(run_dir / "results.sqlite")
    db.row_factory = sqlite3.Row
    out: dict = {}
    for row in db.execute("SELECT * FROM epochs"):
        out.setdefault((row["variant"], row["seed"]), {})[row["epoch"]] = dict(row)
    db.close()
    return out


def stored_metrics(run_dir: Path) -> dict:
    db = sqlite3.connect(run_dir / "results.sqlite")
    out = {(v, s): json.loads(m) for v, s, m in db.execute("SELECT variant, seed, metrics FROM jobs")}
    db.close()
    return out


# ---------------------------------------------------------------------------- tensorboard


def check_tensorboard(logdir: Path, run_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    epochs, metrics = stored_epochs(run_dir), stored_metrics(run_dir)
    for variant in VARIANTS:
        for seed in SEEDS:
            acc = EventAccumulator(str(logdir / variant / f"seed-{seed}"))
            acc.Reload()
            rows = epochs[(variant, seed)]
            for tag in ("train_loss", "train_error", "test_top1", "test_top5", "lr"):
                events = acc.Scalars(tag)
                assert [e.step for e in events] == sorted(rows), (variant, seed, tag)
                assert [e.value for e in events] == pytest.approx([rows[k][tag] for k in sorted(rows)], rel=1e-6)
            final = acc.Scalars("final/top1_error")
            assert final[-1].value == pytest.approx(metrics[(variant, seed)]["top1_error"], rel=1e-6)
            content = acc.PluginTagToContent("hparams")
            start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
            assert start.hparams["model.activation"].string_value == ("tanh" if variant == "tanh" else "relu")
            assert start.hparams["model.normalization"].string_value == ("none" if variant == "tanh" else "lrn")
            assert start.hparams["seed"].number_value == seed
            assert start.hparams["train.optimizer.lr"].number_value == pytest.approx(0.02)


@needs_tensorboard
def test_tensorboards_own_reader_reads_back_every_jobs_scalars_and_hparams(tracked_run):
    check_tensorboard(tracked_run["run"] / "tensorboard", tracked_run["run"])


# ---------------------------------------------------------------------------- mlflow


def check_mlflow(uri: str, run_dir: Path, experiment: str = "tracked") -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["testbed.run_dir"] == str(run_dir.resolve())
    children = {(r.data.tags["testbed.variant"], int(r.data.tags["testbed.seed"])): r for r in runs if r not in parents}
    assert set(children) == {(v, s) for v in VARIANTS for s in SEEDS}
    epochs, metrics = stored_epochs(run_dir), stored_metrics(run_dir)
    client = MlflowClient(tracking_uri=uri)
    for (variant, seed), child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id and child.info.status == "FINISHED"
        params = child.data.params
        assert params["model.activation"] == ("tanh" if variant == "tanh" else "relu")
        assert params["model.normalization"] == ("none" if variant == "tanh" else "lrn")
        assert params["seed"] == str(seed) and params["train.optimizer.momentum"] == "0.9"
        assert params["plugin.activation"].startswith("builtin.activations")
        history = client.get_metric_history(child.info.run_id, "train_loss")
        rows = epochs[(variant, seed)]
        history = sorted((m.step, m.value) for m in history)
        assert [step for step, _ in history] == sorted(rows)
        assert [value for _, value in history] == pytest.approx([rows[k]["train_loss"] for k in sorted(rows)], rel=1e-6)
        assert child.data.metrics["final.top1_error"] == pytest.approx(metrics[(variant, seed)]["top1_error"], rel=1e-6)


@needs_mlflow
def test_mlflow_search_runs_reads_back_the_parent_and_nested_runs(tracked_run):
    check_mlflow(tracked_run["uri"], tracked_run["run"])


# ---------------------------------------------------------------------------- export


@needs_tensorboard
@needs_mlflow
def test_export_writes_the_same_from_the_store(tracked_run, tmp_path):
    run = tracked_run["run"]
    uri = f"sqlite:///{tmp_path / 'exported.db'}"
    result = CliRunner().invoke(main, ["export", str(run), "--to", "mlflow", "--param", f"tracking_uri={uri}"])
    assert result.exit_code == 0, result.output
    check_mlflow(uri, run)
    result = CliRunner().invoke(main, ["export", str(run), "--to", "tensorboard", "--param", f"logdir={tmp_path / 'tb'}"])
    assert result.exit_code == 0, result.output
    check_tensorboard(tmp_path / "tb", run)


# ---------------------------------------------------------------------------- failures


class FailingTracker:
    """A plugin whose tracker raises at the first epoch."""

    calls = 0

    @hookimpl
    def register_trackers(self, register):
        from testbed.tracking import Tracker

        class Broken(Tracker):
            def epoch(self, job, record):
                FailingTracker.calls += 1
                raise RuntimeError("the tracking server is down")

        register("broken", lambda: Broken(), "raises")


def test_a_failing_tracker_is_reported_once_and_training_goes_on(tmp_path, register_plugin):
    register_plugin(FailingTracker(), "broken-tracker")
    (tmp_path / "grid.toml").write_text(
        GRID.replace('use = ["tensorboard", {{ name = "mlflow", tracking_uri = "{uri}" }}]', "")
        .replace("{{", "{")
        .replace("}}", "}")
        .replace("seeds = 2", "seeds = 1")
        .replace("train_size = 128", "train_size = 64")
    )
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "run"), "--quiet", "--device", "cpu", "--track", "broken", "--json"],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "ok" and len(doc["variants"]) == 2
    assert FailingTracker.calls == 1  # dropped after its first failure
    lines = [line for line in result.stderr.splitlines() if "tracker 'broken'" in line]
    assert len(lines) == 1 and "the tracking server is down" in lines[0]
    assert len(stored_epochs(tmp_path / "run")) == 2  # every job trained and stored its epochs


@pytest.mark.parametrize("name, package", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_bad_input_naming_what_to_install(tmp_path, monkeypatch, name, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real(n, *a))
    (tmp_path / "grid.toml").write_text(
        GRID.replace('use = ["tensorboard", {{ name = "mlflow", tracking_uri = "{uri}" }}]', "").replace("{{", "{").replace("}}", "}")
    )
    result = CliRunner().invoke(main, ["run", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "run"), "--track", name])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pip install 'testbed[{name}]'" in lines[0] and package in lines[0]
    assert not (tmp_path / "run").exists()  # refused before any work


# ---------------------------------------------------------------------------- the store


def test_the_store_documents_every_table_and_column_and_carries_its_version(tracked_run):
    from testbed.results import STORE_VERSION

    db = sqlite3.connect(tracked_run["run"] / "results.sqlite")  # plain sqlite3, as any SQLite browser
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    doc = (REPO / "docs" / "store.md").read_text()
    for table in tables:
        assert f"### `{table}`" in doc, table
        section = doc.split(f"### `{table}`", 1)[1].split("\n### ", 1)[0]
        for _cid, column, *_rest in db.execute(f"PRAGMA table_info({table})"):
            assert f"| `{column}` |" in section, (table, column)
    assert dict(db.execute("SELECT key, value FROM meta"))["schema_version"] == str(STORE_VERSION)
    assert db.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION
    assert f"version {STORE_VERSION}" in doc
    db.close()


def test_report_refuses_a_store_from_a_newer_testbed(tracked_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tracked_run["run"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    db = sqlite3.connect(run / "results.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.execute("UPDATE meta SET value = '9.0' WHERE key = 'testbed'")
    db.commit()
    db.close()
    for args in (["report", str(run)], ["report", str(run), "--html", str(tmp_path / "r.html")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "schema version 99" in lines[0] and "testbed 9.0" in lines[0] and "upgrade" in lines[0]
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------------- the HTML report


def test_the_html_report_in_headless_chromium(tracked_run, tmp_path):
    from chromium import Chromium, chromium_binary

    if chromium_binary() is None:
        pytest.skip("no chromium (apt-get install chromium; .ci/run installs it)")
    run = tmp_path / "run"
    shutil.copytree(tracked_run["run"], run, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    _another_analysis(run / "plots" / "analysis-weights.png")  # a picture another analysis left: it must be shown
    pictures = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert {"learning-curves.png", "conv1-baseline.png", "conv1-tanh.png", "analysis-weights.png"} <= set(pictures)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", str(run), "--html", str(page)])
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", text)  # nothing to fetch: every source inline
    url = page.resolve().as_uri()
    with Chromium(width=1280, height=900) as browser:
        browser.open(url)
        rows = browser.evaluate("[...document.querySelectorAll('table.results tbody tr')].map(r => r.dataset.variant)")
        assert sorted(rows) == sorted(VARIANTS)
        shown = browser.evaluate(
            "[...document.querySelectorAll('table.results tbody tr')].every(r => r.getBoundingClientRect().height > 0)"
        )
        assert shown
        widths = browser.evaluate("Promise.all([...document.images].map(i => i.decode().then(() => i.naturalWidth, () => 0)))")
        assert len(widths) == len(pictures) and all(w > 0 for w in widths)
        _check_sorting(browser)
        browser.resize(390, 800)  # a phone: the page itself must not scroll sideways (the table scrolls in its box)
        assert browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.page("Emulation.setEmulatedMedia", media="print")
        assert browser.evaluate("[...document.querySelectorAll('table.results tbody tr')].every(r => r.getBoundingClientRect().height > 0)")
        assert browser.pdf().startswith(b"%PDF")
        browser.settle()
        assert browser.console_errors == []
        assert [r for r in browser.requests if r != url and not r.startswith("data:")] == []
    components = text.split("<h2>Components</h2>", 1)[1].split("<h2>", 1)[0]
    row = re.compile(r'<tr data-variants="([^"]*)"><td>([^<]*)</td><td>([^<]*)</td><td><code>[^<]*</code></td><td>([^<]*)</td>')
    used: dict = {}  # slot -> variant -> (component, plugin), read off the rows' variant lists
    for users, slot, name, plugin in row.findall(components):
        for variant in users.split():
            used.setdefault(slot, {})[variant] = (name, plugin)
    assert used["activation"] == {"baseline": ("relu", "builtin.activations"), "tanh": ("tanh", "builtin.activations")}
    assert used["normalization"] == {"baseline": ("lrn", "builtin.normalizations"), "tanh": ("none", "builtin.normalizations")}
    assert all(set(by_variant) == set(VARIANTS) for by_variant in used.values())  # every slot of every variant
    environment = text.split("<h2>Environment and command</h2>", 1)[1]
    assert "testbed run " in environment and "grid.toml" in environment  # the command that made the run


def _check_sorting(browser) -> None:
    """Clicking 'top-1 %' orders the rows by that column's number, a second click reverses them."""
    header = "[...document.querySelectorAll('table.results th')].find(h => h.textContent.trim().startsWith('top-1'))"
    column = f"[...{header}.parentElement.children].indexOf({header})"
    values = f"[...document.querySelectorAll('table.results tbody tr')].map(r => parseFloat(r.children[{column}].textContent))"
    browser.evaluate(f"{header}.querySelector('button').click()")
    ascending = browser.evaluate(values)
    assert ascending == sorted(ascending)
    browser.evaluate(f"{header}.querySelector('button').click()")
    assert browser.evaluate(values) == sorted(ascending, reverse=True)


def _another_analysis(path: Path) -> None:
    from testbed.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [2, 1, 0.5])
    fig.savefig(path, dpi=60)
    plt.close(fig)


@pytest.mark.parametrize(
    "table, needle",
    [
        ('[track]\nuse = ["tensorbord"]', "did you mean 'tensorboard'"),
        ('[track]\nusing = ["tensorboard"]', "track.using: unknown key"),
        ('[track]\nuse = [{ name = "tensorboard", log_dir = "x" }]', "log_dir: unknown parameter of tracker 'tensorboard'"),
        ('track = "tensorboard"', "expected a table [track]"),
    ],
)
def test_a_bad_track_table_is_bad_input(tmp_path, table, needle):
    (tmp_path / "grid.toml").write_text(table + "\n" + "[data]" + GRID.split("[data]", 1)[1].replace("{{", "{").replace("}}", "}"))
    result = CliRunner().invoke(main, ["show", str(tmp_path / "grid.toml")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and str(tmp_path / "grid.toml") in lines[0]


@needs_tensorboard
def test_trackers_follow_a_dask_run_from_the_driver(tmp_path):
    """Jobs on two Dask worker processes: the driver alone feeds the tracker, every job arrives."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    grid = GRID.replace('{{ name = "mlflow", tracking_uri = "{uri}" }}', "").replace("{{", "{").replace("}}", "}")
    (tmp_path / "grid.toml").write_text(grid.replace("train_size = 128", "train_size = 64"))
    proc = run_testbed(
        "run",
        tmp_path / "grid.toml",
        "--out",
        tmp_path / "run",
        "--quiet",
        "--device",
        "cpu",
        "--workers",
        "2",
        "--threads-per-worker",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    epochs = stored_epochs(tmp_path / "run")
    assert set(epochs) == {(v, s) for v in VARIANTS for s in SEEDS}
    for (variant, seed), rows in epochs.items():
        acc = EventAccumulator(str(tmp_path / "run" / "tensorboard" / variant / f"seed-{seed}"))
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("test_top1")] == [(k, pytest.approx(rows[k]["test_top1"])) for k in sorted(rows)]
