"""The `dask` executor, on real clusters of worker processes: a local cluster started by
`--workers`, and Dask's own `dask scheduler` / `dask worker` commands on loopback. Every test
compares against a serial run of the same grid: same seeds and the same torch thread count
per job give the same numbers to the last digit on a CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _env, run_testbed, start_testbed

GRID = """
name = "grid"
[data]
dataset = "synthetic"
image_size = 32
train_size = {train_size}
test_size = 100
preprocess = "standardize"
[model]
geometry = "cifar"
width = 0.125
init = "kaiming"
[augment]
train = [{{ name = "random-crop", padding = 2 }}, "hflip"]
test = "center"
[train]
epochs = {epochs}
batch_size = 32
optimizer = {{ name = "sgd", lr = 0.02 }}
schedule = "constant"
seeds = 2
[[variant]]
name = "no-lrn"
model.normalization = "none"
"""
TIMINGS = {"train_s", "eval_s", "images_per_s"}


def grid(tmp_path: Path, epochs: int = 2, train_size: int = 256) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(epochs=epochs, train_size=train_size))
    return path


def numbers(run: Path) -> tuple[list, list]:
    """Every job's status and metrics, every epoch row: all that training decided, no timings."""
    db = sqlite3.connect(run / "results.sqlite")
    db.row_factory = sqlite3.Row
    jobs = []
    for row in db.execute("SELECT variant, seed, status, metrics FROM jobs ORDER BY variant, seed"):
        metrics = {k: v for k, v in json.loads(row["metrics"]).items() if not k.endswith(("_s", "_per_s"))}
        jobs.append((row["variant"], row["seed"], row["status"], metrics))
    epochs = [
        {k: row[k] for k in row.keys() if k not in TIMINGS and k != "extra"}
        for row in db.execute("SELECT * FROM epochs ORDER BY variant, seed, epoch")
    ]
    return jobs, epochs


def run_ok(*args) -> subprocess.CompletedProcess:
    proc = run_testbed(*map(str, args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def serial_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    run_ok("run", grid(tmp), "--out", tmp / "run", "-q", "--json")
    return numbers(tmp / "run")


def test_a_parallel_run_stores_what_a_serial_run_stores(tmp_path, serial_reference):
    proc = run_ok("run", grid(tmp_path), "--out", tmp_path / "run", "--workers", "2", "--json", "-q")
    assert json.loads(proc.stdout)["status"] == "ok"
    assert numbers(tmp_path / "run") == serial_reference
    db = sqlite3.connect(tmp_path / "run" / "results.sqlite")
    workers = {json.loads(e)["worker"] for (e,) in db.execute("SELECT environment FROM jobs")}
    assert len(workers) == 2  # both workers trained jobs


def wait_for(predicate, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)
    return None


def running_job_past_an_epoch(run: Path):
    """(variant, seed, worker pid) of a running job with at least one finished epoch."""
    try:
        db = sqlite3.connect(run / "results.sqlite", timeout=1)
        rows = db.execute(
            "SELECT j.variant, j.seed, j.environment FROM jobs j WHERE j.status = 'running' AND "
            "(SELECT COUNT(*) FROM epochs e WHERE e.variant = j.variant AND e.seed = j.seed) >= 1"
        ).fetchall()
    except sqlite3.Error:
        return None
    for variant, seed, environment in rows:
        if environment:
            return variant, seed, json.loads(environment)["pid"]
    return None


def test_a_worker_killed_mid_job_loses_nothing_and_its_job_resumes(tmp_path):
    file = grid(tmp_path, epochs=4, train_size=512)
    reference = tmp_path / "serial"
    run_ok("run", file, "--out", reference, "-q")
    run = tmp_path / "parallel"
    proc = start_testbed("run", file, "--out", run, "--workers", "2", "-q", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        victim = wait_for(lambda: running_job_past_an_epoch(run))
        assert victim, "no job got past its first epoch"
        os.kill(victim[2], signal.SIGKILL)  # the worker process, mid-job: Dask starts another and reruns the job
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert numbers(run) == numbers(reference)
    db = sqlite3.connect(run / "results.sqlite")
    environment = json.loads(db.execute("SELECT environment FROM jobs WHERE variant = ? AND seed = ?", victim[:2]).fetchone()[0])
    assert environment["pid"] != victim[2]  # it finished in another worker process, from its checkpoint


def test_a_driver_stopped_by_sigint_resumes_with_another_worker_count(tmp_path):
    file = grid(tmp_path, epochs=3, train_size=512)
    reference = tmp_path / "serial"
    run_ok("run", file, "--out", reference, "-q")
    run = tmp_path / "parallel"
    proc = start_testbed("run", file, "--out", run, "--workers", "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: running_job_past_an_epoch(run))
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert f"testbed resume {run}" in err and "Traceback" not in err
    db = sqlite3.connect(run / "results.sqlite")
    assert db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'interrupted'").fetchone()[0] >= 1
    run_ok("resume", run, "--workers", "1", "-q")
    assert numbers(run) == numbers(reference)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_command(name: str) -> list[str]:
    path = Path(sys.executable).parent / "dask"
    return [str(path) if path.exists() else shutil.which("dask") or "dask", name]


def test_dasks_own_scheduler_and_workers_on_loopback_run_a_grid(tmp_path, serial_reference):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = _env(None)
    logs = open(tmp_path / "dask.log", "w")
    processes = [
        subprocess.Popen(
            dask_command("scheduler") + ["--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            env=env,
            stdout=logs,
            stderr=logs,
            cwd=tmp_path,
        )
    ]
    try:
        for i in range(2):
            processes.append(
                subprocess.Popen(
                    dask_command("worker") + [address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                    env=env,
                    stdout=logs,
                    stderr=logs,
                    cwd=tmp_path,
                )
            )
        proc = run_ok("run", grid(tmp_path), "--out", tmp_path / "run", "--scheduler", address, "--json", "-q")
        assert json.loads(proc.stdout)["status"] == "ok"
        assert numbers(tmp_path / "run") == serial_reference
    finally:
        for p in reversed(processes):
            p.send_signal(signal.SIGINT)
        for p in reversed(processes):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
    assert all(p.poll() is not None for p in processes)


def test_an_unreachable_scheduler_is_bad_input(tmp_path):
    proc = run_testbed("run", str(grid(tmp_path)), "--out", str(tmp_path / "run"), "--scheduler", f"tcp://127.0.0.1:{free_port()}", "-q")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --scheduler tcp://127.0.0.1:") and "cannot reach a Dask scheduler" in lines[0]


@pytest.mark.parametrize(
    "args, env, needle",
    [
        (["--executor", "daks"], None, "--executor = 'daks': unknown executor (did you mean 'dask'?)"),
        (["--workers", "-1"], None, "--workers and --threads-per-worker must be >= 0"),
        (["--executor", "serial", "--workers", "2"], None, "--executor.workers: unknown parameter of executor 'serial'"),
        (["--workers", "2"], {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "a grid of DDP jobs is not supported"),
    ],
)
def test_bad_executor_options_exit_2_with_one_line(tmp_path, args, env, needle):
    file = grid(tmp_path)
    if env:  # under torchrun every variant must be data-parallel: make them so
        file.write_text(file.read_text().replace('init = "kaiming"', 'init = "kaiming"\nplacement = "data-parallel"'))
    proc = run_testbed("run", str(file), "--out", str(tmp_path / "run"), "-q", *args, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


def test_a_worker_that_cannot_see_the_run_directory_fails_its_job_saying_so(tmp_path):
    from distributed import Client, LocalCluster

    from testbed import plugins
    from testbed.experiment import build_experiment
    from testbed.jobs import JobSpec
    from testbed_builtins.executors import run_on_worker

    experiment = build_experiment({"name": "x"}, plugins.registry())
    spec = JobSpec(experiment.baseline, 0, str(tmp_path / "not-shared"), "cpu")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        outcome = client.submit(run_on_worker, spec, "topic", "stop-never-set", 1).result()
    assert outcome.status == "failed"
    assert f"cannot see the run directory {tmp_path / 'not-shared'}" in outcome.message and "shared" in outcome.message
