"""Validating and listing claims import neither torch nor TransformerLens, and read every metric from source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.metric_signatures import metric_declarations
from harness.registry import get_metric, metric_names

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformer_lens", "transformers")


def test_validate_and_list_import_no_torch() -> None:
    """Both commands in one fresh interpreter (what either imports stays imported), on every shipped claim file."""
    script = (
        "import contextlib, io, json, sys\n"
        "from harness.frontends.cli import main\n"
        "codes, heavy = [], []\n"
        "for command in ('validate', 'list'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        codes.append(main([command, 'claims/']))\n"
        "    heavy.append(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:])))\n"
        "print(json.dumps({'codes': codes, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *HEAVY], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome == {"codes": [0, 0], "heavy": [[], []]}  # after validate, after list


def test_every_metric_of_the_package_is_read_from_its_source() -> None:
    """Metrics other test modules register at import time are declared from the registry instead."""
    declarations = metric_declarations()
    package = [name for name in metric_names() if get_metric(name).function.__module__.startswith("harness.metrics.")]
    assert len(package) >= 40
    assert [name for name in package if declarations[name].read_from != "source"] == []
    assert set(declarations) == set(metric_names())


@pytest.mark.parametrize("name", metric_names())
def test_a_declaration_equals_the_registered_metric(name: str) -> None:
    declared, registered = metric_declarations()[name], get_metric(name)
    assert declared.params_model.model_json_schema() == registered.params_model.model_json_schema()
    assert (declared.needs_inputs, declared.head_params, declared.fitted, declared.description) == (
        registered.needs_inputs, registered.head_params, registered.fitted, registered.description)
    assert (declared.value, declared.details) == (registered.value, registered.details)
