"""The pure core imports nothing that does I/O, reads clocks or draws randomness."""

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src" / "exchange" / "core"
ALLOWED_THIRD_PARTY = {"msgspec", "sortedcontainers"}
ALLOWED_STDLIB = {
    "__future__", "abc", "collections", "dataclasses", "enum", "functools", "hashlib", "heapq",
    "itertools", "math", "operator", "re", "typing", "bisect", "datetime", "zoneinfo", "fractions",
}
FORBIDDEN = {"asyncio", "aiohttp", "asyncpg", "time", "random", "logging", "os", "sys", "socket",
             "io", "pathlib", "subprocess", "threading", "secrets", "uuid", "select", "signal"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    assert len(files) >= 6, "the core modules were not found"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: p.name)
def test_core_module_imports_only_pure_modules(path: Path) -> None:
    modules = imported_modules(path)
    assert not modules & FORBIDDEN, f"{path.name} imports {modules & FORBIDDEN}"
    assert modules <= ALLOWED_STDLIB | ALLOWED_THIRD_PARTY, f"{path.name} imports {modules - ALLOWED_STDLIB - ALLOWED_THIRD_PARTY}"


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom asyncio import sleep\nfrom . import book\n")
    assert imported_modules(bad) == {"time", "asyncio"}
