"""Name -> factory, one registry per component kind.

A component is registered with a name, a factory and a one-line help. Its user-facing
parameters are the factory's keyword-only arguments: their defaults are the defaults,
their annotations (or the defaults' types) are the types, and a ``Literal[...]``
annotation lists the valid choices. Positional arguments are the context the core passes
in (the channel count for a normalization, for instance) and are not user parameters.
"""

from __future__ import annotations

import inspect
import math
import types as types_module
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from testbed.errors import BadInput, ComponentError, choices_text, did_you_mean, short_repr

#: Every kind of component the core has a slot for, in the order `testbed plugins` lists them.
KINDS = (
    "dataset",
    "preprocess",
    "augmentation",
    "activation",
    "normalization",
    "pooling",
    "init",
    "placement",
    "optimizer",
    "schedule",
)


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    types: tuple  # accepted Python types of the value (None allowed if NoneType is listed)
    choices: tuple | None = None
    item_types: tuple | None = None  # for list parameters

    def describe_type(self) -> str:
        if self.choices:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        names = [t.__name__ if t is not type(None) else "none" for t in self.types]
        if self.item_types:
            names = [f"list of {'/'.join(t.__name__ for t in self.item_types)}" if n == "list" else n for n in names]
        return " or ".join(names)

    def check(self, value: Any, key: str) -> Any:
        """Return the value (ints widened to float where a float is expected) or raise BadInput."""
        if self.choices is not None:
            if value not in self.choices:
                raise BadInput(
                    f"{key} = {short_repr(value)}: not a valid choice; choose one of "
                    f"{', '.join(repr(c) for c in self.choices)}{did_you_mean(value, self.choices)}"
                )
            return value
        if value is None and type(None) in self.types:
            return None
        if isinstance(value, bool):
            ok = bool in self.types
        elif isinstance(value, int) and float in self.types and int not in self.types:
            value = _check_number(value, key)
            return float(value)
        else:
            ok = isinstance(value, tuple(t for t in self.types if t is not type(None)))
        if not ok:
            raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe_type()}, got {type(value).__name__}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(value, key)
        if isinstance(value, list) and self.item_types:
            for i, item in enumerate(value):
                if isinstance(item, bool) or not isinstance(item, self.item_types):
                    raise BadInput(f"{key}[{i}] = {short_repr(item)}: expected {self.describe_type()}")
                if isinstance(item, (int, float)):
                    _check_number(item, f"{key}[{i}]")
        return value

    def as_dict(self) -> dict:
        return {"name": self.name, "default": self.default, "type": self.describe_type()}


INT_LIMIT = 2**63  # a component parameter must fit a 64-bit integer (torch, numpy and C code take it)


def _check_number(value: int | float, key: str) -> int | float:
    """Refuse what no component can use: integers beyond 64 bits, NaN and infinities."""
    if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
        raise BadInput(f"{key} = {short_repr(value)}: too large; a parameter must lie within +-2^63")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadInput(f"{key} = {value}: expected a finite number")
    return value


def _param_from(parameter: inspect.Parameter, hint: Any) -> Param:
    default = parameter.default
    if hint is inspect.Parameter.empty or hint is Any:
        hint = type(default) if default is not None else Any
    choices = item_types = None
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        types = tuple({type(c) for c in choices})
    elif origin in (typing.Union, types_module.UnionType):
        types = tuple(typing.get_origin(a) or a for a in typing.get_args(hint))
        for a in typing.get_args(hint):
            if typing.get_origin(a) is list and typing.get_args(a):
                item_types = typing.get_args(a)
    elif origin is list:
        types = (list,)
        item_types = typing.get_args(hint) or None
    elif hint is Any:
        types = (object,)
    else:
        types = (hint,)
    return Param(parameter.name, default, types, choices, item_types)


def params_of(factory: Callable) -> tuple[Param, ...]:
    """The user parameters of a factory: its keyword-only arguments, which must have defaults."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    out = []
    for parameter in inspect.signature(factory).parameters.values():
        if parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{factory!r}: keyword-only parameter {parameter.name!r} needs a default")
        if parameter.name == "name":  # a component table's `name` selects the component itself
            raise TypeError(f"{factory!r}: a parameter cannot be called 'name' (it selects the component in an experiment file); rename it")
        out.append(_param_from(parameter, hints.get(parameter.name, inspect.Parameter.empty)))
    return tuple(out)


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable
    help: str
    params: tuple[Param, ...]
    plugin: str
    version: str = ""

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def check_params(self, params: dict, key: str) -> dict:
        """Validated parameters with defaults filled in; unknown names raise BadInput."""
        known = {p.name: p for p in self.params}
        for name in params:
            if name not in known:
                hint = did_you_mean(name, known) if known else ""
                valid = f"valid parameters: {choices_text(known)}" if known else "it takes no parameters"
                raise BadInput(f"{key}.{name}: unknown parameter of {self.kind} '{self.name}'{hint}; {valid}")
        return {name: p.check(params.get(name, p.default), f"{key}.{name}") for name, p in known.items()}

    def create(self, context: tuple = (), params: dict | None = None, where: str | None = None):
        """Call the factory; a ValueError from it becomes a ComponentError naming the key and the component."""
        try:
            return self.factory(*context, **(params or {}))
        except ValueError as exc:
            prefix = f"{where}: " if where else ""
            error = ComponentError(f"{prefix}{self.kind} '{self.name}' (plugin {self.plugin}) refused: {exc}")
            error.plugin = self.plugin
            raise error from exc

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "plugin": self.plugin,
            "version": self.version,
            "help": self.help,
            "params": [p.as_dict() for p in self.params],
        }


@dataclass
class Registry:
    """All registered components, by kind then name."""

    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})

    def add(self, kind: str, name: str, factory: Callable, help: str, *, plugin: str, version: str = "") -> Component:
        if kind not in self.components:
            raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {plugin!r} registered a {kind} without a name")
        existing = self.components[kind].get(name)
        if existing is not None:
            raise BadInput(
                f"{kind} '{name}' is registered twice: by plugin '{existing.plugin}' and by plugin '{plugin}'; "
                f"uninstall one of them or rename the component"
            )
        component = Component(kind, name, factory, (help or "").strip(), params_of(factory), plugin, version)
        self.components[kind][name] = component
        return component

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str, key: str | None = None) -> Component:
        try:
            return self.components[kind][name]
        except (KeyError, TypeError):
            key = key or kind
            raise BadInput(
                f"{key} = {name!r}: unknown {kind}{did_you_mean(name, self.components[kind])}; "
                f"choices: {choices_text(self.components[kind])}"
            ) from None

    def resolve(self, kind: str, spec: Any, key: str) -> tuple[Component, dict]:
        """A spec is a name or a table {name = ..., param = value}: return the component and its full params."""
        spec = component_spec(spec, key)
        params = dict(spec)
        name = params.pop("name")
        component = self.get(kind, name, f"{key}.name" if len(spec) > 1 else key)
        return component, component.check_params(params, key)

    def create(self, kind: str, spec: Any, *context, key: str | None = None):
        component, params = self.resolve(kind, spec, key or kind)
        return component.create(context, params, key or kind)


def component_spec(spec: Any, key: str) -> dict:
    """Normalise 'relu' or {name = 'relu', ...} to a dict with a 'name'."""
    if isinstance(spec, str):
        return {"name": spec}
    if isinstance(spec, dict):
        if "name" not in spec:
            raise BadInput(f"{key}: a component table needs a 'name' (got keys {', '.join(map(str, spec)) or 'none'})")
        if not isinstance(spec["name"], str):
            raise BadInput(f"{key}.name = {spec['name']!r}: expected a component name (a string)")
        return dict(spec)
    raise BadInput(f"{key} = {spec!r}: expected a component name or a table {{ name = \"...\", ... }}")
