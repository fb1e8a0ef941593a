"""The results store (SQLite in the run directory) and what is read back from it: the summary
document (`--json`) and the side-by-side table."""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import time
from pathlib import Path

from testbed import __version__, analyses, verdicts
from testbed.errors import BadInput
from testbed.experiment import Experiment
from testbed.rundir import EXPERIMENT_NAME, STORE_NAME
from testbed.verdicts import Arm

METRICS = ("top1_error", "top5_error", "train_error", "train_loss", "epochs_to_target", "time_to_target_s", "train_images_per_s")
FINISHED = ("ok", "diverged")  # resume skips these; failed and interrupted jobs run again

# The store's schema version (docs/store.md). 1: the stores written before it had one (no
# `meta` table); 2: the `meta` table. A testbed refuses a store of a newer version than its own.
STORE_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,            -- schema_version; testbed: the version that last opened it
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    variant TEXT NOT NULL, seed INTEGER NOT NULL, position INTEGER NOT NULL,
    status TEXT NOT NULL,            -- pending, running, ok, diverged, failed, refused, interrupted
    message TEXT, plugin TEXT, epoch INTEGER, step INTEGER,
    metrics TEXT, components TEXT, environment TEXT,
    started REAL, finished REAL,
    PRIMARY KEY (variant, seed)
);
CREATE TABLE IF NOT EXISTS epochs (
    variant TEXT NOT NULL, seed INTEGER NOT NULL, epoch INTEGER NOT NULL,
    train_loss REAL, train_error REAL, test_top1 REAL, test_top5 REAL, lr REAL,
    train_s REAL, eval_s REAL, images_per_s REAL, extra TEXT,
    PRIMARY KEY (variant, seed, epoch)
);
"""
EPOCH_COLUMNS = ("train_loss", "train_error", "test_top1", "test_top5", "lr", "train_s", "eval_s", "images_per_s")


class Store:
    """``create``: make the tables (a new run's store); else they must be there. ``readonly``:
    open without the right to write (what only reads: report, plots, the checks before resume)."""

    def __init__(self, path: Path, *, create: bool = True, readonly: bool = False):
        self.path = path
        if readonly:
            self.db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        else:
            self.db = sqlite3.connect(path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.check_version()
        if create:
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('testbed', ?)", (__version__,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(STORE_VERSION),))
            self.db.execute(f"PRAGMA user_version = {STORE_VERSION}")
            self.db.commit()

    def check_version(self) -> None:
        """Refuse a store that a newer testbed wrote: its tables may mean what this one cannot read."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone():
            return  # version 1 (or a new file): this testbed's tables are a superset
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        try:
            version = int(rows.get("schema_version", 1))
        except ValueError:
            version = STORE_VERSION + 1  # not a number this testbed wrote
        if version > STORE_VERSION:
            self.db.close()
            raise BadInput(
                f"{self.path}: store schema version {rows.get('schema_version')} (written by testbed {rows.get('testbed', '?')}); "
                f"this testbed ({__version__}) reads versions up to {STORE_VERSION}: upgrade testbed to read it",
                file=str(self.path),
            )

    def schema_version(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    @classmethod
    def open_run(cls, run_dir: Path) -> Store:
        """A run's store, read-only, checked whole (every table and column, every page) before
        anything is read from it; a damaged one is bad input naming the file."""
        run_dir = Path(run_dir)
        path = run_dir / STORE_NAME
        if not run_dir.is_dir():
            raise BadInput(f"{run_dir}: no such run directory", file=str(run_dir))
        if not path.is_file() or not (run_dir / EXPERIMENT_NAME).is_file():
            raise BadInput(
                f"{run_dir}: not a testbed run (no {STORE_NAME} and {EXPERIMENT_NAME}); give a folder that `testbed run` wrote",
                file=str(run_dir),
            )
        store = None
        try:
            store = cls(path, create=False, readonly=True)
            store.check()
            store.experiment()
        except BadInput:
            raise
        except (sqlite3.DatabaseError, ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON of the wrong shape too
            if store is not None:
                store.close()
            raise BadInput(f"{path}: damaged results store ({exc})", file=str(path)) from None
        return store

    def check(self) -> None:
        """sqlite3.DatabaseError unless every page reads and both tables have their columns."""
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems)[:200])
        self.db.execute(f"SELECT variant, seed, epoch, {', '.join(EPOCH_COLUMNS)}, extra FROM epochs LIMIT 0")
        self.db.execute(
            "SELECT variant, seed, position, status, message, plugin, epoch, step, metrics, components, "
            "environment, started, finished FROM jobs LIMIT 0"
        )

    def close(self):
        self.db.close()

    # -- writing ------------------------------------------------------------------------

    def experiment(self) -> Experiment:
        doc = json.loads((self.path.parent / EXPERIMENT_NAME).read_text())
        return Experiment.from_json(doc)

    def add_job(self, variant: str, seed: int, position: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO jobs (variant, seed, position, status) VALUES (?, ?, ?, 'pending')", (variant, seed, position)
        )
        self.db.commit()

    def job_status(self, variant: str, seed: int) -> str | None:
        row = self.db.execute("SELECT status FROM jobs WHERE variant = ? AND seed = ?", (variant, seed)).fetchone()
        return row["status"] if row else None

    def start_job(self, variant: str, seed: int, components: dict, environment: dict) -> None:
        self.db.execute(
            "UPDATE jobs SET status='running', message=NULL, plugin=NULL, components=?, environment=?, started=? "
            "WHERE variant=? AND seed=?",
            (json.dumps(components), json.dumps(environment), time.time(), variant, seed),
        )
        self.db.commit()

    def finish_job(
        self,
        variant: str,
        seed: int,
        status: str,
        metrics: dict | None = None,
        message: str | None = None,
        plugin: str | None = None,
        epoch: int | None = None,
        step: int | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE jobs SET status=?, metrics=?, message=?, plugin=?, epoch=?, step=?, finished=? WHERE variant=? AND seed=?",
            (status, json.dumps(metrics) if metrics is not None else None, message, plugin, epoch, step, time.time(), variant, seed),
        )
        self.db.commit()

    def record_epoch(self, variant: str, seed: int, record: dict) -> None:
        extra = {k: v for k, v in record.items() if k not in EPOCH_COLUMNS and k != "epoch"}
        self.db.execute(
            f"INSERT OR REPLACE INTO epochs VALUES (?, ?, ?, {', '.join('?' * len(EPOCH_COLUMNS))}, ?)",
            (variant, seed, record["epoch"], *(record.get(c) for c in EPOCH_COLUMNS), json.dumps(extra)),
        )
        self.db.commit()

    def sync_history(self, variant: str, seed: int, history: list[dict]) -> None:
        """Make the per-epoch rows match a checkpoint's history (after a crash between the two)."""
        last = history[-1]["epoch"] if history else 0
        self.db.execute("DELETE FROM epochs WHERE variant=? AND seed=? AND epoch>?", (variant, seed, last))
        for record in history:
            self.record_epoch(variant, seed, record)

    # -- reading ------------------------------------------------------------------------

    def jobs(self) -> list[dict]:
        rows = self.db.execute("SELECT * FROM jobs ORDER BY position, seed").fetchall()
        out = []
        for row in rows:
            job = dict(row)
            for key in ("metrics", "components", "environment"):
                job[key] = json.loads(job[key]) if job[key] else None
            out.append(job)
        return out

    def epochs(self, variant: str | None = None) -> list[dict]:
        query, args = "SELECT * FROM epochs", ()
        if variant is not None:
            query, args = query + " WHERE variant = ?", (variant,)
        out = []
        for row in self.db.execute(query + " ORDER BY variant, seed, epoch", args).fetchall():
            record = dict(row)
            record.update(json.loads(record.pop("extra") or "{}"))
            out.append(record)
        return out


# ---------------------------------------------------------------------------- summary


def spread(values: list) -> dict:
    """Mean and sample standard deviation of the seeds' values; ``missing`` counts seeds without a
    value (a target never reached)."""
    present = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "values": present,
        "missing": len(values) - len(present),
    }


COMPARED = ("top1_error", "top5_error", "train_error", "epochs_to_target")  # each with a verdict
PAPER_METRICS = {"top1": "top1_error", "top5": "top5_error"}  # the paper's deltas, in points


def arm(jobs: list[dict], metric: str) -> Arm:
    """A metric's values by seed over finished jobs. Where a seed never reached the target, its
    epochs to the target enter as a lower bound: the epochs it ran + 1."""
    values, censored = {}, set()
    for job in jobs:
        metrics = job["metrics"] or {}
        value = metrics.get(metric)
        if value is None and metric == "epochs_to_target" and metrics.get("epochs") is not None:
            value = metrics["epochs"] + 1
            censored.add(job["seed"])
        if value is not None:
            values[job["seed"]] = float(value)
    return Arm(values, frozenset(censored))


def seed_policies(jobs: list[dict]) -> dict:
    """Finished seed -> the job's record of which sources of variation its seed changes (None: not recorded)."""
    return {j["seed"]: j.get("seed_varies", (j.get("environment") or {}).get("seed_varies")) for j in jobs}


def judge_table(rows: list[tuple], settings: verdicts.Settings, shared_control: bool) -> tuple[dict, dict]:
    """rows: (name, config, finished jobs, reference config, reference's finished jobs), one per
    comparison of a table. Returns name -> {metric: judged delta} and name -> pairing."""
    pairing = {}
    for name, config, jobs, ref_config, ref_jobs in rows:
        seeds, why = verdicts.pair_seeds(ref_config, config, seed_policies(ref_jobs), seed_policies(jobs))
        pairing[name] = {"design": "paired" if seeds else "unpaired", "seeds": seeds, "why": why}
    deltas: dict[str, dict] = {row[0]: {} for row in rows}
    for metric in COMPARED:
        comparisons = {name: (arm(jobs, metric), arm(ref_jobs, metric), pairing[name]["seeds"]) for name, _, jobs, _, ref_jobs in rows}
        control = arm(rows[0][4], metric) if shared_control and rows else None
        for name, result in verdicts.judge(comparisons, settings, control).items():
            deltas[name][metric] = result
    return deltas, pairing


def statistics_block(settings: verdicts.Settings, family: int, shared_control: bool) -> dict:
    """How the table's deltas were judged, for --json and the footnote."""
    correction = settings.correction if shared_control or settings.correction != "dunnett" else "holm"
    used = verdicts.Settings(settings.confidence, correction, settings.looks)
    return {
        **used.as_json(),
        "family_size": family,
        "planning_alpha": verdicts.planning_alpha(used, family),
        "lower_is_better": True,
        "intervals_adjusted": correction == "dunnett",
    }


def _variant_entry(v, runs: list[dict]) -> dict:
    ok = [j for j in runs if j["status"] == "ok"]
    statuses = sorted({j["status"] for j in runs})
    status = statuses[0] if len(statuses) == 1 else "mixed: " + ", ".join(f"{sum(j['status'] == s for j in runs)} {s}" for s in statuses)
    problems = [
        {"seed": j["seed"], "status": j["status"], "message": j["message"], "plugin": j["plugin"], "epoch": j["epoch"], "step": j["step"]}
        for j in runs
        if j["status"] != "ok"
    ]
    return {
        "name": v.name,
        "status": status,
        "changes": v.changes,
        "components": next((j["components"] for j in runs if j["components"]), None),
        "seeds": [j["seed"] for j in runs],
        "seed_varies": recorded_seed_policy(v, ok),
        "parameters": next((j["metrics"]["parameters"] for j in ok), None),
        "metrics": {m: spread([j["metrics"][m] for j in ok]) for m in METRICS},
        "delta_vs_baseline": {},
        "paper": v.paper,
        "problems": problems,
        "environment": next((j["environment"] for j in runs if j["environment"]), None),
    }


def recorded_seed_policy(v, ok: list[dict]) -> list[str]:
    """What the seed varied, as the finished jobs recorded it (the experiment's setting where a
    job predates the record)."""
    recorded = {tuple(p) for p in seed_policies(ok).values() if p is not None}
    return list(next(iter(recorded))) if len(recorded) == 1 else list(v.config["train"].get("seed_varies", []))


def finished_jobs(store: Store) -> tuple[Experiment, list[dict], dict]:
    """The experiment, all its jobs, and variant name -> its finished (ok) jobs."""
    jobs = store.jobs()
    finished: dict[str, list[dict]] = {}
    for job in jobs:
        finished.setdefault(job["variant"], [])
        if job["status"] == "ok":
            finished[job["variant"]].append(job)
    return store.experiment(), jobs, finished


def summarize(store: Store, run_dir: Path, confidence=None, correction=None, looks=None) -> dict:
    """The document `testbed run --json` and `testbed report --json` print. The level, correction
    and looks: the arguments where given, else the experiment's [report] settings, else the defaults."""
    experiment, jobs, finished = finished_jobs(store)
    settings = verdicts.settings(experiment.report, confidence, correction, looks)
    present = [v for v in experiment.variants if v.name in finished]
    variants = [_variant_entry(v, [j for j in jobs if j["variant"] == v.name]) for v in present]
    doc = {"experiment": experiment.name, "run_dir": str(run_dir), "status": None, "variants": variants}
    if present and present[0].name == "baseline" and len(present) > 1:
        base = present[0]
        rows = [(v.name, v.config, finished[v.name], base.config, finished["baseline"]) for v in present[1:]]
        deltas, pairing = judge_table(rows, settings, shared_control=True)
        doc["statistics"] = statistics_block(settings, len(rows), shared_control=True)
        for entry in variants[1:]:
            entry["delta_vs_baseline"], entry["pairing"] = deltas[entry["name"]], pairing[entry["name"]]
            add_paper_checks(entry, doc["statistics"]["planning_alpha"])
    analyses.annotate(doc, store, run_dir, experiment, finished)
    statuses = {j["status"] for j in jobs}
    doc["status"] = "ok" if statuses == {"ok"} else ("incomplete" if statuses & {"pending", "running", "interrupted"} else "failed")
    if experiment.compare:
        doc["compare"] = speedups(experiment, jobs)
    return doc


def add_paper_checks(entry: dict, planning_alpha: float) -> None:
    """Where the variant carries the paper's delta for a metric: does the measurement agree, and how
    many seeds would detect the paper's delta."""
    for key, metric in PAPER_METRICS.items():
        if key in entry["paper"] and metric in entry["delta_vs_baseline"]:
            entry["delta_vs_baseline"][metric].update(
                verdicts.paper_check(entry["delta_vs_baseline"][metric], entry["paper"][key], planning_alpha)
            )


def compare_runs(run_a: Path, run_b: Path, confidence=None, correction=None) -> dict:
    """`testbed report A --vs B`: each variant of B against the same variant of A, with the same
    statistics (paired where the two runs' jobs pair, else Welch) and Holm across the variants.
    The level and correction default to run A's settings."""
    loaded = []
    for run_dir in (run_a, run_b):
        store = Store.open_run(run_dir)
        try:
            loaded.append((summarize(store, run_dir, confidence, correction), *finished_jobs(store)))
        finally:
            store.close()
    (doc_a, exp_a, _, fin_a), (doc_b, exp_b, _, fin_b) = loaded
    settings = verdicts.settings(exp_a.report, confidence, correction)
    configs_b = {v.name: v.config for v in exp_b.variants}
    both = [v for v in exp_a.variants if v.name in fin_a and v.name in fin_b and v.name in configs_b]
    rows = [(v.name, configs_b[v.name], fin_b[v.name], v.config, fin_a[v.name]) for v in both]
    deltas, pairing = judge_table(rows, settings, shared_control=False) if rows else ({}, {})
    by_name_b = {v["name"]: v for v in doc_b["variants"]}
    out = []
    for va in doc_a["variants"]:
        vb = by_name_b.get(va["name"])
        out.append(
            {
                "name": va["name"],
                "a": va["metrics"],
                "b": vb["metrics"] if vb else None,
                "difference": deltas.get(va["name"], {}),
                "pairing": pairing.get(va["name"]),
            }
        )
    out += [
        {"name": n, "a": None, "b": vb["metrics"], "difference": {}, "pairing": None}
        for n, vb in by_name_b.items()
        if n not in {v["name"] for v in doc_a["variants"]}
    ]
    return {"a": doc_a, "b": doc_b, "statistics": statistics_block(settings, len(rows), shared_control=False), "variants": out}


def compared_value(config: dict, key: str):
    section, slot = key.split(".", 1)
    value = config[section][slot]
    return value["name"] if isinstance(value, dict) and "name" in value else value


def _time_to_target(name: str, runs: list[dict]) -> dict:
    """Epochs and seconds to the target over the finished seeds; a seed that never got there counts
    as at least one epoch more than it ran and at least all of its training time (lower bounds)."""
    out = {"variant": name, "seeds": len(runs), "reached": 0, "epochs": [], "seconds": [], "epochs_bound": [], "seconds_bound": []}
    for m in runs:
        if m["epochs_to_target"] is not None:
            out["reached"] += 1
            out["epochs"].append(m["epochs_to_target"])
            out["seconds"].append(m["time_to_target_s"])
            out["epochs_bound"].append(m["epochs_to_target"])
            out["seconds_bound"].append(m["time_to_target_s"])
        else:
            out["epochs_bound"].append(m["epochs"] + 1)
            out["seconds_bound"].append(m["train_time_s"])
    return out


def _factor(other: dict, reference: dict, measure: str) -> dict:
    """other / reference. A side that never reached the target enters with its lower bound, which
    makes the factor a lower bound (other missed) or an upper bound (reference missed)."""

    def mean(xs):
        return sum(xs) / len(xs)

    if not other["seeds"] or not reference["seeds"]:
        return {"value": None, "bound": None, "text": "n/a (no finished run)"}
    other_done = other["reached"] == other["seeds"]
    reference_done = reference["reached"] == reference["seeds"]
    if not other_done and not reference_done:
        return {"value": None, "bound": None, "text": "n/a (neither reached the target)"}
    value = mean(other[f"{measure}_bound"]) / mean(reference[f"{measure}_bound"])
    if other_done and reference_done:
        return {"value": value, "bound": None, "text": f"{value:.1f}x"}
    # a bound is rounded away from what was not measured: down for a lower bound, up for an upper
    if not other_done:
        return {"value": value, "bound": "lower", "text": f">= {math.floor(value * 10) / 10:.1f}x"}
    return {"value": value, "bound": "upper", "text": f"<= {math.ceil(value * 10) / 10:.1f}x"}


def speedups(experiment: Experiment, jobs: list[dict]) -> dict:
    """Within each setting, epochs and seconds to the target of every compared value, and the
    factor against the reference (the paper's Figure 1: ReLU vs tanh to 25% training error)."""
    spec = experiment.compare
    finished: dict[str, list[dict]] = {}
    for job in jobs:
        if job["status"] == "ok":
            finished.setdefault(job["variant"], []).append(job["metrics"])
    groups: dict[str, dict[str, dict]] = {}
    for v in experiment.variants:
        if any(j["variant"] == v.name for j in jobs):
            value = str(compared_value(v.config, spec["key"]))
            groups.setdefault(v.setting, {})[value] = _time_to_target(v.name, finished.get(v.name, []))
    rows = []
    missing = {"value": None, "bound": None, "text": "n/a (no reference run)"}
    for setting, by_value in groups.items():
        reference = by_value.get(spec["reference"])
        for value, measured in by_value.items():
            if value != spec["reference"]:
                rows.append(
                    {
                        "setting": setting,
                        "reference": spec["reference"],
                        "compared": value,
                        "measured": {spec["reference"]: reference, value: measured},
                        "factor_epochs": _factor(measured, reference, "epochs") if reference else missing,
                        "factor_seconds": _factor(measured, reference, "seconds") if reference else missing,
                    }
                )
    return {"key": spec["key"], "reference": spec["reference"], "paper_factor": spec.get("paper_factor"), "rows": rows}
