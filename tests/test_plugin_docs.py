"""docs/writing-plugins.md and examples/testbed-example stay true to the hook API.

(a) every hook in testbed/hookspecs.py is documented with its signature, under a heading of
its own that names its component kind; (b) the example plugin module registers its components
under its plugin name; (c) the example experiment runs through the CLI with the example
package autoloaded from its entry point (needs `pip install -e examples/testbed-example`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

import pluggy
import pytest
import torch

from testbed import hookimpl, hookspecs, plugins
from testbed.errors import BadInput
from testbed.registry import KINDS

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "writing-plugins.md"
EXAMPLE = REPO / "examples" / "testbed-example"
EXAMPLE_MODULE = "testbed_example_plugins"
EXAMPLE_ENTRY_POINT = "testbed-example"  # [project.entry-points.testbed] in its pyproject.toml
EXAMPLE_COMPONENTS = {
    "activation": ("swish", "mish"),
    "normalization": ("groupnorm",),
    "augmentation": ("cutout",),
    "dataset": ("gratings",),
    "architecture": ("tiny-cnn",),
}


# ---------------------------------------------------------------------------- (a) the reference


def hookspec_functions() -> dict:
    """name -> function for every function in testbed.hookspecs marked with @hookspec."""
    parser = pluggy.PluginManager(hookspecs.hookspec.project_name)  # a bare manager: nothing loaded
    return {
        name: function
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if parser.parse_hookspec_opts(hookspecs, name) is not None
    }


HOOKS = hookspec_functions()


def doc_sections() -> list[tuple[str, str]]:
    """(heading line, text up to the next heading of the same or a higher level) in the doc."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    sections = []
    in_code = False
    headings = []
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            headings.append((i, len(line) - len(line.lstrip("#"))))
    for n, (start, level) in enumerate(headings):
        end = next((i for i, lvl in headings[n + 1 :] if lvl <= level), len(lines))
        sections.append((lines[start], "\n".join(lines[start + 1 : end])))
    return sections


def test_hookspecs_are_found():
    assert len(HOOKS) >= 10
    # The live plugin manager has exactly these hooks, and each feeds one registry kind.
    live = {name for name, caller in vars(plugins.manager().hook).items() if getattr(caller, "spec", None) is not None}
    assert set(HOOKS) == live == set(plugins.HOOK_KINDS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_with_its_signature(name):
    signature = f"{name}{inspect.signature(HOOKS[name])}"  # e.g. register_datasets(register)
    headed = [body for heading, body in doc_sections() if f"`{signature}`" in heading]
    assert headed, f"docs/writing-plugins.md has no heading with `{signature}`; document the hook in its reference section"
    kind = plugins.HOOK_KINDS.get(name)
    assert kind is not None, f"hook {name} feeds no registry kind (testbed/plugins.py HOOK_KINDS)"
    assert f"`{kind}`" in headed[0], f"the section on {signature} does not name its component kind `{kind}`"
    assert "factory" in headed[0].lower(), f"the section on {signature} does not describe the factory contract"


def test_every_hook_in_the_doc_exists():
    """No stale reference: a documented register_* hook that hookspecs.py no longer has."""
    for heading, _body in doc_sections():
        for name in re.findall(r"`(register_\w+)\(", heading):
            assert name in HOOKS, f"docs/writing-plugins.md documents `{name}`, which testbed/hookspecs.py does not define"


def test_every_component_kind_is_documented():
    sections = doc_sections()
    text = DOC.read_text(encoding="utf-8")
    for kind in KINDS:
        assert f"`{kind}`" in text, f"component kind `{kind}` is not documented"
    reference = [body for heading, body in sections if "reference" in heading.lower()]
    assert reference, "docs/writing-plugins.md needs a reference section"
    for kind in KINDS:
        assert f"`{kind}`" in reference[0], f"component kind `{kind}` is missing from the reference section"


def test_loading_rules_are_documented():
    text = DOC.read_text(encoding="utf-8")
    for needle in (
        plugins.DISABLE_AUTOLOAD_ENV,
        plugins.LOAD_ONLY_ENV,
        f"[project.entry-points.{plugins.ENTRY_POINT_GROUP}]",
        "role",
        "image_size",
        "classes",
        "ValueError",
        "Literal",
    ):
        assert needle in text, f"docs/writing-plugins.md does not mention {needle}"


# ---------------------------------------------------------------------------- (b) registration


def import_example(monkeypatch):
    """The example plugin module straight from the source tree (installed or not)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    return importlib.import_module(EXAMPLE_MODULE)


def test_example_module_registers_its_components_under_its_plugin_name(register_plugin, monkeypatch):
    module = import_example(monkeypatch)
    registry = register_plugin(module, EXAMPLE_ENTRY_POINT)
    for kind, names in EXAMPLE_COMPONENTS.items():
        for name in names:
            entry = registry.get(kind, name).as_dict()  # what `testbed plugins --json` lists
            assert entry["plugin"] == EXAMPLE_ENTRY_POINT, (kind, name)
            assert entry["help"]
    assert [p["name"] for p in registry.get("normalization", "groupnorm").as_dict()["params"]] == ["groups", "eps", "affine"]
    # The built-ins are still there and still theirs.
    assert registry.get("activation", "relu").plugin == "builtin.activations"


def test_a_second_plugin_claiming_an_example_name_is_an_error_naming_both(register_plugin, monkeypatch):
    module = import_example(monkeypatch)
    register_plugin(module, EXAMPLE_ENTRY_POINT)

    class Clash:
        @hookimpl
        def register_activations(self, register):
            register("swish", module.swish, "another swish")

    clash = Clash()
    plugins.manager().register(clash, name="clash")
    try:
        plugins.invalidate_registry()
        with pytest.raises(BadInput, match="'swish' is registered twice") as raised:
            plugins.registry()
        assert f"plugin '{EXAMPLE_ENTRY_POINT}'" in str(raised.value) and "plugin 'clash'" in str(raised.value)
    finally:
        plugins.manager().unregister(clash)
        plugins.invalidate_registry()


# ---------------------------------------------------------------------------- (c) the CLI


def example_entry_point():
    return next((ep for ep in entry_points(group=plugins.ENTRY_POINT_GROUP) if ep.name == EXAMPLE_ENTRY_POINT), None)


needs_example_installed = pytest.mark.skipif(
    example_entry_point() is None,
    reason=f"the example plugin's '{EXAMPLE_ENTRY_POINT}' entry point is not installed; run `pip install -e examples/testbed-example`",
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`testbed ARGS` in a child process that autoloads the example plugin and nothing else."""
    env = dict(os.environ)
    env.pop(plugins.DISABLE_AUTOLOAD_ENV, None)  # tests/conftest.py disables autoload in this process
    env[plugins.LOAD_ONLY_ENV] = EXAMPLE_ENTRY_POINT
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@needs_example_installed
def test_example_entry_point_is_autoloaded_with_its_version(tmp_path):
    assert example_entry_point().value == EXAMPLE_MODULE
    done = cli("plugins", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    expected_version = version("testbed-example")
    for kind, names in EXAMPLE_COMPONENTS.items():
        entries = {e["name"]: e for e in listing[kind]}
        for name in names:
            assert (entries[name]["plugin"], entries[name]["version"]) == (EXAMPLE_ENTRY_POINT, expected_version)
    # TESTBED_LOAD_PLUGINS loaded this entry point and no other installed one.
    loaded = {e["plugin"] for entries in listing.values() for e in entries}
    assert {p for p in loaded if not p.startswith("builtin.")} == {EXAMPLE_ENTRY_POINT}


@needs_example_installed
def test_example_experiment_runs_through_the_cli(tmp_path):
    out = tmp_path / "run"
    done = cli("run", str(EXAMPLE / "experiment.toml"), "--out", str(out), "--device", "cpu", "--json", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["status"] == "ok"
    variants = {v["name"]: v for v in doc["variants"]}
    assert set(variants) == {"baseline", "swish", "mish", "groupnorm", "cutout", "gratings"}
    assert all(v["status"] == "ok" for v in variants.values())
    # Every result names the plugin (and its version) behind each model slot.
    expected_version = version("testbed-example")
    for name, slot in (("swish", "activation"), ("mish", "activation"), ("groupnorm", "normalization")):
        recorded = variants[name]["components"][slot]
        assert (recorded["name"], recorded["plugin"], recorded["version"]) == (name, EXAMPLE_ENTRY_POINT, expected_version)
    assert variants["baseline"]["components"]["activation"]["plugin"] == "builtin.activations"
    # The same from the store, read back by `testbed report`.
    report = cli("report", str(out), "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    stored = {v["name"]: v for v in json.loads(report.stdout)["variants"]}
    assert stored["groupnorm"]["components"]["normalization"]["plugin"] == EXAMPLE_ENTRY_POINT


# ---------------------------------------------------------------------------- (d) every code block runs
#
# Every fenced block of README.md and docs/writing-plugins.md is executed or checked, so that the
# docs cannot drift from the code. The rules, by the block's language:
#
#   python  run in a fresh namespace (with the example plugin registered); a block whose first
#           line is `# PATH` naming a file of the repository (or of examples/testbed-example) is
#           an excerpt of that file instead: every function and class it shows must exist there
#           with the same parameters and defaults, and its imports must be the file's (lines,
#           comments and annotations may be left out; `...` stands for what is left out).
#   toml    parsed; one whose top-level keys are an experiment's is validated by testbed's own
#           loader (build_experiment, the registry with the example plugin in it).
#   bash    each command line (`testbed show ...`, `testbed plugins ...`, `... --help`) is run
#   shell   through the CLI's entry and must exit 0; any other command (`testbed run`, pip, a
#           long job) fails the test unless the block is marked skipped.
#   other   (no language, text, console: sample output) not checked.
#
# A block is skipped by an HTML comment on the line right before its opening fence, with the
# reason, e.g. `<!-- docs-test: skip (trains for 20 minutes) -->`.

SKIP_MARK = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->")
DOCS = [REPO / "README.md", DOC]
RUNNABLE_SUBCOMMANDS = ("show", "plugins")


def code_blocks(path: Path) -> list[dict]:
    """{'path', 'line', 'lang', 'code', 'skip'} for every fenced block of a markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(```+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        start, marker = i, fence.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(marker))
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP_MARK.search(previous)
        blocks.append(
            {
                "path": path,
                "line": start + 1,
                "lang": fence.group(3).lower(),
                "skip": skip.group(1) if skip else None,
                "code": "\n".join(line[len(fence.group(1)) :] for line in lines[start + 1 : end]),
            }
        )
        i = end + 1
    return blocks


BLOCKS = [b for doc in DOCS for b in code_blocks(doc) if b["lang"] in ("python", "py", "toml", "bash", "sh", "shell")]


def block_id(block) -> str:
    return f"{block['path'].name}:{block['line']}-{block['lang']}"


@pytest.fixture
def example_registry(register_plugin, monkeypatch):
    module = import_example(monkeypatch)
    if plugins.manager().is_registered(module):
        return plugins.registry()
    return register_plugin(module, EXAMPLE_ENTRY_POINT)


def excerpt_source(code: str) -> Path | None:
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    match = re.match(r"#\s*([\w./-]+\.py)\b", first)
    if not match:
        return None
    for base in (REPO, EXAMPLE):
        if (base / match.group(1)).is_file():
            return base / match.group(1)
    return None


def signatures(tree) -> dict:
    """name -> its parameters (names by kind, defaults as written) for every function and class
    (methods as Class.method) defined at the top of a module or in its classes."""
    out = {}

    def params(args) -> tuple:
        names = lambda items: tuple(a.arg for a in items)  # noqa: E731
        return (
            names(args.posonlyargs),
            names(args.args),
            names(args.kwonlyargs),
            tuple(ast.unparse(d) for d in args.defaults),
            tuple(d and ast.unparse(d) for d in args.kw_defaults),
        )

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = params(node.args)
        elif isinstance(node, ast.ClassDef):
            out[node.name] = "class"
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    out[f"{node.name}.{item.name}"] = params(item.args)
    return out


def check_excerpt(code: str, source: Path) -> None:
    """An excerpt may leave out lines, comments and annotations, but every function and class it
    shows exists in the file with the same parameters and defaults, and every name it imports
    is imported there too."""
    shown, real = ast.parse(code), ast.parse(source.read_text(encoding="utf-8"))
    name = source.relative_to(REPO)
    real_signatures = signatures(real)
    for defined, signature in signatures(shown).items():
        assert defined in real_signatures, f"{defined} is not defined in {name}"
        assert signature == real_signatures[defined], f"{defined}: the docs show {signature}, {name} has {real_signatures[defined]}"
    imported = lambda tree: {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))}  # noqa: E731
    missing = imported(shown) - imported(real)
    assert not missing, f"imports that {name} does not have: {sorted(missing)}"


def run_python(code: str) -> None:
    namespace = {"__name__": "docs_block"}
    exec(compile(code, "<docs block>", "exec"), namespace)  # noqa: S102 - the docs' own code


def run_toml(code: str, registry) -> None:
    import tomllib

    from testbed.experiment import TOP_LEVEL, build_experiment

    doc = tomllib.loads(code)
    if doc and set(doc) <= set(TOP_LEVEL):
        build_experiment(doc, registry, "docs-block.toml")


def shell_commands(code: str) -> list[str]:
    """The block's commands: one a line, `#` comments and blank lines dropped, `&&` chains split."""
    out = []
    for line in code.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&") if part.strip()]
    return out


def runnable(command: str) -> bool:
    words = command.split()
    return (
        bool(words)
        and words[0] == "testbed"
        and ((len(words) > 1 and words[1] in RUNNABLE_SUBCOMMANDS) or any(w in ("--help", "-h", "--version") for w in words))
    )


def run_shell(code: str) -> None:
    import shlex

    from click.testing import CliRunner

    from testbed.cli import main

    others = [c for c in shell_commands(code) if not runnable(c)]
    assert not others, (
        f"commands this test does not run: {others}; mark the block with <!-- docs-test: skip (reason) --> on the line before its fence"
    )
    for command in shell_commands(code):
        cwd = os.getcwd()
        try:
            os.chdir(REPO)  # the docs' paths are relative to the repository root
            result = CliRunner().invoke(main, shlex.split(command)[1:])
        finally:
            os.chdir(cwd)
        assert result.exit_code == 0, f"`{command}` exited {result.exit_code}: {result.output[-1500:]}"


@pytest.mark.parametrize("block", BLOCKS, ids=block_id)
def test_every_code_block_in_the_docs_runs(block, example_registry):
    where = f"{block['path'].relative_to(REPO)}:{block['line']}"
    if block["skip"]:
        pytest.skip(f"{where}: {block['skip']}")
    code = block["code"]
    try:
        if block["lang"] in ("python", "py"):
            source = excerpt_source(code)
            check_excerpt(code, source) if source is not None else run_python(code)
        elif block["lang"] == "toml":
            run_toml(code, example_registry)
        else:
            run_shell(code)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    except Exception as exc:
        raise AssertionError(f"{where}: the block raised {type(exc).__name__}: {exc}") from exc


def test_the_docs_have_code_blocks_to_check():
    assert len(BLOCKS) >= 20 and {b["lang"] for b in BLOCKS} >= {"python", "toml", "bash"}


def test_an_excerpt_that_drifted_from_its_file_is_caught():
    source = EXAMPLE / "src" / "testbed_example_plugins" / "activations.py"
    check_excerpt("# src/testbed_example_plugins/activations.py\ndef swish(*, beta: float = 1.0):\n    ...\n", source)
    for drifted in ("def swish(*, beta=2.0):\n    ...", "def swish(*, gamma=1.0):\n    ...", "def swash():\n    ...", "import numpy"):
        with pytest.raises(AssertionError):
            check_excerpt("# src/testbed_example_plugins/activations.py\n" + drifted + "\n", source)


def test_the_example_architecture_trains_and_refuses_what_it_lacks(register_plugin, monkeypatch):
    """docs/writing-plugins.md's architecture example: built from an experiment, it learns a few
    steps of synthetic data, and a slot it does not honour is bad input naming the key."""
    import torch.nn.functional as F

    from testbed.errors import BadInput
    from testbed.experiment import build_experiment
    from testbed.model import build_model, layer_shapes

    registry = register_plugin(import_example(monkeypatch), EXAMPLE_ENTRY_POINT)
    cfg = build_experiment({"model": {"architecture": {"name": "tiny-cnn", "width": 8}, "activation": "swish"}}, registry).baseline.config
    assert cfg["model"]["init"]["name"] == "kaiming"  # the architecture's default
    torch.manual_seed(0)
    net = build_model(cfg["model"], 2, 16, registry, "cpu").module
    assert [layer["name"] for layer in layer_shapes(net)] == ["conv1", "pool1", "conv2", "fc3"]
    y = torch.arange(64) % 2
    x = torch.randn(64, 3, 16, 16)
    x[:, 0] += (2 * y - 1).float().view(-1, 1, 1)  # learnable: class 1 has a brighter red channel
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(BadInput, match="model.normalization"):
        build_experiment({"model": {"architecture": "tiny-cnn", "normalization": "lrn"}}, registry)
