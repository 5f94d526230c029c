"""The layering rule: nothing outside the Dagster layer (model_ops/defs/, model_ops/definitions.py) imports dagster,
so the library, the command line and ``model_ops.load`` work, and stay fast, without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "model_ops"
DAGSTER_LAYER = (PACKAGE / "defs", PACKAGE / "definitions.py")


def dagster_imports(path: Path) -> list[int]:
    """Line numbers of every ``import dagster…`` / ``from dagster… import`` in a module, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines = []
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )
        if any(n == "dagster" or n.startswith(("dagster.", "dagster_")) for n in names):
            lines.append(node.lineno)
    return lines


def test_only_the_dagster_layer_imports_dagster() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if any(path == layer or layer in path.parents for layer in DAGSTER_LAYER):
            continue
        found = dagster_imports(path)
        if found:
            offenders[str(path.relative_to(PACKAGE.parent))] = found
    assert offenders == {}, f"modules outside the Dagster layer import dagster: {offenders}"


@pytest.mark.slow
def test_the_library_and_the_cli_import_without_dagster() -> None:
    code = (
        "import sys, model_ops, model_ops.cli, model_ops.loading, model_ops.registry, model_ops.ml.candidates, "
        "model_ops.ops.automation, model_ops.specs; "
        "assert not [m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')], 'dagster imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
