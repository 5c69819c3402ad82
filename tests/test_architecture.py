"""The layering: the import-linter contracts of pyproject.toml hold, and an upward import breaks them.

Layers, each importing only from those below (docs/architecture.md): front ends -> reports ->
engine -> models and inputs (fixtures) -> core. A cycle between layers, or an upward import
hidden in a function, fails here instead of waiting for a circular-import error at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "fixtures", "reports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` on the packages and pyproject.toml under ``root`` (no cache written)."""
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "300"}  # one line per contract
    command = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())", "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def copy_project(destination: Path) -> Path:
    """The three packages and pyproject.toml, copied (sources only) to ``destination``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, destination / package, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "baselines"))
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward_import", "contract"),
    [
        # the core reaching up into the engine: the cycle the function-local imports used to hide
        ("harness/core/heads.py", "from harness.session import Session", "front ends -> reports -> engine"),
        # the models reaching into the engine
        ("fixtures/registry.py", "from harness.loader import load_claim_file", "front ends -> reports -> engine"),
        # a renderer importing the engine
        ("reports/plots.py", "from harness.runner import ClaimResult", "reports render the JSON record"),
    ],
)
def test_an_upward_import_breaks_a_contract(tmp_path: Path, module: str, upward_import: str, contract: str) -> None:
    project = copy_project(tmp_path)
    target = project / module
    # inside a function, as the old cycles were: the linter reads those too
    target.write_text(target.read_text() + f"\n\ndef _injected() -> None:\n    {upward_import}\n")
    result = lint_imports(project)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.rstrip().endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout
