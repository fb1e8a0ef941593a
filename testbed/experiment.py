"""Experiment files: TOML -> a validated, frozen experiment (a baseline and its variants).

Every key, type, range and component name is checked before any work starts. A bad value
raises BadInput naming the file, the dotted key, the value and the valid choices.
The defaults are the paper's choices, so an empty file describes the paper's AlexNet.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import BadInput, did_you_mean
from testbed.registry import Registry
from testbed.schema import (  # noqa: F401  (SCHEMA and MAX_INT: part of this module's interface)
    COMPARE_KEYS,
    MAX_INT,
    PAPER_KEYS,
    REPORT_KEYS,
    SCHEMA,
    TOP_LEVEL,
    VARIANT_KEYS,
    fill_added_keys,
    leaves,
    resolve_config,
    resolve_track,
    set_dotted,
)
from testbed.schema import short as _short

VARIANT_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
MAX_NAME = 100  # names become folder and file names (run dir, checkpoints/<variant>/, plots)


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(VARIANT_NAME.match(name)) and name not in (".", "..")


REPORT_DEFAULTS = {"confidence": 0.95, "correction": "holm"}  # the verdicts' level and multiplicity correction


@dataclass(frozen=True)
class Variant:
    name: str
    config: dict  # fully resolved: every section and key, components as {"name", **params}
    changes: dict  # dotted key -> value, what differs from the file's baseline
    paper: dict
    description: str = ""
    setting: str = ""  # which group of a [compare] table this variant belongs to


@dataclass(frozen=True)
class Experiment:
    name: str
    path: str
    variants: tuple[Variant, ...]  # the baseline first
    description: str = ""
    overrides: dict = field(default_factory=dict)
    compare: dict = field(default_factory=dict)  # {key, reference, paper_factor}: speed-ups within each setting
    report: dict = field(default_factory=lambda: dict(REPORT_DEFAULTS))  # {confidence, correction}: how deltas are judged
    track: tuple = ()  # [track] use: the run's trackers as resolved component specs

    @property
    def baseline(self) -> Variant:
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise BadInput(
            f"--only {name}: no such variant{did_you_mean(name, [v.name for v in self.variants])}; "
            f"variants: {', '.join(v.name for v in self.variants)}"
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "description": self.description,
            "overrides": self.overrides,
            "compare": self.compare,
            "report": self.report,
            "track": list(self.track),
            "variants": [
                {
                    "name": v.name,
                    "description": v.description,
                    "setting": v.setting,
                    "config": v.config,
                    "changes": v.changes,
                    "paper": v.paper,
                }
                for v in self.variants
            ],
        }

    @classmethod
    def from_json(cls, doc: dict) -> Experiment:
        variants = tuple(
            Variant(v["name"], fill_added_keys(v["config"]), v["changes"], v["paper"], v.get("description", ""), v.get("setting", ""))
            for v in doc["variants"]
        )
        report = {**REPORT_DEFAULTS, **doc.get("report", {})}  # runs stored before [report] existed judge by the defaults
        return cls(
            doc["name"],
            doc["path"],
            variants,
            doc.get("description", ""),
            doc.get("overrides", {}),
            doc.get("compare", {}),
            report,
            tuple(doc.get("track", ())),
        )


def read_toml(path: Path) -> dict:
    if not path.exists():
        raise BadInput(f"{path}: no such experiment file (shipped ones are in experiments/)")
    if path.is_dir():
        raise BadInput(f"{path}: is a folder; give an experiment .toml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text; an experiment file is TOML") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: malformed TOML: {exc}") from None
    except ValueError as exc:  # an integer literal beyond Python's digit limit
        raise BadInput(f"{path}: a value too large to read ({str(exc).split(';')[0]})") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply to be an experiment file") from None


def parse_set(items: list[str]) -> dict:
    """--set dotted.key=value pairs; values parse as TOML (1, 0.5, true, [..]) or else as strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise BadInput(f"--set {item}: expected dotted.key=value (e.g. --set train.epochs=2)")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except (ValueError, RecursionError):  # not TOML (TOMLDecodeError is a ValueError): a bare string
            value = raw
        out[key] = value
    return out


def load_experiment(path: str | Path, registry: Registry, overrides: dict | None = None) -> Experiment:
    path = Path(path)
    try:
        raw = read_toml(path)
        return build_experiment(raw, registry, str(path), overrides or {})
    except BadInput as exc:
        message = str(exc) if str(exc).startswith(f"{path}: ") else f"{path}: {exc}"
        raise BadInput(message, file=str(path)) from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply to be an experiment file", file=str(path)) from None


def build_experiment(raw: dict, registry: Registry, path: str = "experiment.toml", overrides: dict | None = None) -> Experiment:
    """A validated experiment from a parsed TOML document (``overrides``: ``--set`` pairs, applied to the baseline)."""
    overrides = overrides or {}
    for key in raw:
        if key not in TOP_LEVEL:
            raise BadInput(f"{key}: unknown top-level key{did_you_mean(key, TOP_LEVEL)}; valid: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", Path(path).stem)
    if not _valid_name(name):
        raise BadInput(f"name = {_short(name)}: use letters, digits, '-', '_' and '.' (no leading dot, at most {MAX_NAME})")
    _check_description(raw, "")
    compare = _check_compare(raw.get("compare", {}))
    report = _check_report(raw.get("report", {}))
    track = tuple(resolve_track(raw.get("track", {}), registry))
    base_raw = {section: copy.deepcopy(raw.get(section, {})) for section in SCHEMA}
    for section in SCHEMA:
        if not isinstance(base_raw[section], dict):
            raise BadInput(f"{section} = {base_raw[section]!r}: expected a table [{section}]")
    for dotted, value in overrides.items():
        set_dotted(base_raw, dotted, value, "--set ")
    baseline = Variant("baseline", resolve_config(base_raw, registry, ""), {}, {}, raw.get("description", ""), raw.get("setting", ""))
    variant_tables = raw.get("variant", [])
    if not isinstance(variant_tables, list):
        raise BadInput("variant: use [[variant]] tables (an array of tables)")
    variants = [baseline]
    for i, table in enumerate(variant_tables):
        variants.append(_variant(table, i, {v.name for v in variants}, base_raw, registry))
    return Experiment(name, path, tuple(variants), raw.get("description", ""), overrides, compare, report, track=track)


def _variant(table: Any, index: int, taken: set[str], base_raw: dict, registry: Registry) -> Variant:
    """One [[variant]] table: the baseline's raw config with the table's overrides, resolved."""
    where = f"variant[{index}]"
    if not isinstance(table, dict):
        raise BadInput(f"{where}: expected a [[variant]] table")
    vname = table.get("name")
    if not _valid_name(vname):
        given = f"{where}.name: missing" if vname is None else f"{where}.name = {_short(vname)}"
        raise BadInput(f"{given}: a variant needs a name of letters, digits, '-', '_', '.' (no leading dot, at most {MAX_NAME})")
    if vname in taken:
        raise BadInput(f"{where}.name = {vname!r}: duplicate variant name (names must be unique; 'baseline' is taken)")
    where = f"variant '{vname}'"
    for key in table:
        if key not in VARIANT_KEYS:
            raise BadInput(f"{where}: {key}: unknown key{did_you_mean(key, VARIANT_KEYS)}; valid: {', '.join(VARIANT_KEYS)}")
    _check_description(table, f"{where}: ")
    paper = _check_paper(table.get("paper", {}), where)
    merged = copy.deepcopy(base_raw)
    changes = {}
    for section in SCHEMA:
        section_over = table.get(section, {})
        if not isinstance(section_over, dict):
            raise BadInput(f"{where}: {section} = {section_over!r}: expected a table of overrides")
        for dotted, value in leaves(section_over, section):
            set_dotted(merged, dotted, value, f"{where}: ")
            changes[dotted] = value
    config = resolve_config(merged, registry, f"{where}: ")
    return Variant(vname, config, changes, paper, table.get("description", ""), table.get("setting", ""))


def _check_paper(paper: Any, where: str) -> dict:
    """A variant's `paper` table: the paper's deltas (numbers, points) and claims (text)."""
    if not isinstance(paper, dict):
        raise BadInput(f"{where}: paper = {paper!r}: expected a table like {{ top1 = 1.4, top5 = 1.2 }}")
    for key, value in paper.items():
        if key not in PAPER_KEYS:
            raise BadInput(f"{where}: paper.{key}: unknown key{did_you_mean(key, PAPER_KEYS)}; valid: {', '.join(PAPER_KEYS)}")
        want = str if key == "claim" else (int, float)
        if isinstance(value, bool) or not isinstance(value, want):
            raise BadInput(f"{where}: paper.{key} = {value!r}: expected {'text' if want is str else 'a number'}")
    return paper


def _check_description(table: dict, where: str) -> None:
    for key in ("description", "setting"):
        if not isinstance(table.get(key, ""), str):
            raise BadInput(f"{where}{key} = {_short(table[key])}: expected a string")


def _check_report(table) -> dict:
    """[report]: how the table's deltas are judged (the command line's --confidence/--correction win)."""
    if not isinstance(table, dict):
        raise BadInput(f'report = {_short(table)}: expected a table like {{ confidence = 0.95, correction = "holm" }}')
    for key in table:
        if key not in REPORT_KEYS:
            raise BadInput(f"report.{key}: unknown key{did_you_mean(key, REPORT_KEYS)}; valid: {', '.join(REPORT_KEYS)}")
    out = dict(REPORT_DEFAULTS)
    if not table:
        return out
    from testbed.verdicts import check_confidence, check_correction  # scipy: only when asked

    if "confidence" in table:
        out["confidence"] = check_confidence(table["confidence"], "report.confidence =")
    if "correction" in table:
        out["correction"] = check_correction(table["correction"], "report.correction =")
    return out


def _check_compare(table) -> dict:
    """[compare]: which switch to compare within each setting (default the activation), the
    reference value (the factor is other / reference epochs to the target), the paper's factor."""
    if not isinstance(table, dict):
        raise BadInput(f'compare = {_short(table)}: expected a table like {{ key = "model.activation", reference = "relu" }}')
    for key in table:
        if key not in COMPARE_KEYS:
            raise BadInput(f"compare.{key}: unknown key{did_you_mean(key, COMPARE_KEYS)}; valid: {', '.join(COMPARE_KEYS)}")
    if not table:
        return {}
    key = table.get("key", "model.activation")
    section, _, slot = str(key).partition(".")
    if section not in SCHEMA or slot not in SCHEMA[section]:
        raise BadInput(f"compare.key = {_short(key)}: not a key of the experiment (e.g. model.activation)")
    if not isinstance(table.get("reference"), str):
        raise BadInput(f'compare.reference = {_short(table.get("reference"))}: name the reference value, e.g. "relu"')
    factor = table.get("paper_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
        raise BadInput(f"compare.paper_factor = {_short(factor)}: expected a number")
    return {"key": key, "reference": table["reference"], "paper_factor": factor}
