"""The core as it runs: compiled by mypyc (setup.py, ADR 0011), fresh, and equal to its source.

The compiled modules are built from the same typed source, which stays the reference: run
interpreted (EXCHANGE_PURE_PYTHON=1 at install, or a subprocess that ignores the extensions)
it must give the very same events and state hash.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import soak

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "src" / "exchange" / "core"
HOT = ("book", "ledger", "engine")  # the modules every command runs through
PURE = os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")


@pytest.mark.skipif(PURE, reason="installed with EXCHANGE_PURE_PYTHON=1: the core runs interpreted by choice")
@pytest.mark.parametrize("name", HOT)
def test_the_hot_core_runs_compiled(name: str) -> None:
    module = importlib.import_module(f"exchange.core.{name}")
    assert module.__file__ is not None and not module.__file__.endswith(".py"), (
        f"exchange.core.{name} runs interpreted ({module.__file__}): the mypyc build did not happen; "
        "reinstall with `make test` or `pip install -e .`")


def test_no_compiled_module_is_older_than_its_source() -> None:
    stale = [so.name for so in CORE.glob("*.so")
             if so.stat().st_mtime < (CORE / (so.name.split(".")[0] + ".py")).stat().st_mtime]
    assert not stale, f"{stale} were built before their source last changed: rebuild with `make test` or `pip install -e .`"


# A child that imports exchange.core from its .py files only, whatever lies beside them.
_INTERPRETED = textwrap.dedent("""
    import os, sys
    from importlib.machinery import SOURCE_SUFFIXES, FileFinder, SourceFileLoader

    CORE = os.path.realpath(sys.argv[1])

    def source_only(path):
        if os.path.realpath(path) != CORE:
            raise ImportError  # every other directory: the usual finders
        return FileFinder(path, (SourceFileLoader, SOURCE_SUFFIXES))

    sys.path_hooks.insert(0, source_only)
    sys.path_importer_cache.clear()
    from exchange.core import engine
    from tests import soak
    assert engine.__file__.endswith(".py"), engine.__file__
    print(soak.run(int(sys.argv[2]), int(sys.argv[3]), 1_000).state_hash())
""")


@pytest.mark.parametrize("seed", [1, 2])
def test_interpreted_and_compiled_cores_reach_the_same_state(seed: int) -> None:
    commands = 20_000
    child = subprocess.run([sys.executable, "-c", _INTERPRETED, str(CORE), str(commands), str(seed)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    interpreted = child.stdout.split()[-1]
    assert soak.run(commands, seed, 1_000).state_hash() == interpreted
