"""The experiment file's schema, in one place: every key, its default and how it is checked,
and the rules by which a variant's (or ``--set``'s) dotted keys override the baseline.

Each key is a ``Key`` subclass whose ``check`` returns the value to keep (defaults filled in,
components resolved to ``{"name": ..., **every parameter}``) or raises ``BadInput`` with one
line naming the dotted key, the bad value and what would be right. The defaults are the
paper's choices, so an empty file describes the paper's AlexNet.

Merge rules (``set_dotted``), used for variants and ``--set``:

1. ``section.key = value`` replaces the key's value.
2. ``section.component.param = value`` sets one parameter of a component key and keeps its
   other parameters; ``section.component.name = "x"`` switches the component and drops them.
3. In an override table, a table holding ``name`` is a whole component (one leaf); any other
   table under a section or a component key is walked into (``leaves``).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from testbed.errors import BadInput, choices_text, did_you_mean
from testbed.model import SKIPPABLE
from testbed.registry import Registry, component_spec
from testbed.seeding import SOURCES as SEED_SOURCES

MAX_INT = 10**9


# ---------------------------------------------------------------------------- key types


@dataclass(frozen=True)
class Key:
    """One leaf of the schema. ``optional``: None (the key left out) is kept as None."""

    default: Any
    help: str = ""
    optional: bool = False

    def check(self, value: Any, key: str, registry: Registry, where: str = "") -> Any:
        if value is None and self.optional:
            return None
        return self.validate(value, key, registry, where)

    def validate(self, value, key, registry, where):  # pragma: no cover - every key type overrides it
        raise NotImplementedError

    @staticmethod
    def bad(value, key: str, where: str, expected: str) -> BadInput:
        return BadInput(f"{where}{key} = {short(value)}: {expected}")


@dataclass(frozen=True)
class Number(Key):
    low: float | None = None
    high: float | None = None
    integer: bool = False

    def validate(self, value, key, registry, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (self.integer and not isinstance(value, int)):
            raise self.bad(value, key, where, f"expected {'an integer' if self.integer else 'a number'}")
        if value != value:  # NaN
            raise self.bad(value, key, where, "expected a number, got nan")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise self.bad(value, key, where, f"out of range; expected {_fmt(self.low)} <= value <= {_fmt(self.high)}")
        return value if self.integer else float(value)


def Int(default, low=None, high=None, **kw) -> Number:
    return Number(default, low=low, high=high, integer=True, **kw)


def Float(default, low=None, high=None, **kw) -> Number:
    return Number(default, low=low, high=high, **kw)


@dataclass(frozen=True)
class Bool(Key):
    def validate(self, value, key, registry, where):
        if not isinstance(value, bool):
            raise self.bad(value, key, where, "expected true or false")
        return value


@dataclass(frozen=True)
class Str(Key):
    def validate(self, value, key, registry, where):
        if not isinstance(value, str):
            raise self.bad(value, key, where, "expected a string")
        return value


@dataclass(frozen=True)
class Choice(Key):
    choices: tuple = ()

    def validate(self, value, key, registry, where):
        if value not in self.choices:
            raise self.bad(value, key, where, f"choose one of {', '.join(map(str, self.choices))}{did_you_mean(value, self.choices)}")
        return value


@dataclass(frozen=True)
class Component(Key):
    """A component name or table ``{ name = ..., param = value }`` of one registry kind.
    ``role``: for augmentations, which role the slot takes ("train" or "test")."""

    kind: str = ""
    role: str | None = None

    def validate(self, value, key, registry, where):
        component, params = registry.resolve(self.kind, value, f"{where}{key}")
        if self.role is not None:
            # A component that declares no role is accepted in either slot.
            declared = component.contract.get("role", self.role)
            if declared != self.role:
                raise BadInput(self.role_error(component.name, key, where, registry))
        return {"name": component.name, **params}

    def role_error(self, name: str, key: str, where: str, registry: Registry) -> str:
        others = choices_text(n for n, c in registry.components[self.kind].items() if c.contract.get("role", "train") == self.role)
        if self.role == "test":
            return f"{where}{key} = {short(name)}: '{name}' is a train augmentation; test views: {others}"
        return f"{where}{key} = {name!r}: a test-time view; train augmentations: {others}"


@dataclass(frozen=True)
class ComponentList(Key):
    kind: str = ""
    role: str | None = None

    def validate(self, value, key, registry, where):
        if not isinstance(value, list):
            raise self.bad(value, key, where, 'expected a list of components, e.g. ["random-crop", "hflip"]')
        item = Component(None, kind=self.kind, role=self.role)
        return [item.check(spec, f"{key}[{i}]", registry, where) for i, spec in enumerate(value)]


@dataclass(frozen=True)
class Names(Key):
    """A list of distinct names from ``choices`` (possibly empty), kept in the order given.
    ``noun`` and ``unknown`` word the refusals: "expected a list of {noun}s from ...",
    "'x' {unknown} ..."."""

    choices: tuple = ()
    noun: str = "name"
    unknown: str = "is not one of"

    def validate(self, value, key, registry, where):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.bad(value, key, where, f"expected a list of {self.noun}s from {', '.join(self.choices)}")
        for v in value:
            if v not in self.choices:
                raise self.bad(value, key, where, f"'{v}' {self.unknown} {', '.join(self.choices)}{did_you_mean(v, self.choices)}")
        if len(set(value)) != len(value):
            raise self.bad(value, key, where, f"lists a {self.noun.removesuffix(' name')} twice")
        return list(value)


def Layers(default, help="", choices=()) -> Names:
    """The depth ablation's removable layers."""
    return Names(default, help, choices=choices, noun="layer name", unknown="cannot be removed; removable layers:")


@dataclass(frozen=True)
class Seeds(Key):
    """A count N (seeds 0..N-1) or a list of distinct seeds; always kept as the list."""

    def validate(self, value, key, registry, where):
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= 1000:
                raise self.bad(value, key, where, "a seed count must be between 1 and 1000")
            return list(range(value))
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            if len(set(value)) != len(value) or not all(0 <= v < 2**31 for v in value):
                raise self.bad(value, key, where, "seeds must be distinct integers in [0, 2^31)")
            return list(value)
        raise self.bad(value, key, where, "expected a seed count (e.g. 3) or a list of seeds (e.g. [0, 1, 2])")


@dataclass(frozen=True)
class NumberTable(Key):
    """A table of names to non-negative numbers (e.g. layer name -> weight decay)."""

    def validate(self, value, key, registry, where):
        if not isinstance(value, dict):
            raise self.bad(value, key, where, "expected a table of layer names to numbers, e.g. { conv1 = 0.0, fc10 = 0.01 }")
        for name, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number or number < 0:
                raise self.bad(number, f"{key}.{name}", where, "expected a number >= 0")
        return {name: float(number) for name, number in value.items()}


# ---------------------------------------------------------------------------- the schema


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "dataset": Component("synthetic", "dataset plugin", kind="dataset"),
        "root": Str(None, "data folder (default: the plugin's, e.g. $TESTBED_DATA/<name>)", optional=True),
        "image_size": Int(None, 8, 4096, help="stored image size (default: the dataset's)", optional=True),
        "classes": Int(None, 2, 100_000, help="class count (default: the dataset's)", optional=True),
        "train_size": Int(None, 1, MAX_INT, help="seeded class-balanced training subset", optional=True),
        "test_size": Int(None, 1, MAX_INT, help="seeded class-balanced test subset", optional=True),
        "seed": Int(0, 0, 2**31 - 1, help="seed for generated data and subsets (not the training seed)"),
        "preprocess": Component("mean", "input preprocessing", kind="preprocess"),
    },
    "model": {
        "architecture": Component("alexnet", "the network: alexnet (default), or another registered architecture", kind="architecture"),
        "geometry": Choice("auto", "auto: cifar for <= 64 px", choices=("auto", "imagenet", "cifar")),
        "width": Float(1.0, 1 / 64, 16, help="multiplier on every conv and FC width"),
        "activation": Component("relu", kind="activation"),
        "normalization": Component("lrn", kind="normalization"),
        "pooling": Component("overlapping", kind="pooling"),
        "dropout": Float(0.5, 0.0, 0.99, help="dropout probability in fc6 and fc7 (0: off)"),
        "init": Component("paper", kind="init"),
        "placement": Component("grouped", kind="placement"),
        "skip": Layers([], "conv layers removed (depth ablation)", choices=SKIPPABLE),
    },
    "augment": {
        "train": ComponentList(
            ["random-crop", "hflip", "pca-lighting"], "train augmentations, applied in order", kind="augmentation", role="train"
        ),
        "test": Component("ten-crop", "test-time views", kind="augmentation", role="test"),
    },
    "train": {
        "epochs": Int(90, 1, 100_000),
        "batch_size": Int(128, 1, 2**20),
        "optimizer": Component("sgd", kind="optimizer"),
        "schedule": Component("plateau", kind="schedule"),
        "seeds": Seeds(1, "a count (seeds 0..N-1) or a list of seeds"),
        "seed_varies": Names(
            list(SEED_SOURCES),
            "what the seed changes (the rest is the same for every seed): subset, init, order, augmentation, dropout",
            choices=SEED_SOURCES,
        ),
        "target_train_error": Float(0.25, 0.0, 1.0, help="Figure 1's measure: epochs to this training error"),
        "stop_at_target": Bool(False, "end a job at the first epoch at or below target_train_error"),
        "stop_at_chance": Int(0, 0, 100_000, help="end a job whose training error is still at chance after this many epochs (0: never)"),
        "precision": Choice("fp32", choices=("fp32", "bf16", "fp16")),
        "compile": Bool(False, "torch.compile the model"),
        "memory_format": Choice(
            "auto", "auto: channels-last, faster on CPUs and GPUs alike where measured", choices=("auto", "channels-last", "contiguous")
        ),
        "eval_batch_size": Int(128, 1, 2**20, help="images per forward pass when evaluating (each test view separately)"),
        "bias_lr_scale": Float(1.0, 0.0, 1000.0, help="biases learn at this multiple of the learning rate (cuda-convnet: 2)"),
        "bias_weight_decay": Float(
            None, 0.0, 1.0, help="weight decay of the biases (default: the optimizer's; cuda-convnet: 0)", optional=True
        ),
        "layer_weight_decay": NumberTable({}, "weight decay per weight layer, e.g. { local3 = 0.004 } (the rest: the optimizer's)"),
    },
}
# [track]: where the run's numbers go besides the store; one table per run (variants cannot change it)
TRACK: dict[str, Key] = {
    "use": ComponentList(
        [], 'trackers fed every epoch by the driver, e.g. ["tensorboard", { name = "mlflow", tracking_uri = "..." }]', kind="tracker"
    ),
}
TOP_LEVEL = ("name", "description", "setting", "compare", "report", "track", "data", "model", "augment", "train", "variant")
REPORT_KEYS = ("confidence", "correction")
VARIANT_KEYS = ("name", "description", "setting", "paper", "data", "model", "augment", "train")
COMPARE_KEYS = ("key", "reference", "paper_factor")
PAPER_KEYS = ("top1", "top5", "claim", "factor", "test_error")


def resolve_track(table: Any, registry: Registry) -> list[dict]:
    """The [track] table: its trackers resolved to {"name", **all parameters}."""
    if not isinstance(table, dict):
        raise BadInput(f'track = {short(table)}: expected a table [track] with use = ["tensorboard", ...]')
    for key in table:
        if key not in TRACK:
            raise BadInput(f"track.{key}: unknown key{did_you_mean(key, TRACK)}; valid keys in [track]: {', '.join(TRACK)}")
    return TRACK["use"].check(table.get("use", []), "track.use", registry)


def resolve_config(raw: dict, registry: Registry, where: str) -> dict:
    """Every key checked and defaulted; components resolved to {"name", **all params}. In
    [model], the architecture's declared defaults stand in for the schema's where a key is left
    out, and a key it does not honour is refused."""
    out: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        for key in given:
            if key not in keys:
                raise BadInput(
                    f"{where}{section}.{key}: unknown key{did_you_mean(key, keys)}; valid keys in [{section}]: {', '.join(keys)}"
                )
        defaults = architecture_defaults(given, registry, where) if section == "model" else {}
        out[section] = {
            key: spec.check(given.get(key, copy.deepcopy(defaults.get(key, spec.default))), f"{section}.{key}", registry, where)
            for key, spec in keys.items()
        }
    check_placement(out["model"], registry, where)
    return out


def _architecture(given_model: dict, registry: Registry, where: str):
    spec = given_model.get("architecture", SCHEMA["model"]["architecture"].default)
    return registry.resolve("architecture", spec, f"{where}model.architecture")[0]


def architecture_defaults(given_model: dict, registry: Registry, where: str) -> dict:
    """The chosen architecture's [model] defaults; BadInput for a given key it has no slot for."""
    component = _architecture(given_model, registry, where)
    slots = component.contract.get("slots")
    if slots is not None:
        for key, value in given_model.items():
            if key != "architecture" and key not in slots:
                raise BadInput(
                    f"{where}model.{key} = {short(value)}: architecture '{component.name}' has no {key} slot; "
                    f"it honours: {', '.join(slots) or 'none'}"
                )
    return component.contract.get("defaults", {})


def check_placement(model: dict, registry: Registry, where: str) -> None:
    component = registry.get("architecture", model["architecture"]["name"])
    allowed = component.contract.get("placements")
    name = model["placement"]["name"]
    if allowed is not None and name not in allowed:
        raise BadInput(
            f"{where}model.placement = {name!r}: architecture '{component.name}' cannot be built under it; placements: {', '.join(allowed)}"
        )


#: Keys added after runs were stored: what a stored config without them meant (``Experiment.from_json``).
ADDED_KEYS = {
    ("model", "architecture"): {"name": "alexnet"},
    ("train", "bias_lr_scale"): 1.0,
    ("train", "bias_weight_decay"): None,
    ("train", "layer_weight_decay"): {},
}


def fill_added_keys(config: dict) -> dict:
    for (section, key), value in ADDED_KEYS.items():
        config.setdefault(section, {}).setdefault(key, copy.deepcopy(value))
    return config


# ---------------------------------------------------------------------------- merge rules


def leaves(table: dict, prefix: str):
    """(dotted key, value) of every leaf of an override table (rule 3)."""
    for key, value in table.items():
        dotted = f"{prefix}.{key}"
        if isinstance(value, dict) and "name" not in value and _walks_into(dotted):
            yield from leaves(value, dotted)
        else:
            yield dotted, value


def _walks_into(dotted: str) -> bool:
    """A section, or a component key (whose sub-keys are its parameters)."""
    parts = dotted.split(".")
    return len(parts) == 1 or (len(parts) == 2 and isinstance(SCHEMA.get(parts[0], {}).get(parts[1]), Component))


def set_dotted(config: dict, dotted: str, value: Any, where: str) -> None:
    """Apply one override to a raw (unresolved) config (rules 1 and 2)."""
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
    if not isinstance(spec, Component) or len(parts) != 3:
        raise BadInput(f"{where}{dotted}: {section}.{key} has no sub-keys")
    table = component_spec(target.get(key, spec.default), f"{section}.{key}")
    if parts[2] == "name":  # a new component: its old parameters do not carry over
        table = {"name": value}
    else:
        table[parts[2]] = value
    target[key] = table


# ---------------------------------------------------------------------------- messages


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def short(value: Any) -> str:
    """A value as the user wrote it, cut to one line's worth (TOML dates as written)."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
