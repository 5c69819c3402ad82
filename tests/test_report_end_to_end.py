"""Reports end to end on what a fresh machine has: no course weights, or one model as a local file.

``claims run claims/arena`` must write results.json, report.md and report.html whether the
course's models are there or not, and ``pytest --claims-out`` the same. Hermetic: an empty
Hugging Face cache, downloads off, no weights from the environment. The run without the course
weights is a fresh ``claims`` process; the run with the course-shaped file calls the same CLI
entry point in this process, in the same environment (its own process would only pay the
interpreter, torch and TransformerLens imports again: about 6 s of CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fixtures import weights_overrides
from fixtures.tokenizer_source import TOKENIZER_ENV_PREFIX
from harness.frontends import cli
from fixtures.hashing import file_sha256
from fixtures.registry import get_model_entry
from fixtures.hub_access import DOWNLOAD_ENV
from fixtures.sources.hub import ARENA_ATTN_ONLY_2L_CONFIG
from fixtures.weights_overrides import WEIGHTS_ENV_PREFIX
from harness.loader import load_claim_file
from tests.offline_support import offline_hub
from tests.test_models import _random_state, _save
from tests.test_report_robustness import parse_html

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
ARENA = "arena-attn-only-2l"
WEIGHTED_SELECTION = "1.2.comp.K_0_7.strongest"
"""The claim run on the supplied model: the top K-composition pairs, one claim (about 0.5 s of CPU).
What is checked is that a course-shaped file given with ``--weights`` is the model the claims are
measured on (a verdict, not a skip; the file's sha256 in the record): one claim shows it. The four
``1.2.comp.K_0_7`` claims (K-composition scores, the top pairs, a score against 300 random-matrix
samples) took about 3.5 s more and checked nothing more here; the metrics themselves are tested
in tests/test_metrics_*.py."""


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without the course weights: empty HF cache, no download, no overrides."""
    return fresh_env(tmp_path)


def fresh_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment less the weights and tokenizer overrides and the download opt-in,
    with an empty HF cache under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((WEIGHTS_ENV_PREFIX, TOKENIZER_ENV_PREFIX)) and k != DOWNLOAD_ENV}
    env["HF_HUB_CACHE"] = str(tmp_path / "hf-cache")
    return env


def test_the_fresh_process_environment_has_no_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither weights nor tokenizer overrides nor the download opt-in reach the fresh ``claims`` process."""
    for variable in (f"{WEIGHTS_ENV_PREFIX}{ARENA.upper().replace('-', '_')}", f"{TOKENIZER_ENV_PREFIX}GPT2_SMALL", DOWNLOAD_ENV):
        monkeypatch.setenv(variable, str(tmp_path / "elsewhere"))
    env = fresh_env(tmp_path)
    assert not [k for k in env if k.startswith((WEIGHTS_ENV_PREFIX, TOKENIZER_ENV_PREFIX)) or k == DOWNLOAD_ENV]


def run_claims(arguments: list[str], env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    """``claims run ARGUMENTS --out OUT`` in a fresh process."""
    command = [sys.executable, "-m", "harness.frontends.cli", "run", *arguments, "--out", str(out), "--no-progress"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def read_outputs(out: Path) -> dict[str, Any]:
    """The record in ``out``, after checking that both reports exist, parse and show every claim."""
    record = json.loads((out / "results.json").read_text(encoding="utf-8"))
    markdown = (out / "report.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    parsed = parse_html(page)
    assert markdown.startswith("# interp-claims report\n")
    for entry in record["claims"]:
        assert f"\n### claim-{entry['id']}\n" in markdown
    assert len([i for i in parsed.ids if i.startswith("claim-")]) == len(record["claims"])
    assert "plot-error" not in page
    return record


COURSE_WEIGHT_SOURCES = {"hub", "transformer_lens"}


def course_weight_files() -> list[str]:
    """The ARENA claim files whose every claim is on the course's own weights (not shipped here);
    the chapters measured on reproductions trained here (1.5.4) are not among them."""
    files = []
    for path in sorted((ROOT / "claims" / "arena").glob("*.yaml")):
        loaded = load_claim_file(path)
        models = {loaded.model_of(claim) for claim in loaded.spec.claims}
        if models and all(get_model_entry(name).source in COURSE_WEIGHT_SOURCES for name in models):
            files.append(str(path.relative_to(ROOT)))
    return files


def test_arena_without_the_course_weights_skips_every_claim_and_writes_every_report(offline_env: dict[str, str], tmp_path: Path) -> None:
    files = course_weight_files()
    assert any("1.2-" in f for f in files) and any("1.4-" in f for f in files), files
    completed = run_claims(files, offline_env, tmp_path / "out")
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = read_outputs(tmp_path / "out")
    assert record["claims"] and {entry["verdict"] for entry in record["claims"]} == {"skipped"}
    assert record["summary"]["skipped"] == len(record["claims"])
    assert record["models"] and all("unavailable" in model for model in record["models"].values())


def test_arena_with_the_course_model_as_a_file_reaches_verdicts(
    offline_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    weights, _ = _save(tmp_path, ARENA_ATTN_ONLY_2L_CONFIG, _random_state(ARENA_ATTN_ONLY_2L_CONFIG, seed=10), "course_shaped")
    arguments = ["run", "claims/arena", "-k", WEIGHTED_SELECTION, "--weights", f"{ARENA}={weights}",
                 "--out", str(tmp_path / "out"), "--no-progress"]
    monkeypatch.chdir(ROOT)
    sigpipe = signal.getsignal(signal.SIGPIPE)
    with offline_hub(Path(offline_env["HF_HUB_CACHE"])):
        code = cli.main(arguments)
    assert code in (0, 1), capsys.readouterr().err[-3000:]
    assert signal.getsignal(signal.SIGPIPE) == sigpipe  # main() leaves process-wide signals alone (console_main sets them)
    assert ARENA not in weights_overrides._OVERRIDES  # the run's --weights went with it
    record = read_outputs(tmp_path / "out")
    on_model = [entry for entry in record["claims"] if entry["model"] == ARENA]
    assert on_model and all(entry["verdict"] != "skipped" for entry in on_model)
    assert record["models"][ARENA]["weights_sha256"] == file_sha256(weights)


def test_pytest_claims_out_writes_every_report_when_the_model_is_unavailable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv(DOWNLOAD_ENV, raising=False)
    for variable in [v for v in os.environ if v.startswith(WEIGHTS_ENV_PREFIX)]:
        monkeypatch.delenv(variable)
    monkeypatch.setattr(weights_overrides, "_OVERRIDES", {})
    spec = ROOT / "claims" / "arena" / "1.2-2-finding-induction-heads.yaml"
    (pytester.path / "claims").mkdir()
    shutil.copy(spec, pytester.path / "claims" / spec.name)
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-out", "out")
    count = len(load_claim_file(spec).spec.claims)
    result.assert_outcomes(skipped=count)
    record = read_outputs(pytester.path / "out")
    assert len(record["claims"]) == count and set(record["models"]) == {ARENA}
    assert "unavailable" in record["models"][ARENA]
