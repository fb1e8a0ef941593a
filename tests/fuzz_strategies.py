"""Hypothesis strategies for fuzzing experiment files, shared by tests/test_fuzz.py (a few
hundred cases in CI) and benchmarks/fuzz.py (thousands).

A case is a valid experiment drawn from the real schema (testbed/schema.py: every key type,
its range, the registry's component names and their parameters) and then mutated: wrong
types, unknown and misspelled keys, huge and negative numbers, NaN and infinity, unicode and
control characters, deep nesting, duplicate variants, colliding dotted keys, `--set` strings,
and damage to the TOML text itself. `outcome()` runs one case through the CLI's own entry in
this process and says whether it ended as the CLI promises: exit 0, or exit 2 with one line.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import strategies as st

from testbed.schema import SCHEMA, Bool, Choice, Component, ComponentList, Names, Number, NumberTable, Seeds, Str

# Valid values of keys whose full range is valid but costly to check (a stand-in data set of
# 4096 px, a million classes): a smaller range while drawing valid files. Mutations still
# reach the full range and beyond.
CHEAP_RANGES = {
    "data.image_size": (8, 64),
    "data.classes": (2, 20),
    "data.train_size": (1, 400),
    "data.test_size": (1, 200),
    "model.width": (1 / 64, 1.0),
    "train.batch_size": (1, 256),
    "train.eval_batch_size": (1, 256),
    "train.epochs": (1, 100),
}

# ---------------------------------------------------------------------------- nasty values

CONTROL = "".join(map(chr, range(0, 32))) + "\x7f\u0085\u2028\u2029\ufeff"
NASTY_TEXT = st.text(alphabet=st.sampled_from(CONTROL + "é漢字🙂\u202e\u0301'\"\\[]{}=.#, \t" + string.ascii_letters), max_size=12)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, -(10**30), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0]),
)


def nested(depth: int, leaf="x"):
    """A value nested `depth` levels deep, alternating lists and tables."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


NASTY = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, NASTY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(NASTY_TEXT, inner, max_size=3)),
    max_leaves=8,
) | st.integers(1, 60).map(nested)


def misspell(word: str) -> st.SearchStrategy[str]:
    """A near miss of a real key or name: a letter dropped, doubled, swapped or changed case."""

    def edit(args):
        op, i = args
        i = i % max(len(word), 1)
        if op == 0:
            return word[:i] + word[i + 1 :]
        if op == 1:
            return word[:i] + word[i : i + 1] * 2 + word[i + 1 :]
        if op == 2 and len(word) > 1:
            j = min(i + 1, len(word) - 1)
            return word[:i] + word[j] + word[i] + word[j + 1 :]
        return word.swapcase()

    return st.tuples(st.integers(0, 3), st.integers(0, 100)).map(edit)


# ---------------------------------------------------------------------------- valid files


def component_names(registry, spec) -> list[str]:
    """The registered names a Component or ComponentList key accepts (its role, for augmentations)."""
    names = registry.names(spec.kind)
    if spec.role is None:
        return names
    return [n for n in names if registry.get(spec.kind, n).contract.get("role", spec.role) == spec.role]


def valid_value(key: str, spec, registry) -> st.SearchStrategy:
    """A value the schema accepts for `key` (`section.key`)."""
    if isinstance(spec, Number):
        low, high = CHEAP_RANGES.get(key, (spec.low, spec.high))
        if spec.integer:
            return st.integers(low, high)
        return st.floats(low, high, allow_nan=False)
    if isinstance(spec, Bool):
        return st.booleans()
    if isinstance(spec, Choice):
        return st.sampled_from(spec.choices)
    if isinstance(spec, Component):
        return st.sampled_from(component_names(registry, spec)).flatmap(lambda n: st.sampled_from([n, {"name": n}]))
    if isinstance(spec, ComponentList):
        return st.lists(st.sampled_from(component_names(registry, spec)), max_size=3)
    if isinstance(spec, Names):
        return st.permutations(spec.choices).flatmap(lambda p: st.integers(0, len(p)).map(lambda n: list(p[:n])))
    if isinstance(spec, Seeds):
        return st.one_of(st.integers(1, 3), st.lists(st.integers(0, 2**31 - 1), min_size=1, max_size=3, unique=True))
    if isinstance(spec, Str):
        return st.text(string.ascii_letters + "/_-.", max_size=12)
    if isinstance(spec, NumberTable):  # per-layer numbers: conv1 and fc8 exist in every AlexNet a drawn file builds
        return st.dictionaries(st.sampled_from(["conv1", "fc8"]), st.floats(0, 1, allow_nan=False), max_size=2)
    raise TypeError(f"no strategy for schema key {key} ({type(spec).__name__}); add one to tests/fuzz_strategies.py")


KEYS = [(section, key, spec) for section, keys in SCHEMA.items() for key, spec in keys.items()]
# `root` sends a dataset to a folder; valid files keep the plugins' defaults (mutations set it).
# `model.architecture` narrows which other [model] keys are valid (a cuda-convnet net has no
# geometry or dropout): valid files keep the default architecture, mutations set it, and
# tests/test_architectures.py checks the refusals.
DRAWN_KEYS = [k for k in KEYS if k[1] != "root" and (k[0], k[1]) != ("model", "architecture")]


@st.composite
def valid_sections(draw, registry, max_keys: int = 4) -> dict:
    chosen = draw(st.lists(st.sampled_from(DRAWN_KEYS), max_size=max_keys, unique_by=lambda k: (k[0], k[1])))
    out: dict = {}
    for section, key, spec in chosen:
        out.setdefault(section, {})[key] = draw(valid_value(f"{section}.{key}", spec, registry))
    return out


# Keep drawn files quick to check: a small synthetic data set unless a key says otherwise.
QUICK = {
    "data": {"dataset": "synthetic", "image_size": 32, "train_size": 40, "test_size": 20},
    "model": {"geometry": "cifar", "width": 0.125},
    "train": {"epochs": 1, "batch_size": 20},
}


@st.composite
def valid_experiment(draw, registry) -> dict:
    doc = {section: dict(table) for section, table in QUICK.items()}
    for section, table in draw(valid_sections(registry)).items():
        doc.setdefault(section, {}).update(table)
    if draw(st.booleans()):
        doc["name"] = draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,20}", fullmatch=True))
    variants = []
    for i in range(draw(st.integers(0, 2))):
        variant = {"name": f"v{i}", **draw(valid_sections(registry, max_keys=2))}
        variants.append(variant)
    if variants:
        doc["variant"] = variants
    return doc


# ---------------------------------------------------------------------------- mutations


def _tables(doc: dict) -> list[dict]:
    """Every table a mutation may change: the top level, its sections, each variant and its sections."""
    out = [doc] + [v for k, v in doc.items() if k != "variant" and isinstance(v, dict)]
    for variant in doc.get("variant", []) if isinstance(doc.get("variant"), list) else []:
        if isinstance(variant, dict):
            out += [variant] + [v for v in variant.values() if isinstance(v, dict)]
    return out


@st.composite
def mutate(draw, doc: dict, registry) -> dict:
    """One change to a parsed document (in place; returned)."""
    kind = draw(
        st.sampled_from(
            [
                "value",
                "unknown key",
                "misspelled key",
                "drop key",
                "section type",
                "duplicate variant",
                "component param",
                "variant value",
                "deep",
            ]
        )
    )
    section, key, spec = draw(st.sampled_from(KEYS))
    tables = _tables(doc)
    if kind == "value":
        doc.setdefault(section, {}) if isinstance(doc.get(section), dict) else doc.__setitem__(section, {})
        doc[section][key] = draw(NASTY)
    elif kind == "unknown key":
        draw(st.sampled_from(tables))[draw(NASTY_TEXT.filter(bool))] = draw(NASTY)
    elif kind == "misspelled key":
        target = draw(st.sampled_from(tables))
        word = draw(st.sampled_from(list(target) or [key]))
        target[draw(misspell(word))] = target.get(word, draw(NASTY))
    elif kind == "drop key":
        target = draw(st.sampled_from(tables))
        if target:
            target.pop(draw(st.sampled_from(sorted(target))))
    elif kind == "section type":
        doc[draw(st.sampled_from(["data", "model", "augment", "train", "variant", "compare", "name", "description"]))] = draw(NASTY)
    elif kind == "duplicate variant":
        variants = doc.get("variant") if isinstance(doc.get("variant"), list) else []
        name = draw(st.sampled_from(["baseline"] + [v.get("name") for v in variants if isinstance(v, dict)]))
        doc["variant"] = variants + [{"name": name, "model": {"activation": "tanh"}}]
    elif kind == "component param":
        components = [(s, k, v) for s, k, v in KEYS if isinstance(v, Component)]
        section, key, spec = draw(st.sampled_from(components))
        name = draw(st.sampled_from(component_names(registry, spec)))
        params = [p.name for p in registry.get(spec.kind, name).params]
        param = draw(st.sampled_from(params) | misspell(params[0] if params else "size")) if params else draw(misspell("size"))
        table = (
            doc["variant"][0] if doc.get("variant") and isinstance(doc["variant"], list) and isinstance(doc["variant"][0], dict) else doc
        )
        table.setdefault(section, {}) if isinstance(table.get(section), dict) else table.__setitem__(section, {})
        table[section][key] = {"name": name, param: draw(NASTY)}
    elif kind == "variant value":
        variant = {"name": draw(st.sampled_from(["w", "x"]) | NASTY_TEXT | NASTY)}
        variant[section] = {key: draw(NASTY | valid_value(f"{section}.{key}", spec, registry))}
        doc["variant"] = (doc.get("variant") if isinstance(doc.get("variant"), list) else []) + [variant]
    else:  # deep nesting as a value
        doc.setdefault("model", {}) if isinstance(doc.get("model"), dict) else doc.__setitem__("model", {})
        doc["model"][draw(st.sampled_from(["activation", "width", "skip", "normalization"]))] = nested(draw(st.integers(10, 400)))
    return doc


# ---------------------------------------------------------------------------- TOML text


BARE = re.compile(r"^[A-Za-z0-9_\-]+$")


def toml_key(key) -> str:
    key = str(key)
    return key if BARE.match(key) else json.dumps(key)


def toml_value(value) -> str:
    """A value as TOML writes it (None, which TOML lacks, as the empty inline table)."""
    if value is None:
        return "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if abs(value) < 10**4000 else "1" + "0" * 4000  # Python's own digit limit
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == math.inf else "-inf" if value == -math.inf else repr(value))
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (lone surrogates: refused by TOML)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _dotted_lines(table: dict, prefix: str = "") -> list[str]:
    """A [[variant]] table's contents as dotted keys (`model.activation = "tanh"`), the way a
    user writes them; a component table stays inline."""
    lines = []
    for key, value in table.items():
        dotted = f"{prefix}{toml_key(key)}"
        if isinstance(value, dict) and value and not prefix and "name" not in value:
            lines += _dotted_lines(value, f"{dotted}.")
        else:
            lines.append(f"{dotted} = {toml_value(value)}")
    return lines


def to_toml(doc: dict) -> str:
    scalars = [
        f"{toml_key(k)} = {toml_value(v)}"
        for k, v in doc.items()
        if not isinstance(v, dict) and not (k == "variant" and isinstance(v, list) and v and all(isinstance(x, dict) for x in v))
    ]
    tables = []
    for key, value in doc.items():
        if isinstance(value, dict):
            tables += [f"[{toml_key(key)}]"] + [f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()]
    variants = doc.get("variant")
    if isinstance(variants, list) and variants and all(isinstance(x, dict) for x in variants):
        for variant in variants:
            tables += ["[[variant]]"] + _dotted_lines(variant)
    return "\n".join(scalars + tables) + "\n"


@st.composite
def damage_text(draw, text: str) -> str:
    """Damage to the file itself: cut short, a character inserted, a line repeated, a dotted
    key that collides with one already given."""
    kind = draw(st.sampled_from(["truncate", "insert", "repeat line", "colliding dotted key", "deep text"]))
    lines = text.splitlines()
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if kind == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(NASTY_TEXT.filter(bool)) + text[at:]
    if kind == "repeat line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :]) + "\n"
    if kind == "colliding dotted key":
        first, second = draw(
            st.sampled_from(
                [
                    ('model.activation = "tanh"', 'model.activation.name = "relu"'),
                    ("model = { width = 0.5 }", "model.width = 0.25"),
                    ('model.activation = { name = "elu" }', "model.activation.alpha = 2.0"),
                    ("train.epochs = 1", "train.epochs = 2"),
                ]
            )
        )
        return text + f'\n[[variant]]\nname = "collide"\n{first}\n{second}\n'
    depth = draw(st.integers(100, 4000))
    return text + "\n" + draw(st.sampled_from(["deep", "[model]\nskip"])) + " = " + "[" * depth + "]" * depth + "\n"


# ---------------------------------------------------------------------------- --set strings


@st.composite
def set_strings(draw, registry) -> list[str]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        section, key, spec = draw(st.sampled_from(KEYS))
        dotted = draw(
            st.sampled_from([f"{section}.{key}", f"{section}.{key}.name", f"{section}.{key}.alpha", section, f"{section}.{key}.a.b"])
            | misspell(f"{section}.{key}")
        )
        value = draw(st.one_of(valid_value(f"{section}.{key}", spec, registry).map(toml_value), NASTY.map(toml_value), NASTY_TEXT))
        out.append(draw(st.sampled_from([f"{dotted}={value}", f"{dotted} = {value}", dotted, f"={value}", f"{dotted}=="])))
    return [s for s in out if "\x00" not in s]  # argv cannot hold NUL


@dataclass
class Case:
    text: str | bytes
    sets: list[str] = field(default_factory=list)

    def argv(self, path: Path) -> list[str]:
        return ["show", str(path), *(a for s in self.sets for a in ("--set", s))]


@st.composite
def cases(draw, registry) -> Case:
    """A file drawn from the schema, mutated 0-3 times, its text sometimes damaged, with `--set` strings."""
    doc = draw(valid_experiment(registry))
    for _ in range(draw(st.integers(0, 3))):
        doc = draw(mutate(doc, registry))
    text = to_toml(doc)
    if draw(st.integers(0, 4)) == 0:
        text = draw(damage_text(text))
    return Case(text, draw(set_strings(registry)))


# ---------------------------------------------------------------------------- one case


def write_case(case: Case, path: Path) -> Path:
    data = case.text if isinstance(case.text, bytes) else case.text.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    return path


def judge(code: int | None, stderr: str, exception: BaseException | None = None) -> str | None:
    """None when the run ended as promised (exit 0; or exit 2 with exactly one line on stderr,
    no traceback); else what went wrong."""
    if exception is not None and not isinstance(exception, SystemExit):
        return f"raised {type(exception).__name__}: {exception}"
    if "Traceback (most recent call last)" in stderr:
        return "a traceback on stderr"
    if code == 0:
        return None
    if code != 2:
        return f"exit {code}"
    lines = stderr.splitlines()
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"exit 2 with {len(lines)} lines on stderr"
    return None


def outcome(case: Case, path: Path) -> tuple[int | None, str | None]:
    """(exit code, failure or None) of `testbed show` on the case, in this process through the
    CLI's own entry (click's CliRunner)."""
    from click.testing import CliRunner

    from testbed.cli import main

    write_case(case, path)
    result = CliRunner().invoke(main, case.argv(path))
    return result.exit_code, judge(result.exit_code, result.stderr, result.exception)
