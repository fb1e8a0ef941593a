"""The plugin manager: built-ins first, then installed packages' ``testbed`` entry points.

Built-in components are registered exactly as a third-party plugin's are: the modules of
``testbed_builtins`` implement the hooks in hookspecs.py. Every ``register_*`` hook is called
through pluggy (so ``tryfirst``/``trylast`` and hook wrappers work as pluggy documents them),
once per component kind, with a ``register`` callback that records which plugin made each
registration.

Environment:
- ``TESTBED_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points (only built-ins load).
- ``TESTBED_LOAD_PLUGINS=a,b`` loads only the entry points with those names.

The manager and the registry it builds live in one module-level ``PluginState``, built on first
use: a command is one process that loads its plugins once. Tests that add throwaway plugins
call ``reset()`` or ``invalidate_registry()`` around them (see tests/conftest.py), as pytest's
own tests make a fresh plugin manager per run.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from testbed import __version__, hookspecs
from testbed.errors import BadInput, did_you_mean
from testbed.registry import KINDS, Registry

ENTRY_POINT_GROUP = "testbed"
DISABLE_AUTOLOAD_ENV = "TESTBED_DISABLE_PLUGIN_AUTOLOAD"
LOAD_ONLY_ENV = "TESTBED_LOAD_PLUGINS"

BUILTIN_MODULES = (
    "testbed_builtins.datasets",
    "testbed_builtins.imagefolder",
    "testbed_builtins.preprocess",
    "testbed_builtins.augmentations",
    "testbed_builtins.architectures",
    "testbed_builtins.activations",
    "testbed_builtins.normalizations",
    "testbed_builtins.poolings",
    "testbed_builtins.inits",
    "testbed_builtins.placements",
    "testbed_builtins.optimizers",
    "testbed_builtins.schedules",
    "testbed_builtins.executors",
    "testbed_builtins.trackers",
)

# hook name -> registry kind
HOOK_KINDS = {
    "register_datasets": "dataset",
    "register_preprocessors": "preprocess",
    "register_augmentations": "augmentation",
    "register_architectures": "architecture",
    "register_activations": "activation",
    "register_normalizations": "normalization",
    "register_poolings": "pooling",
    "register_inits": "init",
    "register_placements": "placement",
    "register_optimizers": "optimizer",
    "register_schedules": "schedule",
    "register_executors": "executor",
    "register_trackers": "tracker",
}
assert sorted(HOOK_KINDS.values()) == sorted(KINDS)


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    versions: dict[str, str] = field(default_factory=dict)  # plugin name -> version
    load_errors: list[str] = field(default_factory=list)  # one line per plugin that failed to load
    notices: list[str] = field(default_factory=list)  # deprecations and other warnings about plugins
    registry: Registry | None = None
    warned: set[str] = field(default_factory=set)  # lines already printed by warn_load_errors


_state: PluginState | None = None


def _autoload_wanted() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")


def _new_state() -> PluginState:
    manager = pluggy.PluginManager("testbed")
    manager.add_hookspecs(hookspecs)
    state = PluginState(manager)
    for module_name in BUILTIN_MODULES:
        name = "builtin." + module_name.rsplit(".", 1)[1]
        manager.register(importlib.import_module(module_name), name=name)
        state.versions[name] = __version__
    if _autoload_wanted():
        _load_entry_points(state)
    return state


def _load_entry_points(state: PluginState) -> None:
    only = {n.strip() for n in os.environ.get(LOAD_ONLY_ENV, "").split(",") if n.strip()}
    available = list(entry_points(group=ENTRY_POINT_GROUP))
    for name in sorted(only - {ep.name for ep in available}):
        state.load_errors.append(f"{LOAD_ONLY_ENV} names '{name}', but no installed plugin has that entry point")
    loaded: dict[str, str] = {}  # entry-point name -> the distribution that provided it
    for ep in available:
        if only and ep.name not in only:
            continue
        dist = ep.dist.name if ep.dist else ep.value
        if ep.name in loaded or state.manager.has_plugin(ep.name):
            state.notices.append(
                f"two installed plugins use the entry-point name '{ep.name}' ({loaded.get(ep.name, 'testbed')} and {dist}); "
                f"only the first is loaded: uninstall one, or rename its [project.entry-points.testbed] entry"
            )
            continue
        try:
            module = ep.load()
            state.manager.register(module, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the others down
            state.load_errors.append(f"plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
            continue
        loaded[ep.name] = dist
        state.versions[ep.name] = ep.dist.version if ep.dist else ""
    _check_hook_names(state)


def _check_hook_names(state: PluginState) -> None:
    """A function marked @hookimpl whose name is no hook (``register_activation`` for
    ``register_activations``) would never be called. pluggy's ``check_pending`` finds such
    implementations but stops at the first; this reports every one, with a "did you mean"."""
    for hook_name in sorted(vars(state.manager.hook)):
        hook = getattr(state.manager.hook, hook_name)
        if hook_name.startswith("_") or hook.has_spec():
            continue
        for impl in hook.get_hookimpls():
            if impl.optionalhook:
                continue
            line = (
                f"plugin '{impl.plugin_name}' implements '{hook_name}', which is not a testbed hook"
                f"{did_you_mean(hook_name, HOOK_KINDS)}, so it is never called; hooks: {', '.join(HOOK_KINDS)}"
            )
            if line not in state.load_errors:
                state.load_errors.append(line)


def state() -> PluginState:
    global _state
    if _state is None:
        _state = _new_state()
    return _state


def manager() -> pluggy.PluginManager:
    return state().manager


def reset() -> None:
    """Forget loaded plugins and the registry (tests use this around throwaway plugins)."""
    global _state
    _state = None


def invalidate_registry() -> None:
    """Rebuild the registry on next use (after registering or unregistering a plugin)."""
    if _state is not None:
        _state.registry = None


def registry() -> Registry:
    """Every component from every loaded plugin; built once per process."""
    st = state()
    if st.registry is None:
        _check_hook_names(st)  # plugins registered by hand since the state was made
        registry = Registry()
        for hook_name, kind in HOOK_KINDS.items():
            _call_register_hook(st, registry, hook_name, kind)
        st.registry = registry
    return st.registry


class _Registrar:
    """The ``register`` callback one hook call hands to every implementation. It finds the
    plugin that is calling it on the stack: the frame running one of the hook's
    implementations, which pluggy has called and which is therefore still below us."""

    def __init__(self, st: PluginState, kind: str, impls: list):
        self.st, self.kind = st, kind
        self.made: list[tuple[str, tuple, dict]] = []  # (plugin, register args, contract)
        self.by_code: dict[types.CodeType, list] = {}
        for impl in impls:
            function = getattr(impl.function, "__func__", impl.function)
            self.by_code.setdefault(function.__code__, []).append(impl)

    def calling_impl(self, frame):
        while frame is not None:
            impls = self.by_code.get(frame.f_code)
            if impls:
                owner = frame.f_locals.get("self")
                return next((i for i in impls if i.plugin is owner), impls[0])
            frame = frame.f_back
        return None

    def __call__(self, name, factory, help="", **contract):
        impl = self.calling_impl(sys._getframe(1))
        if impl is None:
            raise RuntimeError(f"register({name!r}) was called outside a register_* hook; call it from inside the hook")
        self.made.append((impl.plugin_name, (name, factory, help), contract))


def _call_register_hook(st: PluginState, registry: Registry, hook_name: str, kind: str) -> None:
    """Call one register_* hook through pluggy. An implementation that raises is reported, what
    it registered before raising is kept, and the hook is called again without that plugin, so
    a broken plugin cannot take the other plugins' components with it."""
    hook = getattr(st.manager.hook, hook_name)
    excluded: list = []
    kept: list = []
    while True:
        caller = st.manager.subset_hook_caller(hook_name, remove_plugins=excluded) if excluded else hook
        registrar = _Registrar(st, kind, caller.get_hookimpls())
        try:
            caller(register=registrar)
            break
        except BadInput:  # a duplicate name raised by register below: the user must choose
            raise
        except Exception as exc:
            impl = _raising_impl(registrar, exc)
            if impl is None:
                raise
            st.load_errors.append(f"plugin '{impl.plugin_name}' failed in {hook_name}: {type(exc).__name__}: {exc}")
            kept += [made for made in registrar.made if made[0] == impl.plugin_name]
            excluded.append(impl.plugin)
    # in the order the plugins were registered (built-ins first), whatever order pluggy called them in
    for plugin, (name, factory, help), contract in _in_plugin_order(st, registrar.made + kept):
        _add(st, registry, kind, plugin, name, factory, help, contract)


def _in_plugin_order(st: PluginState, made: list) -> list:
    order = {name: i for i, (name, _plugin) in enumerate(st.manager.list_name_plugin())}  # registration order
    return sorted(made, key=lambda m: order.get(m[0], len(order)))  # stable: a plugin's own order kept


def _raising_impl(registrar: _Registrar, exc: BaseException):
    """The implementation whose frame the exception passed through, innermost first."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        impls = registrar.by_code.get(tb.tb_frame.f_code)
        if impls:
            owner = tb.tb_frame.f_locals.get("self")
            found = next((i for i in impls if i.plugin is owner), impls[0])
        tb = tb.tb_next
    return found


def _add(st: PluginState, registry: Registry, kind: str, plugin: str, name, factory, help, contract: dict) -> None:
    try:
        component = registry.add(kind, name, factory, help, plugin=plugin, version=st.versions.get(plugin, ""), contract=contract)
    except BadInput:
        raise
    except Exception as exc:  # one bad registration must not drop the plugin's others
        st.load_errors.append(f"plugin '{plugin}' could not register {kind} {name!r}: {exc}")
        return
    for notice in component.notices:
        st.notices.append(f"plugin '{plugin}': {notice}")
        warnings.warn(f"testbed plugin '{plugin}': {notice}", DeprecationWarning, stacklevel=2)


def warn_load_errors() -> None:
    """Print each load error and notice once, as ``warning:`` lines on stderr."""
    st = state()
    for line in st.load_errors + st.notices:
        if line not in st.warned:
            st.warned.add(line)
            print(f"warning: {line}", file=sys.stderr)


def blame(exc: BaseException) -> str:
    """The plugin whose code raised: the innermost traceback frame inside a registered plugin module."""
    modules = {}
    for plugin in manager().get_plugins():  # a plugin is a module, or an object whose class lives in one
        module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        modules[module] = manager().get_name(plugin)
    found = "testbed"
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        for name, plugin in modules.items():
            if module == name or module.startswith(name + "."):
                found = plugin
        tb = tb.tb_next
    return found
