"""The registry (name -> factory per kind, parameters from signatures) and plugin loading."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from typing import Literal

import pytest
from click.testing import CliRunner

import testbed
from testbed import plugins
from testbed.cli import main
from testbed.errors import BadInput, ComponentError
from testbed.registry import KINDS, Registry, component_spec, params_of

# ------------------------------------------------------------------------------ throwaway components


def swish(*, beta: float = 1.0, mode: Literal["fast", "exact"] = "exact", layers: list[str] = [], limit: int | None = None):  # noqa: B006
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return ("swish", beta, mode, layers, limit)


def norm(channels: int, *, eps: float = 1e-5, affine: bool = True):
    return ("norm", channels, eps, affine)


class Pool:
    """A class factory: parameters come from __init__."""

    def __init__(self, *, size: int = 3, stride: int = 2):
        self.size, self.stride = size, stride


@pytest.fixture
def reg():
    r = Registry()
    r.add("activation", "swish", swish, "  x * sigmoid(beta x)  ", plugin="mine", version="1.2")
    r.add("activation", "plain", lambda: "plain", "no parameters", plugin="mine")
    r.add("normalization", "norm", norm, "a norm", plugin="mine")
    r.add("pooling", "pool", Pool, "a pool", plugin="theirs")
    return r


# ------------------------------------------------------------------------------ Registry


def test_every_kind_has_a_registry():
    assert set(Registry().components) == set(KINDS)


def test_registration_records_plugin_help_and_params(reg):
    c = reg.get("activation", "swish")
    assert (c.kind, c.name, c.plugin, c.version, c.help) == ("activation", "swish", "mine", "1.2", "x * sigmoid(beta x)")
    assert c.defaults() == {"beta": 1.0, "mode": "exact", "layers": [], "limit": None}
    assert [p["name"] for p in c.as_dict()["params"]] == ["beta", "mode", "layers", "limit"]
    assert reg.names("activation") == ["plain", "swish"]


def test_positional_arguments_are_context_not_parameters(reg):
    assert [p.name for p in reg.get("normalization", "norm").params] == ["eps", "affine"]
    assert reg.create("normalization", {"name": "norm", "eps": 1}, 64) == ("norm", 64, 1.0, True)


def test_class_factory_params_come_from_init(reg):
    assert reg.get("pooling", "pool").defaults() == {"size": 3, "stride": 2}
    pool = reg.create("pooling", {"name": "pool", "size": 2})
    assert (pool.size, pool.stride) == (2, 2)


def test_keyword_only_parameter_needs_a_default():
    def bad(*, size):
        return size

    with pytest.raises(TypeError, match="'size' needs a default"):
        params_of(bad)


def test_a_parameter_called_name_is_refused():
    """`name` in a component table selects the component; a parameter of that name would shadow it."""

    def shadowing(*, name: str = "x"):
        return name

    with pytest.raises(TypeError, match="cannot be called 'name'"):
        params_of(shadowing)


def test_unknown_kind_and_nameless_component_are_refused():
    r = Registry()
    with pytest.raises(ValueError, match="unknown component kind 'activations'"):
        r.add("activations", "x", swish, "", plugin="p")
    with pytest.raises(ValueError, match="plugin 'p' registered a activation without a name"):
        r.add("activation", "", swish, "", plugin="p")


def test_same_name_twice_names_both_plugins(reg):
    with pytest.raises(BadInput) as info:
        reg.add("activation", "swish", swish, "", plugin="yours")
    message = str(info.value)
    assert "activation 'swish' is registered twice" in message
    assert "'mine'" in message and "'yours'" in message


def test_same_name_in_two_kinds_is_fine(reg):
    reg.add("pooling", "swish", Pool, "", plugin="other")
    assert reg.get("pooling", "swish").plugin == "other"


def test_unknown_name_lists_the_known_ones(reg):
    with pytest.raises(BadInput) as info:
        reg.get("activation", "swsh", "model.activation")
    assert str(info.value) == "model.activation = 'swsh': unknown activation (did you mean 'swish'?); choices: plain, swish"
    with pytest.raises(BadInput, match=r"^pooling = 'zzz': unknown pooling; choices: pool$"):
        reg.get("pooling", "zzz")
    with pytest.raises(BadInput, match="choices: none registered"):
        reg.get("dataset", "anything")


@pytest.mark.parametrize("spec", [["swish"], 3, None])
def test_spec_must_be_a_name_or_table(reg, spec):
    with pytest.raises(BadInput, match=r"^model.activation = .*expected a component name or a table"):
        reg.resolve("activation", spec, "model.activation")


def test_component_spec():
    assert component_spec("relu", "k") == {"name": "relu"}
    assert component_spec({"name": "lrn", "k": 1}, "k") == {"name": "lrn", "k": 1}
    with pytest.raises(BadInput, match=r"^k: a component table needs a 'name' \(got keys k\)"):
        component_spec({"k": 1}, "k")
    with pytest.raises(BadInput, match=r"^k\.name = 3: expected a component name"):
        component_spec({"name": 3}, "k")


# ------------------------------------------------------------------------------ parameters


def test_resolve_fills_defaults(reg):
    component, params = reg.resolve("activation", "swish", "model.activation")
    assert component.name == "swish"
    assert params == {"beta": 1.0, "mode": "exact", "layers": [], "limit": None}


def test_int_is_widened_to_float(reg):
    _, params = reg.resolve("activation", {"name": "swish", "beta": 2}, "k")
    assert params["beta"] == 2.0 and isinstance(params["beta"], float)


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {"bta": 2.0},
            r"^k\.bta: unknown parameter of activation 'swish' \(did you mean 'beta'\?\); valid parameters: beta, layers, limit, mode$",
        ),
        ({"zzz": 1}, r"^k\.zzz: unknown parameter of activation 'swish'; valid parameters: beta, layers, limit, mode$"),
        ({"beta": "big"}, r"^k\.beta = 'big': expected float, got str$"),
        ({"beta": True}, r"^k\.beta = True: expected float, got bool$"),
        ({"beta": [1]}, r"^k\.beta = \[1\]: expected float, got list$"),
        ({"beta": float("nan")}, r"^k\.beta = nan: expected a finite number$"),
        ({"beta": float("inf")}, r"^k\.beta = inf: expected a finite number$"),
        ({"beta": 10**400}, r"^k\.beta = 1000.*\.\.\.: too large"),
        ({"mode": "fsat"}, r"^k\.mode = 'fsat': not a valid choice; choose one of 'fast', 'exact' \(did you mean 'fast'\?\)$"),
        ({"mode": 1}, r"^k\.mode = 1: not a valid choice; choose one of 'fast', 'exact'$"),
        ({"layers": "conv1"}, r"^k\.layers = 'conv1': expected list of str, got str$"),
        ({"layers": ["conv1", 2]}, r"^k\.layers\[1\] = 2: expected str, got int$"),
        ({"limit": 1.5}, r"^k\.limit = 1\.5: expected int or none, got float$"),
        ({"limit": False}, r"^k\.limit = False: expected int or none, got bool$"),
        ({"limit": 2**63}, r"^k\.limit = 9223372036854775808: too large"),
        ({"limit": -(2**63) - 1}, r"^k\.limit = -9223372036854775809: too large"),
        ({"mode": "x" * 500}, r"^k\.mode = 'x{50,}\.\.\.: not a valid choice"),
    ],
)
def test_bad_parameters(reg, params, message):
    with pytest.raises(BadInput, match=message) as info:
        reg.resolve("activation", {"name": "swish", **params}, "k")
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "params",
    [{"mode": "fast"}, {"layers": ["conv1", "fc6"]}, {"limit": None}, {"limit": 7}, {"limit": 2**63 - 1}, {"beta": 0.5}],
)
def test_good_parameters(reg, params):
    _, resolved = reg.resolve("activation", {"name": "swish", **params}, "k")
    for key, value in params.items():
        assert resolved[key] == value


def test_parameterless_component(reg):
    with pytest.raises(BadInput, match=r"^k\.x: unknown parameter of activation 'plain'; it takes no parameters$"):
        reg.resolve("activation", {"name": "plain", "x": 1}, "k")
    assert reg.create("activation", "plain") == "plain"


def test_bool_parameter_refuses_ints(reg):
    with pytest.raises(BadInput, match=r"^k\.affine = 1: expected bool, got int$"):
        reg.resolve("normalization", {"name": "norm", "affine": 1}, "k")


def test_factory_value_error_names_component_and_plugin(reg):
    with pytest.raises(ComponentError) as info:
        reg.create("activation", {"name": "swish", "beta": -1}, key="model.activation")
    assert str(info.value) == "model.activation: activation 'swish' (plugin mine) refused: beta must be > 0, got -1.0"
    assert info.value.plugin == "mine"
    assert isinstance(info.value, BadInput)  # so the CLI reports it as bad input (exit 2)


def test_builtin_parameters_are_described(registry):
    lrn = registry.get("normalization", "lrn").as_dict()
    types = {p["name"]: p["type"] for p in lrn["params"]}
    assert types["alpha_convention"] == "one of 'divided-by-n', 'per-term'"
    assert types["size"] == "int" and types["k"] == "float"


# ------------------------------------------------------------------------------ plugins through pluggy


class SwishPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        register("swish", swish, "x * sigmoid(x)")


class OtherSwishPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        register("swish", lambda: None, "another swish")


class ReluAgainPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        register("relu", lambda: None, "a second relu")


class BrokenHookPlugin:
    @testbed.hookimpl
    def register_poolings(self, register):
        raise RuntimeError("boom")


def test_a_plugin_adds_components(register_plugin):
    reg = register_plugin(SwishPlugin(), "swish-plugin")
    component = reg.get("activation", "swish")
    assert component.plugin == "swish-plugin" and component.defaults()["beta"] == 1.0
    assert reg.get("activation", "relu").plugin == "builtin.activations"  # the built-ins are still there


def test_two_plugins_one_name_is_an_error_naming_both(register_plugin):
    register_plugin(SwishPlugin(), "first-plugin")
    with pytest.raises(BadInput) as info:
        register_plugin(OtherSwishPlugin(), "second-plugin")
    message = str(info.value)
    assert "activation 'swish' is registered twice" in message
    assert "'first-plugin'" in message and "'second-plugin'" in message


def test_a_plugin_reusing_a_builtin_name_is_an_error(register_plugin):
    with pytest.raises(BadInput, match=r"^activation 'relu' is registered twice: by plugin '.*' and by plugin '.*'") as info:
        register_plugin(ReluAgainPlugin(), "relu-again")
    assert "'builtin.activations'" in str(info.value) and "'relu-again'" in str(info.value)


def test_duplicate_names_exit_2_on_the_command_line(register_plugin, tmp_path):
    register_plugin(SwishPlugin(), "first-plugin")
    with pytest.raises(BadInput):
        register_plugin(OtherSwishPlugin(), "second-plugin")
    for argv in (["plugins"], ["show", str(tmp_path / "missing.toml")]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: activation 'swish' is registered twice")
        assert "first-plugin" in lines[0] and "second-plugin" in lines[0]
        assert "Traceback" not in result.output


def test_a_failing_hook_is_reported_and_the_rest_load(register_plugin):
    reg = register_plugin(BrokenHookPlugin(), "broken-hook")
    assert "overlapping" in reg.names("pooling")
    assert any("plugin 'broken-hook' failed in register_poolings: RuntimeError: boom" in e for e in plugins.state().load_errors)


# ------------------------------------------------------------------------------ entry points


GOOD_PLUGIN = """
import testbed

def gelu2(*, approximate: bool = False):
    from torch import nn

    return nn.GELU(approximate="tanh" if approximate else "none")

@testbed.hookimpl
def register_activations(register):
    register("gelu2", gelu2, "a GELU from an installed package")
"""


@pytest.fixture
def entry_points(tmp_path, monkeypatch):
    """Installed plugins: a good one, one whose module is missing and one that raises on import."""
    (tmp_path / "tb_good_plugin.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    (tmp_path / "tb_raising_plugin.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [
        EntryPoint("missing", "tb_no_such_module_anywhere", "testbed"),
        EntryPoint("raising", "tb_raising_plugin", "testbed"),
        EntryPoint("good", "tb_good_plugin", "testbed"),
    ]
    seen_groups = []

    def fake_entry_points(*, group):
        seen_groups.append(group)
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(plugins, "entry_points", fake_entry_points)
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.LOAD_ONLY_ENV, raising=False)
    plugins.reset()
    yield seen_groups
    plugins.reset()
    for name in ("tb_good_plugin", "tb_raising_plugin"):
        sys.modules.pop(name, None)


def test_a_broken_entry_point_is_reported_by_name_and_the_rest_load(entry_points):
    reg = plugins.registry()
    assert entry_points == ["testbed"]
    assert reg.get("activation", "gelu2").plugin == "good"
    assert "relu" in reg.names("activation")  # built-ins unaffected
    errors = plugins.state().load_errors
    assert len(errors) == 2
    assert errors[0].startswith("plugin 'missing' (tb_no_such_module_anywhere) failed to load: ModuleNotFoundError")
    assert errors[1] == "plugin 'raising' (tb_raising_plugin) failed to load: RuntimeError: half-installed"


def test_only_the_named_entry_points_load(entry_points, monkeypatch):
    monkeypatch.setenv(plugins.LOAD_ONLY_ENV, "good")
    plugins.reset()
    reg = plugins.registry()
    assert "gelu2" in reg.names("activation")
    assert plugins.state().load_errors == []


def test_autoload_can_be_disabled(entry_points, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    plugins.reset()
    assert "gelu2" not in plugins.registry().names("activation")
    assert entry_points == []


def test_broken_entry_point_warns_on_the_command_line(entry_points, tmp_path):
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert "gelu2" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(line.startswith("warning: plugin '") for line in warnings)
    assert "'missing'" in warnings[0] and "'raising'" in warnings[1]
    # and a good experiment using the installed plugin's component still loads
    (tmp_path / "exp.toml").write_text('[model]\nactivation = { name = "gelu2", approximate = true }\n')
    result = CliRunner().invoke(main, ["show", str(tmp_path / "exp.toml"), "--json"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------ generic annotations


def shaped(
    *,
    kernel: tuple[int, int] = (3, 3),
    sizes: tuple[int, ...] = (),
    std: dict[str, float] = {"conv1": 0.01},  # noqa: B006
    scale: float | None = None,
    order: Literal[1, 2] = 1,
    names: list[str] | None = None,
):
    return (kernel, sizes, std, scale, order, names)


def test_generic_annotations_register_and_check_values():
    reg = Registry()
    reg.add("init", "shaped", shaped, "generic parameters", plugin="mine")  # raised TypeError: parameterized generic
    component, params = reg.resolve("init", {"name": "shaped"}, "k")
    assert params == {"kernel": (3, 3), "sizes": (), "std": {"conv1": 0.01}, "scale": None, "order": 1, "names": None}
    _, params = reg.resolve(
        "init", {"name": "shaped", "kernel": [5, 5], "sizes": [1, 2, 3], "std": {"fc8": 1}, "order": 2, "names": ["a"]}, "k"
    )
    assert params["kernel"] == (5, 5) and params["sizes"] == (1, 2, 3)
    assert params["std"] == {"fc8": 1.0} and isinstance(params["std"]["fc8"], float)
    assert (params["order"], params["names"]) == (2, ["a"])
    types = {p["name"]: p["type"] for p in component.as_dict()["params"]}
    assert types["kernel"] == "list [int, int]" and types["std"] == "table of str = float" and types["order"] == "one of 1, 2"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"kernel": [5]}, r"^k\.kernel = \[5\]: expected list \[int, int\]$"),
        ({"kernel": [5, "a"]}, r"^k\.kernel\[1\] = 'a': expected int, got str$"),
        ({"sizes": [1, 2.5]}, r"^k\.sizes\[1\] = 2\.5: expected int, got float$"),
        ({"std": {"conv1": "big"}}, r"^k\.std\.conv1 = 'big': expected float, got str$"),
        ({"std": [1.0]}, r"^k\.std = \[1\.0\]: expected table of str = float, got list$"),
        ({"order": 3}, r"^k\.order = 3: not a valid choice; choose one of 1, 2$"),
        ({"order": True}, r"^k\.order = True: not a valid choice"),
        ({"names": "a"}, r"^k\.names = 'a': expected list of str or none, got str$"),
    ],
)
def test_generic_parameters_refuse_bad_values(params, message):
    reg = Registry()
    reg.add("init", "shaped", shaped, "", plugin="mine")
    with pytest.raises(BadInput, match=message):
        reg.resolve("init", {"name": "shaped", **params}, "k")


def test_unsupported_annotations_are_refused_at_registration_with_what_is_supported():
    def bad(*, layers: set[str] = frozenset()):  # noqa: B006
        return layers

    with pytest.raises(TypeError, match=r"parameter 'layers': annotation set\[str\] is not one testbed can check.*tuple\[X, Y\]"):
        params_of(bad)

    def keyed(*, table: dict[int, float] = {}):  # noqa: B006
        return table

    with pytest.raises(TypeError, match="dict keys must be str"):
        params_of(keyed)


def test_a_plugin_with_an_unsupported_annotation_loses_that_component_only(register_plugin):
    class Plugin:
        @testbed.hookimpl
        def register_activations(self, register):
            def odd(*, widths: set[int] = frozenset()):  # noqa: B006
                return widths

            register("odd", odd, "refused")
            register("fine", swish, "kept")

    reg = register_plugin(Plugin(), "generic-plugin")
    assert "fine" in reg.names("activation") and "odd" not in reg.names("activation")
    assert any("plugin 'generic-plugin' could not register activation 'odd'" in e and "set[int]" in e for e in plugins.state().load_errors)


# ------------------------------------------------------------------------------ contracts and pluggy


def test_contracts_are_declared_at_registration_and_checked(registry):
    assert registry.get("augmentation", "random-crop").contract == {"role": "train"}
    assert registry.get("augmentation", "ten-crop").contract == {"role": "test"}
    assert registry.get("dataset", "synthetic").contract == {"image_size": 32, "classes": 10}
    reg = Registry()
    with pytest.raises(ValueError, match=r"register\(\) got rol='train', which a augmentation does not declare \(did you mean 'role'\?\)"):
        reg.add("augmentation", "x", lambda ctx: None, "", plugin="p", contract={"rol": "train"})
    with pytest.raises(ValueError, match=r"role = 'both': expected 'train', 'test'"):
        reg.add("augmentation", "x", lambda ctx: None, "", plugin="p", contract={"role": "both"})
    with pytest.raises(ValueError, match="which a activation does not declare; it declares nothing"):
        reg.add("activation", "x", lambda: None, "", plugin="p", contract={"role": "train"})


class OldStylePlugin:
    """A plugin written against the docs before register() took contract keywords."""

    @testbed.hookimpl
    def register_augmentations(self, register):
        def shift(ctx, *, pixels: int = 1):
            return lambda x, generator: x.roll(pixels, -1)

        shift.role = "train"
        register("shift", shift, "roll the image [train]")

    @testbed.hookimpl
    def register_datasets(self, register):
        from testbed_builtins.datasets import synthetic

        def tiny(request):
            return synthetic(request)

        tiny.image_size, tiny.classes = 16, 3
        register("tiny", tiny, "declared by attributes")


def test_an_old_style_plugin_keeps_working_with_a_deprecation_warning(register_plugin, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"write register\('shift', shift, help, role='train'\) instead"):
        reg = register_plugin(OldStylePlugin(), "old-style")
    assert reg.get("augmentation", "shift").contract == {"role": "train"}
    assert reg.get("dataset", "tiny").contract == {"image_size": 16, "classes": 3}
    notices = [n for n in plugins.state().notices if n.startswith("plugin 'old-style'")]
    assert len(notices) == 3 and all("deprecated" in n for n in notices)
    # the role still decides where it may go, and show still needs no data
    (tmp_path / "old.toml").write_text('[data]\ndataset = "tiny"\n[augment]\ntest = "shift"\n')
    result = CliRunner().invoke(main, ["show", str(tmp_path / "old.toml")])
    assert result.exit_code == 2 and "'shift' is a train augmentation" in result.stderr
    assert "warning: plugin 'old-style': augmentation 'shift' declares role = 'train'" in result.stderr  # once per process
    (tmp_path / "old.toml").write_text('[data]\ndataset = "tiny"\n[augment]\ntrain = ["shift"]\ntest = "center"\n[model]\nwidth = 0.125\n')
    result = CliRunner().invoke(main, ["show", str(tmp_path / "old.toml"), "--json"])
    assert result.exit_code == 0, result.output


class TryFirstPlugin:
    @testbed.hookimpl(tryfirst=True)
    def register_activations(self, register):
        calls.append("tryfirst")
        register("first", swish, "")


class WrapperPlugin:
    @testbed.hookimpl(wrapper=True)
    def register_activations(self, register):
        calls.append("wrapper before")
        result = yield
        calls.append("wrapper after")
        return result


calls: list[str] = []


def test_hooks_are_called_through_pluggy_with_its_ordering_and_wrappers(register_plugin):
    register_plugin(WrapperPlugin(), "wrapper")
    calls.clear()
    reg = register_plugin(TryFirstPlugin(), "try-first")
    assert calls == ["wrapper before", "tryfirst", "wrapper after"]
    assert reg.get("activation", "first").plugin == "try-first"
    assert reg.get("activation", "relu").plugin == "builtin.activations"


class SharedHelperPlugin:
    """Registers through a helper defined elsewhere: the registration is still its own."""

    @testbed.hookimpl
    def register_activations(self, register):
        _register_for_someone(register)


def _register_for_someone(register):
    register("helped", swish, "")


def test_registrations_are_attributed_to_the_calling_plugin_even_through_helpers(register_plugin):
    register_plugin(SwishPlugin(), "one")
    reg = register_plugin(SharedHelperPlugin(), "two")
    assert reg.get("activation", "swish").plugin == "one" and reg.get("activation", "helped").plugin == "two"


class HalfBrokenPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        register("before-boom", swish, "")
        raise RuntimeError("boom after one")


def test_a_raising_plugin_keeps_what_it_registered_and_does_not_cost_the_others(register_plugin):
    register_plugin(SwishPlugin(), "good-one")
    reg = register_plugin(HalfBrokenPlugin(), "half-broken")
    assert reg.get("activation", "before-boom").plugin == "half-broken"
    assert reg.get("activation", "swish").plugin == "good-one" and "relu" in reg.names("activation")
    assert any(
        "plugin 'half-broken' failed in register_activations: RuntimeError: boom after one" in e for e in plugins.state().load_errors
    )


class MisspelledHookPlugin:
    @testbed.hookimpl
    def register_activation(self, register):  # the hook is register_activations
        register("never", swish, "")


def test_a_misspelled_hook_is_reported_not_ignored(register_plugin):
    reg = register_plugin(MisspelledHookPlugin(), "typo")
    assert "never" not in reg.names("activation")
    errors = [e for e in plugins.state().load_errors if "'typo'" in e]
    assert len(errors) == 1
    assert "implements 'register_activation', which is not a testbed hook (did you mean 'register_activations'?)" in errors[0]
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert "did you mean 'register_activations'" in result.stderr


def test_two_distributions_with_one_entry_point_name_warn_naming_both(tmp_path, monkeypatch):
    (tmp_path / "tb_first_dist.py").write_text(textwrap.dedent(GOOD_PLUGIN))
    (tmp_path / "tb_second_dist.py").write_text(textwrap.dedent(GOOD_PLUGIN).replace("gelu2", "gelu3"))
    monkeypatch.syspath_prepend(str(tmp_path))

    class Dist:
        def __init__(self, name):
            self.name, self.version = name, "1.0"

    eps = []
    for module, dist in (("tb_first_dist", "first-dist"), ("tb_second_dist", "second-dist")):
        ep = EntryPoint("same-name", module, "testbed")
        eps.append(ep._for(Dist(dist)) if hasattr(ep, "_for") else ep)
    monkeypatch.setattr(plugins, "entry_points", lambda *, group: eps)
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    plugins.reset()
    try:
        reg = plugins.registry()
        assert "gelu2" in reg.names("activation") and "gelu3" not in reg.names("activation")
        notice = next(n for n in plugins.state().notices if "same-name" in n)
        assert "first-dist" in notice and "second-dist" in notice and "only the first is loaded" in notice
    finally:
        plugins.reset()
        for name in ("tb_first_dist", "tb_second_dist"):
            sys.modules.pop(name, None)


class MarkupHelpPlugin:
    @testbed.hookimpl
    def register_activations(self, register):
        register("[bold red]loud", swish, "keeps its [train] tag and shows [bold red] as written")


def test_plugins_prints_help_as_text_not_rich_markup(register_plugin):
    register_plugin(MarkupHelpPlugin(), "markup")
    result = CliRunner().invoke(main, ["plugins"], terminal_width=250)
    assert result.exit_code == 0, result.output
    assert "keeps its [train] tag and shows [bold red] as written" in result.stdout
    assert "[bold red]loud" in result.stdout
    assert "random patches (paper: 227 of 256; 32 px data: pad 4, crop 32) [train]" in result.stdout  # a built-in's tag
