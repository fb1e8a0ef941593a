"""The command line: parse, call, print. Bad input exits 2 with one line, never a traceback."""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from testbed import __version__, plugins
from testbed.errors import BadInput, PluginFailure
from testbed.faults import phase

EPILOG = (
    "Docs: README.md, docs/writing-plugins.md, docs/architecture.md. Exit codes: 0 done, 1 a variant failed or diverged, "
    "2 bad input, 130 interrupted (Ctrl-C or SIGTERM; `testbed resume DIR` continues)."
)
INTERRUPTED = 130


def err_console() -> Console:
    return Console(stderr=True)


_json_out = None  # while a --json command runs: the real stdout, which only emit_json writes to


def _stop_at_once(signum, _frame):
    raise KeyboardInterrupt  # SIGTERM too: before training there is nothing to save


class RunInterrupted(Exception):
    """Ctrl-C or SIGTERM outside training, once a run directory exists: say how to continue."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def guarded(fn):
    """Every command's frame. Bad input: exit 2 and one line on stderr (with --json, also an
    error document on stdout). Ctrl-C or SIGTERM before a grid trains (or after it) stops at
    once with exit 130; while it trains the runner's own handlers take over (testbed/signals.py).
    With --json, whatever else writes to stdout (a download, a plugin) goes to stderr, so stdout
    carries exactly one document."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _json_out
        as_json = kwargs.get("as_json", False)
        previous = {sig: signal.signal(sig, _stop_at_once) for sig in (signal.SIGINT, signal.SIGTERM)}
        real_stdout, _json_out = sys.stdout, sys.stdout if as_json else None
        if as_json:
            sys.stdout = sys.stderr
        try:
            phase("start")
            return fn(*args, **kwargs)
        except BadInput as exc:
            document = exc.document()
            click.echo(f"error: {document['error']}", err=True)
            if as_json:
                print(json.dumps(document), file=real_stdout)
            sys.exit(2)
        except PluginFailure as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except (KeyboardInterrupt, RunInterrupted) as exc:
            run_dir = getattr(exc, "run_dir", None)
            message = "interrupted" + (f"; continue with: testbed resume {run_dir}" if run_dir else "")
            click.echo(message, err=True)
            if as_json:
                print(
                    json.dumps({"status": "interrupted", "error": message, "run_dir": str(run_dir) if run_dir else None}), file=real_stdout
                )
            sys.exit(INTERRUPTED)
        finally:
            sys.stdout, _json_out = real_stdout, None
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return wrapper


def emit_json(doc) -> None:
    print(json.dumps(doc, indent=2, default=str), file=_json_out or sys.stdout)


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="testbed")
def main():
    """Ablation studies of AlexNet (Krizhevsky, Sutskever & Hinton, 2012).

    Each of the paper's design choices is a component you switch in an experiment file;
    `testbed run` trains the baseline and every variant over several seeds and prints
    their errors side by side with the paper's own claims.

    \b
    Start here:
      testbed run experiments/smoke.toml        # offline demo, under a minute
      testbed show experiments/paper.toml       # what each variant builds, no training
      testbed plugins                           # every component you can switch to
    """


def statistics_options(fn):
    """--confidence and --correction: how the deltas are judged (default: the experiment's [report] settings)."""
    fn = click.option(
        "--correction",
        metavar="holm|dunnett|none",
        help="Multiplicity correction across the variants (default holm, or the file's [report] setting).",
    )(fn)
    return click.option("--confidence", metavar="LEVEL", help="Confidence level of intervals and verdicts, 0 < LEVEL < 1 (default 0.95).")(
        fn
    )


def rounds_options(fn):
    """--until-resolved and --max-seeds: seeds added in rounds while verdicts are open."""
    fn = click.option(
        "--max-seeds", type=int, metavar="N", help=f"With --until-resolved: at most N seeds per variant (default {DEFAULT_MAX_SEEDS})."
    )(fn)
    return click.option(
        "--until-resolved",
        is_flag=True,
        help="After the seeds run, add a seed to the baseline and to every variant whose top-1 verdict is "
        "still inconclusive, round after round, until each is resolved or has --max-seeds.",
    )(fn)


DEFAULT_MAX_SEEDS = 10


def _planned(experiment, until_resolved: bool, max_seeds):
    """The experiment with its rounds planned, or as it is (--max-seeds needs --until-resolved)."""
    from testbed import rounds

    if max_seeds is not None and not until_resolved:
        raise BadInput(f"--max-seeds {max_seeds}: only with --until-resolved")
    return rounds.plan(experiment, max_seeds or DEFAULT_MAX_SEEDS) if until_resolved else experiment


def _statistics(confidence, correction) -> dict:
    """The given ones, checked (bad values exit 2 with one line)."""
    from testbed.verdicts import check_confidence, check_correction

    out = {}
    if confidence is not None:
        out["confidence"] = check_confidence(confidence, "--confidence")
    if correction is not None:
        out["correction"] = check_correction(correction, "--correction")
    return out


def _registry():
    reg = plugins.registry()
    plugins.warn_load_errors()
    return reg


def _load(file: str, sets: tuple[str, ...]):
    from testbed.experiment import load_experiment, parse_set

    registry = _registry()
    return load_experiment(file, registry, parse_set(list(sets))), registry


def executor_options(fn):
    """--executor, --workers, --scheduler, --threads-per-worker: where the grid's jobs run."""
    options = [
        click.option(
            "--executor",
            metavar="NAME",
            help="Where jobs run: serial (the default), dask, or a plugin's; --workers or --scheduler imply dask.",
        ),
        click.option("--workers", type=int, metavar="N", help="Start a local Dask cluster of N worker processes, one job each at a time."),
        click.option(
            "--scheduler",
            envvar="TESTBED_SCHEDULER",
            metavar="ADDRESS",
            help="Run on an existing Dask cluster, e.g. tcp://HOST:8786 (default: $TESTBED_SCHEDULER).",
        ),
        click.option(
            "--threads-per-worker",
            "threads",
            type=int,
            metavar="T",
            help="torch threads per job under dask (default: this process's, as a serial run uses, so the numbers match).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def executor_spec(executor, workers, scheduler, threads) -> dict:
    """The executor component these options ask for."""
    spec = {"name": executor or ("dask" if workers is not None or scheduler else "serial")}
    for key, value in (("workers", workers), ("scheduler", scheduler), ("threads_per_worker", threads)):
        if value not in (None, ""):
            spec[key] = value
    return spec


def track_option(fn):
    """--track NAME: a tracker besides those of the file's [track] table."""
    return click.option(
        "--track",
        multiple=True,
        metavar="NAME",
        help="Also send the numbers to this tracker (repeatable): tensorboard, mlflow, or a plugin's; "
        "parameters go in the file's [track] table.",
    )(fn)


def _with_trackers(experiment, names, registry):
    """The experiment with the --track trackers added (stored with the run: resume keeps them),
    each made once so that a missing package is refused now."""
    import dataclasses

    from testbed import runner
    from testbed.tracking import merge_specs

    experiment = dataclasses.replace(experiment, track=tuple(merge_specs(list(experiment.track), list(names), registry)))
    runner.check_trackers(experiment, registry)
    return experiment


@main.command(epilog=EPILOG)
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option("--out", "out", type=click.Path(path_type=Path), help="Run directory (default: runs/<experiment>-<timestamp>).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a baseline key, e.g. --set train.epochs=2.")
@click.option("--only", multiple=True, metavar="NAME", help="Run only this variant (repeatable); the baseline always runs.")
@click.option("--seeds", type=int, help="Run seeds 0..N-1 for every variant (overrides train.seeds).")
@click.option("--device", default="auto", show_default=True, help="auto (a GPU when there is one), cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout (progress goes to stderr).")
@click.option("--force", is_flag=True, help="Replace an existing run in --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@track_option
@executor_options
@statistics_options
@rounds_options
@guarded
def run(
    file,
    out,
    sets,
    only,
    seeds,
    device,
    as_json,
    force,
    quiet,
    track,
    executor,
    workers,
    scheduler,
    threads,
    confidence,
    correction,
    until_resolved,
    max_seeds,
):
    """Train every variant x seed of FILE and print the side-by-side table.

    A crash or Ctrl-C leaves a run directory that `testbed resume DIR` continues."""
    import dataclasses

    from testbed import runner
    from testbed.rundir import default_run_dir, prepare_run_dir

    stats = _statistics(confidence, correction)
    experiment, registry = _load(file, sets)
    experiment = dataclasses.replace(experiment, report={**experiment.report, **stats})  # stored: `report DIR` judges alike
    experiment = _planned(runner.select(experiment, list(only), seeds), until_resolved, max_seeds)
    experiment = _with_trackers(experiment, track, registry)
    options = runner.RunOptions(device, as_json, quiet, executor_spec(executor, workers, scheduler, threads), stats)
    dist = runner.distributed_from_env(experiment, registry)
    runner.check_executor(options.executor, registry, dist)
    device_obj = runner.resolve_device(device, dist)
    runner.validate(experiment, registry, dist, device_obj)
    runner.init_process_group(experiment, registry, dist, device_obj)
    run_dir = Path(dist.broadcast(str(out if out is not None else default_run_dir(experiment))))
    if dist.rank == 0:
        prepare_run_dir(run_dir, experiment, force)
    dist.barrier()
    _execute(experiment, run_dir, registry, options, dist)


def _execute(experiment, run_dir: Path, registry, options, dist) -> None:
    from testbed import runner

    try:
        outcome = runner.execute(experiment, run_dir, registry, options, dist)
        _finish(outcome, run_dir, options.json, dist.rank)
    except KeyboardInterrupt:  # outside training (which stops at a safe point itself): at once
        raise RunInterrupted(run_dir) from None


def _finish(outcome, run_dir: Path, as_json: bool, rank: int = 0):
    from testbed.distributed import leave_process_group

    leave_process_group()  # every rank waits for rank 0's summary
    if rank != 0:
        sys.exit(outcome.exit_code)
    from testbed.report import render, table_console

    if as_json:
        emit_json(outcome.doc)
    else:
        render(outcome.doc, table_console())
        click.echo(f"run directory: {run_dir}  (plots in {run_dir / 'plots'})")
    if outcome.interrupted:
        click.echo(f"interrupted: checkpoint written. Continue with: testbed resume {run_dir}", err=True)
    sys.exit(outcome.exit_code)


@main.command(epilog=EPILOG)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--seeds", type=int, metavar="N", help="Give every variant at least N seeds: the ones it has are kept, not retrained.")
@track_option
@executor_options
@statistics_options
@rounds_options
@guarded
def resume(
    run_dir, device, as_json, quiet, seeds, track, executor, workers, scheduler, threads, confidence, correction, until_resolved, max_seeds
):
    """Continue an interrupted run: unfinished jobs restart from their last checkpoint,
    finished ones are skipped. It may run where the first run did not (--workers, --scheduler).
    A finished run grows: --seeds N adds seeds, --until-resolved adds them where verdicts are open."""
    from testbed import rounds, runner
    from testbed.results import Store

    stats = _statistics(confidence, correction)
    store = Store.open_run(run_dir)
    experiment = store.experiment()
    store.close()
    if seeds is not None:
        experiment = rounds.add_seeds(experiment, seeds)
    experiment = _planned(experiment, until_resolved, max_seeds)  # stored once the run directory is locked
    registry = _registry()
    experiment = _with_trackers(experiment, track, registry)
    options = runner.RunOptions(device, as_json, quiet, executor_spec(executor, workers, scheduler, threads), stats)
    dist = runner.distributed_from_env(experiment, registry)
    runner.check_executor(options.executor, registry, dist)
    device_obj = runner.resolve_device(device, dist)
    runner.validate(experiment, registry, dist, device_obj)
    runner.init_process_group(experiment, registry, dist, device_obj)
    _execute(experiment, run_dir, registry, options, dist)


@main.command(epilog=EPILOG)
@click.argument("file", type=click.Path(path_type=str))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a baseline key.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@guarded
def show(file, sets, as_json):
    """The resolved variants of FILE: components, parameter counts, layer shapes, tower devices. No training."""
    from testbed.describe import describe_experiment, render_description

    experiment, registry = _load(file, sets)
    doc = describe_experiment(experiment, registry)
    if as_json:
        emit_json(doc)
    else:
        render_description(doc, Console())
    for warning in doc["warnings"]:
        click.echo(f"warning: {warning}", err=True)


@main.command(epilog=EPILOG)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--vs", "other", type=click.Path(path_type=Path), help="A second run to compare variant by variant.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option(
    "--plots",
    is_flag=True,
    help="Draw the run's plots again (from its store and checkpoints), with Figure 4's fc7 nearest neighbours per variant.",
)
@click.option(
    "--neighbours",
    "neighbours_of",
    multiple=True,
    metavar="NAME",
    help="With --plots: draw the fc7 neighbours of these variants only (repeatable; default every variant).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="Also write the report as one self-contained HTML page (pictures inline, no network), e.g. report.html.",
)
@statistics_options
@guarded
def report(run_dir, other, as_json, plots, neighbours_of, html_file, confidence, correction):
    """The results table of a run again, from its store (optionally beside a second run)."""
    stats = _statistics(confidence, correction)
    if plots:
        from testbed.plots import redraw_plots

        for path in redraw_plots(run_dir, _registry(), err_console(), list(neighbours_of) or None):
            click.echo(f"drew {path}", err=True)
    from testbed.report import render, render_comparison, table_console
    from testbed.results import Store, compare_runs, summarize

    if other is not None:
        comparison = compare_runs(run_dir, other, **stats)
        if as_json:
            emit_json(comparison)
        else:
            render_comparison(comparison, table_console())
        return
    store = Store.open_run(run_dir)
    try:
        doc, epochs = summarize(store, run_dir, **stats), store.epochs()
        description = store.experiment().description
    finally:
        store.close()
    if html_file is not None:
        from testbed.html import write_html

        click.echo(f"wrote {write_html(doc, run_dir, epochs, html_file, description)}", err=True)
    if as_json:
        emit_json(doc)
    else:
        render(doc, table_console())
        from testbed.describe import render_saturation

        render_saturation(epochs, table_console())


@main.command(epilog=EPILOG)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, metavar="NAME", help="The tracker to write to: tensorboard, mlflow, or a plugin's.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A parameter of the tracker, e.g. --param tracking_uri=sqlite:///mlflow.db (repeatable).",
)
@guarded
def export(run_dir, to, params):
    """Write a run from its store into a tracker (TensorBoard, MLflow, ...), as if it had followed
    the run. The store stays the source of truth; export again at will."""
    from testbed.experiment import parse_set
    from testbed.results import Store
    from testbed.tracking import create_trackers, replay

    registry = _registry()
    spec = {"name": to, **parse_set(list(params))}
    store = Store.open_run(run_dir)
    try:
        failures: list[str] = []
        trackers = create_trackers([spec], registry, failures.append, where="--to")
        count = replay(store, run_dir, trackers, list(sys.argv))
    finally:
        store.close()
    if failures:
        raise PluginFailure(failures[0])
    click.echo(f"exported {count} job(s) of {run_dir} to {to}", err=True)


@main.command(name="plugins", epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@guarded
def plugins_command(as_json):
    """Every registered component by kind, with the plugin that registered it and its parameters."""
    from testbed.registry import KINDS

    registry = plugins.registry()  # load errors: on stderr with --json, in red under the tables otherwise
    doc = {kind: [registry.components[kind][n].as_dict() for n in registry.names(kind)] for kind in KINDS}
    if as_json:
        plugins.warn_load_errors()
        emit_json(doc)
        return
    from testbed.report import table_console

    console = table_console()
    for kind in KINDS:
        table = Table(title=kind, title_justify="left", show_header=True, expand=False)
        table.add_column("name", no_wrap=True)
        table.add_column("parameters (defaults)")
        table.add_column("plugin", no_wrap=True)
        table.add_column("what it is")
        for entry in doc[kind]:
            params = ", ".join(f"{p['name']}={p['default']!r}" for p in entry["params"]) or "-"
            # plugins' text is text, not Rich markup: "[train]" must stay "[train]"
            table.add_row(*(escape(text) for text in (entry["name"], params, entry["plugin"], entry["help"])))
        console.print(table)
    st = plugins.state()
    for line in st.load_errors:
        console.print(f"[red]{escape(line)}[/red]")
    for line in st.notices:
        console.print(f"[yellow]{escape(line)}[/yellow]")


@main.command(epilog=EPILOG)
@click.argument("file", type=click.Path(path_type=str))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a baseline key.")
@click.option("--only", multiple=True, metavar="NAME", help="Benchmark only these variants (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--steps", default=20, show_default=True, help="Timed training steps per variant.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@guarded
def bench(file, sets, only, device, steps, as_json):
    """Throughput of each variant's training step and of its data pipeline, FLOPs per image,
    and utilisation against this machine's measured peak (the best of a large matmul and a large
    3x3 convolution, same threads)."""
    from testbed import runner
    from testbed.bench import bench_experiment, render_bench
    from testbed.distributed import Dist

    experiment, registry = _load(file, sets)
    experiment = runner.select(experiment, list(only), None)
    from testbed.data import load_dataset

    runner.validate(experiment, registry)
    data = {v.name: load_dataset(v.config["data"], registry) for v in experiment.variants}  # cached by validate
    doc = bench_experiment(experiment, registry, data, runner.resolve_device(device, Dist()), steps, err_console())
    if as_json:
        emit_json(doc)
    else:
        render_bench(doc, Console())


if __name__ == "__main__":
    main()
