"""The code stays checkable: ruff on everything, mypy --strict on the packages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def test_ruff_is_clean() -> None:
    result = subprocess.run([_tool("ruff"), "check", "bot", "adapters", "storage", "testing",
                             "tests", "bench"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_the_packages() -> None:
    result = subprocess.run([_tool("mypy"), "--strict", "-p", "consentgate"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """Installed, the folders are consentgate.bot and so on: a bare ``import bot`` would work
    only from a checkout, and would load a second copy of every module beside the first."""
    bare = re.compile(r"^\s*(from|import) (bot|adapters|storage|testing)(\.|\s|$)", re.M)
    found = [str(path.relative_to(ROOT))
             for folder in ("bot", "adapters", "storage", "testing", "tests", "bench")
             for path in (ROOT / folder).rglob("*.py") if bare.search(path.read_text())]
    assert found == []
