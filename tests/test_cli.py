"""The ``claims`` command: validate, list and schema; the schema checks every shipped claim file."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

import fixtures.registry as model_registry
from fixtures.model_entry import ModelEntry
from harness.frontends.cli import EXIT_INVALID, EXIT_OK, main
from harness.core.model_handle import ModelShape
from harness.core.spec import claim_file_json_schema
from harness.yaml_source import read_yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "claims").rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
MODEL = "planted-attn-2l"
SHAPE = ModelShape(n_layers=2, n_heads=4, d_model=256, d_head=128, d_vocab=64, n_ctx=128)

VALID = """\
source: {course: ARENA, chapter: "1.2 Intro to Mech Interp"}
model: planted-attn-2l
claims:
  - id: prev-token-head
    statement: Head 0.0 attends to the previous token.
    inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}
    metric: attention.detect
    params: {pattern: previous, threshold: 0.4}
    expect: {equals: ["0.0"]}
  - id: no-induction-head-in-layer-0
    statement: Head 0.1 is not an induction head.
    inputs: {repeated_random: {seq_len: 20}}
    metric: attention.scores
    params: {pattern: induction}
    select: "0.1"
    expect: {'>=': 0.4}
    expected_verdict: refuted
conceptual:
  - id: heads-compose
    statement: Heads compose across layers.
    reason: no single metric measures it
"""
MISSPELT = VALID.replace("    statement: Head 0.0 attends", "    statment: Head 0.0 attends")


@pytest.fixture
def stand_in_models(monkeypatch):
    """One model with the planted model's name and shape; no weights are built."""
    entry = ModelEntry(MODEL, "planted", "stand-in", lambda: SHAPE, lambda: None)
    monkeypatch.setattr(model_registry, "_ENTRIES", {MODEL: entry})


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, so paths print relative to it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- validate ---------------------------------------------------------------------------------------


def test_validate_misspelt_key(workdir, capsys):
    write(workdir, "bad.yaml", MISSPELT)
    assert main(["validate", "bad.yaml"]) == EXIT_INVALID
    out, err = capsys.readouterr()
    assert out == ""
    first = err.splitlines()[0]
    assert first.startswith("bad.yaml:5:5: [claims[0].statment] unknown key 'statment' (did you mean 'statement'?)")
    assert "allowed keys: id, statement, source, model, inputs, metric, params, select, expect" in first
    assert err.splitlines()[-1] == "1 problem(s) in claim files"


def test_validate_misspelt_key_through_the_command(workdir):
    write(workdir, "bad.yaml", MISSPELT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).with_name("claims")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "harness.frontends.cli"]
    done = subprocess.run([*command, "validate", "bad.yaml"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0 and done.returncode == EXIT_INVALID
    assert "bad.yaml:5:5:" in done.stderr
    assert "did you mean 'statement'?" in done.stderr
    assert "allowed keys: id, statement" in done.stderr
    assert "Traceback" not in done.stderr



def test_the_command_ends_quietly_on_a_closed_pipe() -> None:
    """``claims list | head -1``: the command dies of SIGPIPE (no BrokenPipeError traceback); the
    setting is the console script's (``console_main``), ``main()`` in a test process leaves it alone."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(sys.executable).with_name("claims")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "harness.frontends.cli"]
    fcntl = pytest.importorskip("fcntl", reason="a POSIX pipe test")
    reading, writing = os.pipe()
    listed = [ROOT / "claims"]  # a default pipe (64 kB): every shipped file (about 96 kB)
    if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: a one-page pipe, so two claim files' listing (about 18 kB) overfills it
        if fcntl.fcntl(writing, fcntl.F_SETPIPE_SZ, 4096) <= 4096:  # the kernel's page may be larger (64 kB)
            listed = [ROOT / "claims" / "arena" / "1.4-1-ioi.yaml", ROOT / "claims" / "toy" / "grokking.yaml"]
    listing = subprocess.Popen([*command, "list", *map(str, listed)], stdout=writing, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(writing)
    with os.fdopen(reading, "rb") as stdout:  # the reader takes at most what the pipe held, then goes away:
        assert stdout.readline()  # the listing is more than twice what the pipe and the reader together took
    _, stderr = listing.communicate(timeout=300)
    assert listing.returncode == -13 and b"Traceback" not in stderr  # -SIGPIPE

def test_validate_valid_file(workdir, capsys, stand_in_models):
    write(workdir, "claims/ok.yaml", VALID)
    assert main(["validate", "claims"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "1 file(s), 2 claim(s): valid"


def test_validate_reports_every_file(workdir, capsys, stand_in_models):
    write(workdir, "claims/a.yaml", VALID)
    write(workdir, "claims/b.yaml", VALID.replace("metric: attention.detect", "metric: attention.detekt").replace("id: no-induction", "id: other"))
    assert main(["validate", "claims"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "claims/b.yaml:7:13: [claims[0].metric] unknown metric 'attention.detekt'" in err
    assert "problem(s) in claim files" in err


def test_validate_duplicate_id_across_files(workdir, capsys, stand_in_models):
    write(workdir, "claims/a.yaml", VALID)
    write(workdir, "claims/b.yaml", VALID.replace("id: no-induction", "id: other").replace("id: heads-compose", "id: heads-2"))
    assert main(["validate", "claims"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "claims/b.yaml:4:9: [claims[0].id] claim id 'prev-token-head' is already used in claims/a.yaml:4:9" in err


@pytest.mark.parametrize("text", ["", "- a list\n", "a: [1, 2\n", "a: !!python/object/apply:os.system ['true']\n", "a: 1\na: 2\n"])
def test_validate_never_crashes_on_bad_yaml(workdir, capsys, text):
    write(workdir, "bad.yaml", text)
    assert main(["validate", "bad.yaml"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert err.startswith("bad.yaml:") and "Traceback" not in err


def test_validate_missing_path(workdir, capsys):
    assert main(["validate", "nowhere.yaml"]) == EXIT_INVALID
    assert "no such file or folder: nowhere.yaml" in capsys.readouterr().err


# --- list ----------------------------------------------------------------------------------------------


def test_list(workdir, capsys, stand_in_models):
    write(workdir, "claims/ok.yaml", VALID)
    assert main(["list", "claims"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "claims/ok.yaml  [ARENA 1.2 Intro to Mech Interp]"
    assert out[1].split() == ["prev-token-head", MODEL, "attention.detect"]
    assert out[2].split() == ["no-induction-head-in-layer-0", MODEL, "attention.scores", "(expected", "refuted)"]
    assert out[3].split()[:2] == ["heads-compose", "(conceptual)"] and out[3].endswith("not measurable: no single metric measures it")


def test_list_invalid_file(workdir, capsys):
    write(workdir, "bad.yaml", MISSPELT)
    assert main(["list", "bad.yaml"]) == EXIT_INVALID
    assert "bad.yaml:5:5:" in capsys.readouterr().err


# --- schema --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict:
    return claim_file_json_schema()


def test_schema_command_prints_a_valid_json_schema(capsys):
    assert main(["schema"]) == EXIT_OK
    printed = json.loads(capsys.readouterr().out)
    Draft202012Validator.check_schema(printed)
    assert printed["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert printed == json.loads(json.dumps(claim_file_json_schema()))


def test_schema_forbids_unknown_keys_and_names_comparators(schema):
    definitions = schema["$defs"]
    for name in ("Claim", "Expect", "Reference", "ClaimSource", "FileSource", "Conceptual"):
        assert definitions[name]["additionalProperties"] is False, name
    assert schema["additionalProperties"] is False
    assert {">=", "<=", ">", "<", "between", "approx", "equals"} <= set(definitions["Expect"]["properties"])


def schema_errors(schema: dict, text: str) -> list[str]:
    data, _ = read_yaml("x.yaml", text)
    return [error.message for error in Draft202012Validator(schema).iter_errors(data)]


def test_schema_accepts_a_valid_file(schema):
    assert schema_errors(schema, VALID) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    statement: Head 0.0 attends", "    statment: Head 0.0 attends"),
        ("id: prev-token-head", "id: 12"),
        ("expected_verdict: refuted", "expected_verdict: maybe"),
        ("claims:\n", "claims: 3\nother:\n"),
    ],
)
def test_schema_rejects_invalid_files(schema, old, new):
    assert schema_errors(schema, VALID.replace(old, new, 1))


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_schema_validates_shipped_claim_file(schema, path):
    data, _ = read_yaml(path)
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{path}: {list(e.path)}: {e.message}" for e in errors)


def test_schema_validates_claim_files_in_a_claims_folder(schema, tmp_path):
    """The same check on a freshly written claims folder, whether or not claims/ ships files yet."""
    write(tmp_path, "claims/toy/a.yaml", VALID)
    for path in sorted((tmp_path / "claims").rglob("*.yaml")):
        data, _ = read_yaml(path)
        assert not list(Draft202012Validator(schema).iter_errors(data))


def test_validate_shipped_claims_with_the_real_registry(capsys, monkeypatch):
    assert SHIPPED, "no claim files under claims/"
    monkeypatch.chdir(ROOT)
    code = main(["validate", "claims"])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert captured.out.startswith(f"{len(SHIPPED)} file(s), ")


# --- paths that name no claim files -----------------------------------------------------------------


def test_validate_folder_without_claim_files_is_an_error(workdir, capsys):
    (workdir / "claims" / "toy").mkdir(parents=True)
    write(workdir, "claims/toy/notes.txt", "not a claim file")
    assert main(["validate", "claims/toy"]) == EXIT_INVALID
    captured = capsys.readouterr()
    assert "valid" not in captured.out
    assert captured.err.strip() == "claims validate: no claim files (*.yaml, *.yml) under claims/toy"


def test_validate_glob_matching_no_claim_files_is_an_error(workdir, capsys, stand_in_models):
    write(workdir, "claims/ok.yaml", VALID)
    assert main(["validate", "claims/*.yml"]) == EXIT_INVALID
    assert capsys.readouterr().err.strip() == "claims validate: no claim files match claims/*.yml"
    assert main(["validate", "clams/**/*.yaml"]) == EXIT_INVALID
    assert "no claim files match clams/**/*.yaml" in capsys.readouterr().err


def test_validate_glob_that_matches_is_expanded(workdir, capsys, stand_in_models):
    write(workdir, "claims/ok.yaml", VALID)
    write(workdir, "claims/more/b.yaml", VALID.replace("id: prev-token-head", "id: b1").replace("id: no-induction-head-in-layer-0", "id: b2").replace("id: heads-compose", "id: b3"))
    assert main(["validate", "claims/**/*.yaml"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == "2 file(s), 4 claim(s): valid"


def test_list_folder_without_claim_files_is_an_error(workdir, capsys):
    (workdir / "empty").mkdir()
    assert main(["list", "empty"]) == EXIT_INVALID
    assert "no claim files (*.yaml, *.yml) under empty" in capsys.readouterr().err


def test_validate_file_that_is_not_utf8_names_the_line_and_column(workdir, capsys):
    path = workdir / "latin.yaml"
    path.write_bytes(VALID.replace("attends to the previous", "attends to the pr\u00e9vious").encode("latin-1"))
    assert main(["validate", "latin.yaml"]) == EXIT_INVALID
    err = capsys.readouterr().err
    line = "    statement: Head 0.0 attends to the pr"  # the text before the bad byte on line 5
    assert err.startswith(f"latin.yaml:5:{len(line) + 1}: file is not UTF-8 text: byte 0xE9")


def test_the_console_script_raises_the_young_collection_threshold_and_main_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """``console_main`` (the process's own) sets the collector's youngest threshold; ``main()`` leaves it."""
    from harness.core.collector import YOUNG_GC_THRESHOLD
    from harness.frontends import cli

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(gc.get_threshold()) or 0)
    if hasattr(signal, "SIGPIPE"):
        monkeypatch.setattr(signal, "signal", lambda *args: None)  # this test process keeps its SIGPIPE handler
    try:
        assert cli.console_main() == 0
        assert seen == [(YOUNG_GC_THRESHOLD, *before[1:])]
    finally:
        gc.set_threshold(*before)
    assert main(["list", str(ROOT / "claims" / "toy" / "grokking.yaml")]) == EXIT_OK
    assert gc.get_threshold() == before
