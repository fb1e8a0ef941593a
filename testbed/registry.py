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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.errors import BadInput, ComponentError, choices_text, did_you_mean, short_repr

#: Every kind of component the core has a slot for, in the order `testbed plugins` lists them.
KINDS = (
    "dataset",
    "preprocess",
    "augmentation",
    "architecture",
    "activation",
    "normalization",
    "pooling",
    "init",
    "placement",
    "optimizer",
    "schedule",
    "executor",
    "tracker",
)


@dataclass(frozen=True)
class Shape:
    """What values a parameter accepts, from its annotation: ``kind`` is one of
    ``scalar`` (``types``), ``choice`` (``choices``), ``list`` / ``tuple`` / ``dict`` (``items``:
    the item shape; for a fixed-length tuple one shape per position, for a dict key and value),
    ``union`` (``items``: the alternatives) or ``any``."""

    kind: str
    types: tuple = ()
    choices: tuple = ()
    items: tuple = ()
    variadic: bool = False  # tuple[int, ...]

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "scalar":
            return " or ".join("none" if t is type(None) else t.__name__ for t in self.types)
        if self.kind == "list":
            return f"list of {self.items[0].describe()}"
        if self.kind == "tuple":
            inner = f"{self.items[0].describe()}, ..." if self.variadic else ", ".join(i.describe() for i in self.items)
            return f"list [{inner}]"
        if self.kind == "dict":
            return f"table of {self.items[0].describe()} = {self.items[1].describe()}"
        if self.kind == "union":
            return " or ".join(i.describe() for i in self.items)
        return "any value"

    def check(self, value: Any, key: str) -> Any:
        """The value (ints widened to float where only a float fits, lists to tuples for tuple
        parameters) or BadInput naming the key."""
        checker = getattr(self, f"_check_{self.kind}")
        return checker(value, key)

    def _check_any(self, value, key):
        return value

    def _check_choice(self, value, key):
        for choice in self.choices:  # by type too: True is not 1, but 2 may stand for 2.0
            same_type = type(choice) is type(value) or (type(choice) is float and type(value) is int)
            if same_type and choice == value:
                return choice
        raise BadInput(
            f"{key} = {short_repr(value)}: not a valid choice; choose one of "
            f"{', '.join(repr(c) for c in self.choices)}{did_you_mean(value, self.choices)}"
        )

    def _check_scalar(self, value, key):
        if value is None and type(None) in self.types:
            return None
        if isinstance(value, bool):
            ok = bool in self.types
        elif isinstance(value, int) and float in self.types and int not in self.types:
            return float(_check_number(value, key))
        else:
            ok = isinstance(value, tuple(t for t in self.types if t is not type(None)))
        if not ok:
            raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe()}, got {type(value).__name__}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _check_number(value, key)
        return value

    def _check_list(self, value, key):
        if not isinstance(value, (list, tuple)):
            raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe()}, got {type(value).__name__}")
        return [self.items[0].check(item, f"{key}[{i}]") for i, item in enumerate(value)]

    def _check_tuple(self, value, key):
        if not isinstance(value, (list, tuple)) or (not self.variadic and len(value) != len(self.items)):
            raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe()}")
        shapes = [self.items[0]] * len(value) if self.variadic else self.items
        return tuple(shape.check(item, f"{key}[{i}]") for i, (shape, item) in enumerate(zip(shapes, value)))

    def _check_dict(self, value, key):
        if not isinstance(value, dict):
            raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe()}, got {type(value).__name__}")
        keys, values = self.items
        return {keys.check(k, f"{key} key"): values.check(v, f"{key}.{k}") for k, v in value.items()}

    def _check_union(self, value, key):
        for shape in self.items:
            try:
                return shape.check(value, key)
            except BadInput:
                continue
        raise BadInput(f"{key} = {short_repr(value)}: expected {self.describe()}, got {type(value).__name__}")


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    shape: Shape

    @property
    def choices(self) -> tuple | None:
        return self.shape.choices if self.shape.kind == "choice" else None

    def describe_type(self) -> str:
        return self.shape.describe()

    def check(self, value: Any, key: str) -> Any:
        return self.shape.check(value, key)

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


SCALARS = (bool, int, float, str, type(None))
SUPPORTED = "bool, int, float, str, None, Literal[...], X | None, list[X], tuple[X, Y], tuple[X, ...], dict[str, X]"


def shape_of(hint: Any) -> Shape:
    """The Shape of an annotation; TypeError (refused at registration) for one testbed cannot check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return Shape("any")
    if origin is typing.Literal:
        return Shape("choice", choices=args)
    if origin in (typing.Union, types_module.UnionType):
        if all(a in SCALARS for a in args):
            return Shape("scalar", types=args)
        return Shape("union", items=tuple(shape_of(a) for a in args))
    if origin is list or hint is list:
        return Shape("list", items=(shape_of(args[0]) if args else Shape("any"),))
    if origin is tuple or hint is tuple:
        if not args:
            return Shape("tuple", items=(Shape("any"),), variadic=True)
        if len(args) == 2 and args[1] is Ellipsis:
            return Shape("tuple", items=(shape_of(args[0]),), variadic=True)
        return Shape("tuple", items=tuple(shape_of(a) for a in args))
    if origin is dict or hint is dict:
        key, value = args if args else (str, Any)
        if key is not str:
            raise TypeError(f"dict keys must be str (TOML table keys are strings), got {hint}")
        return Shape("dict", items=(shape_of(str), shape_of(value)))
    if hint in SCALARS or (isinstance(hint, type) and origin is None):  # a plain class: isinstance
        return Shape("scalar", types=(hint,))
    raise TypeError(f"annotation {hint!r} is not one testbed can check in an experiment file; use {SUPPORTED}")


def _param_from(parameter: inspect.Parameter, hint: Any) -> Param:
    default = parameter.default
    if hint is inspect.Parameter.empty:
        hint = Any if default is None else type(default)
    try:
        shape = shape_of(hint)
    except TypeError as exc:
        raise TypeError(f"parameter {parameter.name!r}: {exc}") from None
    return Param(parameter.name, default, shape)


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
    contract: dict = field(default_factory=dict)  # what the kind's CONTRACTS ask a registration to declare
    notices: tuple[str, ...] = ()  # deprecations found while registering, printed as warnings

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

    def add(
        self, kind: str, name: str, factory: Callable, help: str, *, plugin: str, version: str = "", contract: dict | None = None
    ) -> Component:
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
        declared, notices = check_contract(kind, name, factory, contract or {})
        component = Component(kind, name, factory, (help or "").strip(), params_of(factory), plugin, version, declared, notices)
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


#: What a registration of each kind may declare, as keywords of ``register(name, factory, help, **contract)``:
#: key -> (accepted values: a tuple of choices or a type, what it means). Kinds not listed declare nothing.
CONTRACTS: dict[str, dict[str, tuple[Any, str]]] = {
    "augmentation": {
        "role": (("train", "test"), "'train': goes in augment.train; 'test': test-time views for augment.test"),
    },
    "architecture": {
        "slots": (
            tuple,
            "the [model] keys besides architecture that it honours (e.g. ('activation', 'init')); any other "
            "[model] key in an experiment is refused",
        ),
        "placements": (tuple, "the placements it can be built under (default: every placement)"),
        "defaults": (dict, "[model] values used where the experiment leaves a key out (e.g. {'init': 'cuda-convnet'})"),
    },
    "dataset": {
        "image_size": (int, "the dataset's own image size, so `testbed show` need not load the data"),
        "classes": (int, "the dataset's own class count, likewise"),
    },
}


def check_contract(kind: str, name: str, factory: Callable, given: dict) -> tuple[dict, tuple[str, ...]]:
    """The declared contract of a registration, checked. The form documented before
    register() took these keywords, an attribute on the factory function
    (``cutout.role = "train"``), still counts, with a deprecation notice saying what to write;
    a class factory's class attribute counts without one (it belongs to the class)."""
    allowed = CONTRACTS.get(kind, {})
    for key in given:
        if key not in allowed:
            valid = f"it declares: {', '.join(allowed)}" if allowed else "it declares nothing"
            raise ValueError(f"register() got {key}={given[key]!r}, which a {kind} does not declare{did_you_mean(key, allowed)}; {valid}")
    declared, notices = {}, []
    for key, (accepted, _meaning) in allowed.items():
        if key in given:
            value = given[key]
        elif hasattr(factory, key):
            value = getattr(factory, key)
            if not inspect.isclass(factory):
                notices.append(
                    f"{kind} {name!r} declares {key} = {value!r} as an attribute of its factory, which is deprecated; "
                    f"write register({name!r}, {getattr(factory, '__name__', 'factory')}, help, {key}={value!r}) instead"
                )
        else:
            continue
        ok = value in accepted if isinstance(accepted, tuple) else (isinstance(value, accepted) and not isinstance(value, bool))
        if not ok:
            expected = ", ".join(repr(a) for a in accepted) if isinstance(accepted, tuple) else accepted.__name__
            raise ValueError(f"{key} = {value!r}: expected {expected}")
        declared[key] = value
    return declared, tuple(notices)


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
    raise BadInput(f'{key} = {spec!r}: expected a component name or a table {{ name = "...", ... }}')
