"""House rules the code keeps: the core knows slots and contracts, never a concrete component, and
every function of the core fits on a screen (or says why not)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = sorted((REPO / "testbed").glob("*.py"))
MAX_LINES = 60
REASON = "# long:"  # on the def line or the line above it: why this function is longer


def test_no_core_function_is_longer_than_a_screen_without_a_reason():
    long = []
    for path in CORE:
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                context = " ".join(lines[max(0, first - 2) : node.lineno])
                if length > MAX_LINES and REASON not in context:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_LINES} lines without a '{REASON}' comment: {long}"


def test_the_core_imports_no_built_in_component():
    """Built-ins are plugins: the core reaches them only through the plugin manager's module list."""
    offenders = []
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "testbed_builtins"]
    assert not offenders
