"""The plugin manager: built-ins first, then installed packages' ``testbed`` entry points.

Built-in components are registered exactly as a third-party plugin's are: modules of
``testbed_builtins`` implementing the hooks in hookspecs.py.

Environment:
- ``TESTBED_DISABLE_PLUGIN_AUTOLOAD=1`` skips entry points (only built-ins load).
- ``TESTBED_LOAD_PLUGINS=a,b`` loads only the entry points with those names.
"""

from __future__ import annotations

import importlib
import os
import types
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from testbed import __version__, hookspecs
from testbed.errors import BadInput
from testbed.registry import KINDS, Registry

ENTRY_POINT_GROUP = "testbed"
DISABLE_AUTOLOAD_ENV = "TESTBED_DISABLE_PLUGIN_AUTOLOAD"
LOAD_ONLY_ENV = "TESTBED_LOAD_PLUGINS"

BUILTIN_MODULES = (
    "testbed_builtins.datasets",
    "testbed_builtins.imagefolder",
    "testbed_builtins.preprocess",
    "testbed_builtins.augmentations",
    "testbed_builtins.activations",
    "testbed_builtins.normalizations",
    "testbed_builtins.poolings",
    "testbed_builtins.inits",
    "testbed_builtins.placements",
    "testbed_builtins.optimizers",
    "testbed_builtins.schedules",
)

# hook name -> registry kind
HOOK_KINDS = {
    "register_datasets": "dataset",
    "register_preprocessors": "preprocess",
    "register_augmentations": "augmentation",
    "register_activations": "activation",
    "register_normalizations": "normalization",
    "register_poolings": "pooling",
    "register_inits": "init",
    "register_placements": "placement",
    "register_optimizers": "optimizer",
    "register_schedules": "schedule",
}
assert sorted(HOOK_KINDS.values()) == sorted(KINDS)


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    versions: dict[str, str] = field(default_factory=dict)  # plugin name -> version
    load_errors: list[str] = field(default_factory=list)  # one line per plugin that failed to load
    registry: Registry | None = None


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
        only = {n.strip() for n in os.environ.get(LOAD_ONLY_ENV, "").split(",") if n.strip()}
        available = entry_points(group=ENTRY_POINT_GROUP)
        for name in sorted(only - {ep.name for ep in available}):
            state.load_errors.append(f"{LOAD_ONLY_ENV} names '{name}', but no installed plugin has that entry point")
        for ep in available:
            if only and ep.name not in only:
                continue
            if manager.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
                manager.register(module, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                state.load_errors.append(f"plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}")
                continue
            state.versions[ep.name] = ep.dist.version if ep.dist else ""
    return state


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
        st.registry = _collect(st)
    return st.registry


def _collect(st: PluginState) -> Registry:
    reg = Registry()
    for hook_name, kind in HOOK_KINDS.items():
        hook = getattr(st.manager.hook, hook_name)
        # Call each implementation ourselves so every registration knows which plugin made it.
        for impl in reversed(hook.get_hookimpls()):  # pluggy lists the last registered first: undo that
            plugin = impl.plugin_name
            version = st.versions.get(plugin, "")

            def register(name, factory, help="", *, _kind=kind, _plugin=plugin, _version=version):
                try:
                    reg.add(_kind, name, factory, help, plugin=_plugin, version=_version)
                except BadInput:
                    raise
                except Exception as exc:  # one bad registration must not drop the plugin's others
                    st.load_errors.append(f"plugin '{_plugin}' could not register {_kind} {name!r}: {exc}")

            try:
                impl.function(register=register)
            except BadInput:  # two plugins claim one name: the user must choose, so stop here
                raise
            except Exception as exc:
                st.load_errors.append(f"plugin '{plugin}' failed in {hook_name}: {type(exc).__name__}: {exc}")
    return reg


def warn_load_errors() -> None:
    for line in state().load_errors:
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
