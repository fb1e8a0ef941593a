"""Experiment files: TOML -> a validated, frozen experiment (a baseline and its variants).

Every key, type, range and component name is checked before any work starts. A bad value
raises BadInput naming the file, the dotted key, the value and the valid choices.
The defaults are the paper's choices, so an empty file describes the paper's AlexNet.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import BadInput, choices_text, did_you_mean
from testbed.model import SKIPPABLE
from testbed.registry import Registry, component_spec

MAX_INT = 10**9
VARIANT_NAME = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
MAX_NAME = 100  # names become folder and file names (run dir, checkpoints/<variant>/, plots)


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and bool(VARIANT_NAME.match(name)) and name not in (".", "..")


@dataclass(frozen=True)
class Key:
    """One leaf of the schema: how to check a value and what it defaults to."""

    default: Any
    kind: str  # "int", "float", "bool", "str", "choice", "component", "components", "skip", "seeds"
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    component: str | None = None  # registry kind for component keys
    optional: bool = False  # None allowed
    help: str = ""


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "dataset": Key("synthetic", "component", component="dataset", help="dataset plugin"),
        "root": Key(None, "str", optional=True, help="data folder (default: the plugin's, e.g. $TESTBED_DATA/<name>)"),
        "image_size": Key(None, "int", 8, 4096, optional=True, help="stored image size (default: the dataset's)"),
        "classes": Key(None, "int", 2, 100_000, optional=True, help="class count (default: the dataset's)"),
        "train_size": Key(None, "int", 1, MAX_INT, optional=True, help="seeded class-balanced training subset"),
        "test_size": Key(None, "int", 1, MAX_INT, optional=True, help="seeded class-balanced test subset"),
        "seed": Key(0, "int", 0, 2**31 - 1, help="seed for generated data and subsets (not the training seed)"),
        "preprocess": Key("mean", "component", component="preprocess", help="input preprocessing"),
    },
    "model": {
        "geometry": Key("auto", "choice", choices=("auto", "imagenet", "cifar"), help="auto: cifar for <= 64 px"),
        "width": Key(1.0, "float", 1 / 64, 16, help="multiplier on every conv and FC width"),
        "activation": Key("relu", "component", component="activation"),
        "normalization": Key("lrn", "component", component="normalization"),
        "pooling": Key("overlapping", "component", component="pooling"),
        "dropout": Key(0.5, "float", 0.0, 0.99, help="dropout probability in fc6 and fc7 (0: off)"),
        "init": Key("paper", "component", component="init"),
        "placement": Key("grouped", "component", component="placement"),
        "skip": Key([], "skip", choices=SKIPPABLE, help="conv layers removed (depth ablation)"),
    },
    "augment": {
        "train": Key(["random-crop", "hflip", "pca-lighting"], "components", component="augmentation", help="train augmentations, applied in order"),
        "test": Key("ten-crop", "component", component="augmentation", help="test-time views"),
    },
    "train": {
        "epochs": Key(90, "int", 1, 100_000),
        "batch_size": Key(128, "int", 1, 2**20),
        "optimizer": Key("sgd", "component", component="optimizer"),
        "schedule": Key("plateau", "component", component="schedule"),
        "seeds": Key(1, "seeds", help="a count (seeds 0..N-1) or a list of seeds"),
        "target_train_error": Key(0.25, "float", 0.0, 1.0, help="Figure 1's measure: epochs to this training error"),
        "stop_at_target": Key(False, "bool", help="end a job at the first epoch at or below target_train_error"),
        "precision": Key("fp32", "choice", choices=("fp32", "bf16", "fp16")),
        "compile": Key(False, "bool", help="torch.compile the model"),
        "memory_format": Key("auto", "choice", choices=("auto", "channels-last", "contiguous"),
                             help="auto: channels-last, faster on CPUs and GPUs alike where measured"),
        "eval_batch_size": Key(128, "int", 1, 2**20, help="images per forward pass when evaluating (each test view separately)"),
    },
}
TOP_LEVEL = ("name", "description", "setting", "compare", "data", "model", "augment", "train", "variant")
VARIANT_KEYS = ("name", "description", "setting", "paper", "data", "model", "augment", "train")
COMPARE_KEYS = ("key", "reference", "paper_factor")
PAPER_KEYS = ("top1", "top5", "claim", "factor", "test_error")


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

    @property
    def baseline(self) -> Variant:
        return self.variants[0]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise BadInput(f"--only {name}: no such variant{did_you_mean(name, [v.name for v in self.variants])}; "
                       f"variants: {', '.join(v.name for v in self.variants)}")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "description": self.description,
            "overrides": self.overrides,
            "compare": self.compare,
            "variants": [
                {"name": v.name, "description": v.description, "setting": v.setting, "config": v.config, "changes": v.changes, "paper": v.paper}
                for v in self.variants
            ],
        }

    @classmethod
    def from_json(cls, doc: dict) -> "Experiment":
        variants = tuple(
            Variant(v["name"], v["config"], v["changes"], v["paper"], v.get("description", ""), v.get("setting", "")) for v in doc["variants"]
        )
        return cls(doc["name"], doc["path"], variants, doc.get("description", ""), doc.get("overrides", {}), doc.get("compare", {}))


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
    raw = read_toml(path)
    try:
        return build_experiment(raw, registry, str(path), overrides or {})
    except BadInput as exc:
        raise BadInput(f"{path}: {exc}") from None
    except RecursionError:
        raise BadInput(f"{path}: nested too deeply to be an experiment file") from None


def build_experiment(raw: dict, registry: Registry, path: str = "experiment.toml", overrides: dict | None = None) -> Experiment:
    overrides = overrides or {}
    for key in raw:
        if key not in TOP_LEVEL:
            raise BadInput(f"{key}: unknown top-level key{did_you_mean(key, TOP_LEVEL)}; valid: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", Path(path).stem)
    if not _valid_name(name):
        raise BadInput(f"name = {_short(name)}: use letters, digits, '-', '_' and '.' (no leading dot, at most {MAX_NAME})")
    _check_description(raw, "")
    compare = _check_compare(raw.get("compare", {}))
    base_raw = {section: copy.deepcopy(raw.get(section, {})) for section in SCHEMA}
    for section in SCHEMA:
        if not isinstance(base_raw[section], dict):
            raise BadInput(f"{section} = {base_raw[section]!r}: expected a table [{section}]")
    for dotted, value in overrides.items():
        _set_dotted(base_raw, dotted, value, "--set ")
    baseline_config = resolve_config(base_raw, registry, "")

    variants = [Variant("baseline", baseline_config, {}, {}, raw.get("description", ""), raw.get("setting", ""))]
    variant_tables = raw.get("variant", [])
    if not isinstance(variant_tables, list):
        raise BadInput("variant: use [[variant]] tables (an array of tables)")
    seen = {"baseline"}
    for i, table in enumerate(variant_tables):
        where = f"variant[{i}]"
        if not isinstance(table, dict):
            raise BadInput(f"{where}: expected a [[variant]] table")
        vname = table.get("name")
        if not _valid_name(vname):
            given = f"{where}.name: missing" if vname is None else f"{where}.name = {_short(vname)}"
            raise BadInput(f"{given}: a variant needs a name of letters, digits, '-', '_', '.' (no leading dot, at most {MAX_NAME})")
        if vname in seen:
            raise BadInput(f"{where}.name = {vname!r}: duplicate variant name (names must be unique; 'baseline' is taken)")
        seen.add(vname)
        where = f"variant '{vname}'"
        for key in table:
            if key not in VARIANT_KEYS:
                raise BadInput(f"{where}: {key}: unknown key{did_you_mean(key, VARIANT_KEYS)}; valid: {', '.join(VARIANT_KEYS)}")
        _check_description(table, f"{where}: ")
        paper = table.get("paper", {})
        if not isinstance(paper, dict):
            raise BadInput(f"{where}: paper = {paper!r}: expected a table like {{ top1 = 1.4, top5 = 1.2 }}")
        for key, value in paper.items():
            if key not in PAPER_KEYS:
                raise BadInput(f"{where}: paper.{key}: unknown key{did_you_mean(key, PAPER_KEYS)}; valid: {', '.join(PAPER_KEYS)}")
            want = str if key == "claim" else (int, float)
            if isinstance(value, bool) or not isinstance(value, want):
                raise BadInput(f"{where}: paper.{key} = {value!r}: expected {'text' if want is str else 'a number'}")
        merged = copy.deepcopy(base_raw)
        changes = {}
        for section in SCHEMA:
            section_over = table.get(section, {})
            if not isinstance(section_over, dict):
                raise BadInput(f"{where}: {section} = {section_over!r}: expected a table of overrides")
            for dotted, value in _leaves(section_over, section):
                _set_dotted(merged, dotted, value, f"{where}: ")
                changes[dotted] = value
        config = resolve_config(merged, registry, f"{where}: ")
        variants.append(Variant(vname, config, changes, paper, table.get("description", ""), table.get("setting", "")))
    return Experiment(name, path, tuple(variants), raw.get("description", ""), overrides, compare)


def _check_description(table: dict, where: str) -> None:
    for key in ("description", "setting"):
        if not isinstance(table.get(key, ""), str):
            raise BadInput(f"{where}{key} = {_short(table[key])}: expected a string")


def _check_compare(table) -> dict:
    """[compare]: which switch to compare within each setting (default the activation), the
    reference value (the factor is other / reference epochs to the target), the paper's factor."""
    if not isinstance(table, dict):
        raise BadInput(f"compare = {_short(table)}: expected a table like {{ key = \"model.activation\", reference = \"relu\" }}")
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
        raise BadInput(f"compare.reference = {_short(table.get('reference'))}: name the reference value, e.g. \"relu\"")
    factor = table.get("paper_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))):
        raise BadInput(f"compare.paper_factor = {_short(factor)}: expected a number")
    return {"key": key, "reference": table["reference"], "paper_factor": factor}


def _leaves(table: dict, prefix: str):
    """Dotted paths of an override table; a table holding 'name' is one component, a leaf."""
    for key, value in table.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and "name" not in value and _is_nested_key(dotted):
            yield from _leaves(value, dotted)
        else:
            yield dotted, value


def _is_nested_key(dotted: str) -> bool:
    """True when dotted names a component key or a section (its sub-keys are parameters)."""
    parts = dotted.split(".")
    return len(parts) == 1 or (len(parts) == 2 and parts[1] in SCHEMA.get(parts[0], {}) and SCHEMA[parts[0]][parts[1]].kind == "component")


def _set_dotted(config: dict, dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    section = parts[0]
    if section not in SCHEMA:
        raise BadInput(f"{where}{dotted}: unknown section '{section}'{did_you_mean(section, SCHEMA)}; sections: {', '.join(SCHEMA)}")
    if len(parts) == 1:
        raise BadInput(f"{where}{dotted}: name a key inside [{section}] (e.g. {section}.{next(iter(SCHEMA[section]))})")
    key = parts[1]
    if key not in SCHEMA[section]:
        raise BadInput(
            f"{where}{section}.{key}: unknown key{did_you_mean(key, SCHEMA[section])}; valid keys in [{section}]: "
            f"{', '.join(SCHEMA[section])}"
        )
    target = config.setdefault(section, {})
    if len(parts) == 2:
        target[key] = value
        return
    spec = SCHEMA[section][key]
    if spec.kind != "component" or len(parts) != 3:
        raise BadInput(f"{where}{dotted}: {section}.{key} has no sub-keys")
    current = target.get(key, spec.default)
    table = component_spec(current, f"{section}.{key}")
    if parts[2] == "name":  # a new component: its old parameters do not carry over
        table = {"name": value}
    else:
        table[parts[2]] = value
    target[key] = table


def resolve_config(raw: dict, registry: Registry, where: str) -> dict:
    """Every key checked and defaulted; components resolved to {"name", **all params}."""
    out: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                raise BadInput(f"{where}{section}.{key}: unknown key{did_you_mean(key, keys)}; valid keys in [{section}]: {', '.join(keys)}")
        out[section] = {key: check_value(spec, given.get(key, copy.deepcopy(spec.default)), f"{section}.{key}", registry, where) for key, spec in keys.items()}
    return out


def check_value(spec: Key, value: Any, key: str, registry: Registry, where: str = "") -> Any:
    def bad(expected: str):
        return BadInput(f"{where}{key} = {_short(value)}: {expected}")

    if value is None and spec.optional:
        return None
    kind = spec.kind
    if kind == "component":
        component, params = registry.resolve(spec.component, value, f"{where}{key}")
        if key == "augment.test" and component.contract.get("role", "test") != "test":
            raise bad(f"'{component.name}' is a train augmentation; test views: {_names_with_role(registry, 'test')}")
        return {"name": component.name, **params}
    if kind == "components":
        if not isinstance(value, list):
            raise bad("expected a list of components, e.g. [\"random-crop\", \"hflip\"]")
        resolved = [check_value(Key(None, "component", component=spec.component), item, f"{key}[{i}]", registry, where) for i, item in enumerate(value)]
        for i, item in enumerate(resolved):
            if registry.get(spec.component, item["name"]).contract.get("role", "train") != "train":
                raise BadInput(f"{where}{key}[{i}] = {item['name']!r}: a test-time view; train augmentations: {_names_with_role(registry, 'train')}")
        return resolved
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("expected a string")
        return value
    if kind == "choice":
        if value not in spec.choices:
            raise bad(f"choose one of {', '.join(map(str, spec.choices))}{did_you_mean(value, spec.choices)}")
        return value
    if kind == "skip":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad(f"expected a list of layer names from {', '.join(spec.choices)}")
        for v in value:
            if v not in spec.choices:
                raise bad(f"'{v}' cannot be removed; removable layers: {', '.join(spec.choices)}{did_you_mean(v, spec.choices)}")
        if len(set(value)) != len(value):
            raise bad("lists a layer twice")
        return list(value)
    if kind == "seeds":
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= 1000:
                raise bad("a seed count must be between 1 and 1000")
            return list(range(value))
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if len(set(value)) != len(value) or not all(0 <= v < 2**31 for v in value):
                raise bad("seeds must be distinct integers in [0, 2^31)")
            return list(value)
        raise bad("expected a seed count (e.g. 3) or a list of seeds (e.g. [0, 1, 2])")
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not isinstance(value, int)):
            raise bad(f"expected {'an integer' if kind == 'int' else 'a number'}")
        if value != value:  # NaN
            raise bad("expected a number, got nan")
        if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
            raise bad(f"out of range; expected {_fmt(spec.low)} <= value <= {_fmt(spec.high)}")
        return float(value) if kind == "float" else value
    raise AssertionError(kind)


def _names_with_role(registry: Registry, role: str) -> str:
    return choices_text(n for n, c in registry.components["augmentation"].items() if c.contract.get("role", "train") == role)


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)  # TOML dates: as written
    return text if len(text) <= 60 else text[:57] + "..."
