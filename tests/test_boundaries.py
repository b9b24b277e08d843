"""The packages depend on each other one way only: `taskhub` (shared) on neither the bridge nor the
tasks, `tasks` never on the bridge, nothing shipped or benchmarked on the tests, and the rig on
neither the tests nor the benchmarks. Every import counts, a function's own included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "taskhub": {"bridge", "tasks", "tests", "bench", "rig"},
    "tasks": {"bridge", "tests", "bench", "rig"},
    "bridge": {"tests", "bench", "rig"},
    "bench": {"tests"},
    "rig": {"tests", "bench"},
}


def _imported_packages(path: Path) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update((alias.name.split(".")[0], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add((node.module.split(".")[0], node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_it_must_not_depend_on(package: str) -> None:
    crossings = [
        f"{path.relative_to(ROOT)}:{line} imports {imported}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for imported, line in sorted(_imported_packages(path))
        if imported in FORBIDDEN[package]
    ]
    assert crossings == []
