"""The measurement cache: a second identical run reuses every measurement, any change to what a
measurement depends on recomputes it, a corrupted entry is ignored with a warning, never wrong."""

from __future__ import annotations

import os

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import fixtures.planted  # noqa: F401
from harness import measurement_cache, runner
from harness.core.measurement import Measurement
from harness.frontends.cli import main as claims_main
from harness.loader import load_claim_file
from harness.measurement_cache import CacheEntryWarning, MeasurementCache, cache_key
from harness.session import Session

CLAIMS = """\
source: {course: project}
model: planted-attn-2l
claims:
  - id: prev-score
    statement: Head 0.0 attends to the previous token.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: SEED}}
    metric: attention.scores
    params: {pattern: previous}
    select: "0.0"
    expect: {">=": 0.9}
  - id: prev-score-other-head
    statement: Head 1.0 does not attend to the previous token.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: SEED}}
    metric: attention.scores
    params: {pattern: previous}
    select: "1.0"
    expect: {"<": 0.5}
  - id: induction-heads
    statement: Head 1.0 is the induction head.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: SEED}}
    metric: attention.detect
    params: {pattern: induction}
    expect: {equals: ["1.0"]}
"""


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The metrics actually computed (not read from a cache), in order."""
    calls: list[str] = []
    compute = runner._compute

    def counting(session, model, info, metric, params, inputs):  # type: ignore[no-untyped-def]
        calls.append(metric)
        return compute(session, model, info, metric, params, inputs)

    monkeypatch.setattr(runner, "_compute", counting)
    return calls


def claims_file(root: Path, seed: int = 0) -> Path:
    path = root / "claims" / "demo.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CLAIMS.replace("SEED", str(seed)))
    return path


def run(path: Path, cache: MeasurementCache | None) -> list[runner.ClaimResult]:
    loaded = load_claim_file(path)
    session = Session(cache=cache)
    return [runner.run_claim(loaded, claim, session) for claim in loaded.spec.claims]


def values(results: list[runner.ClaimResult]) -> list[tuple[Any, str]]:
    return [(r.measurement.value if r.measurement else None, r.verdict.value) for r in results]


def test_second_run_reuses_every_measurement(tmp_path: Path, computed: list[str]) -> None:
    path, cache = claims_file(tmp_path), MeasurementCache(tmp_path / "cache")
    first = run(path, cache)
    assert computed == ["attention.scores", "attention.detect"]  # two claims select from one measurement
    assert not any(r.cached for r in first) and cache.stored == 2
    again = MeasurementCache(tmp_path / "cache")
    second = run(path, again)
    assert computed == ["attention.scores", "attention.detect"]  # nothing recomputed
    assert all(r.cached for r in second) and again.hits == 2
    assert values(second) == values(first)
    assert all(r.passed for r in second)


def test_without_a_cache_nothing_is_stored(tmp_path: Path, computed: list[str]) -> None:
    path = claims_file(tmp_path)
    run(path, None)
    run(path, None)
    assert len(computed) == 4
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def stored_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, str]]]:
    """One run of the demo claims (seed 0) into a fresh cache: the cache folder (its two entries)
    and the run's values. The tests that change or damage a stored cache work on copies (:func:`stored`)."""
    root = tmp_path_factory.mktemp("stored")
    cache = MeasurementCache(root / "cache")
    results = run(claims_file(root), cache)
    assert cache.stored == 2 and not any(r.cached for r in results)
    return root / "cache", values(results)


@pytest.fixture
def stored(tmp_path: Path, stored_run: tuple[Path, list[tuple[Any, str]]]) -> tuple[Path, list[tuple[Any, str]]]:
    """A copy of :func:`stored_run`'s cache as ``tmp_path / "cache"``, and the values of the run that stored it."""
    folder, first = stored_run
    shutil.copytree(folder, tmp_path / "cache")
    return tmp_path / "cache", first


def test_changed_inputs_recompute(tmp_path: Path, computed: list[str], stored: tuple[Path, list]) -> None:
    cache, _ = stored  # stored by a run with seed 0
    results = run(claims_file(tmp_path, seed=1), MeasurementCache(cache))
    assert len(computed) == 2 and not any(r.cached for r in results)


BASE = dict(model_key="m|planted|aa|bb|fold_ln=True|float32|cpu", metric="attention.scores",
            params={"pattern": "previous"}, inputs={"repeated_random": {"seq_len": 12}})


@pytest.mark.parametrize("change", [
    {"model_key": "m|planted|ab|bb|fold_ln=True|float32|cpu"},  # weights sha256
    {"model_key": "m|planted|aa|bb|fold_ln=False|float32|cpu"},  # processing flags
    {"metric": "attention.detect"},
    {"params": {"pattern": "induction"}},
    {"inputs": {"repeated_random": {"seq_len": 13}}},
])
def test_each_key_part_changes_the_entry(change: dict[str, Any]) -> None:
    assert cache_key(**{**BASE, **change}).digest != cache_key(**BASE).digest


def test_suite_source_and_library_versions_change_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    base = cache_key(**BASE).digest
    monkeypatch.setattr(measurement_cache, "suite_source_hash", lambda: "edited")
    assert cache_key(**BASE).digest != base
    monkeypatch.undo()
    for package in ("torch", "transformer-lens", "numpy"):
        env = {**measurement_cache.environment(), package: "0.0.0"}
        monkeypatch.setattr(measurement_cache, "environment", lambda env=env: env)
        assert cache_key(**BASE).digest != base
    monkeypatch.undo()
    assert cache_key(**BASE).digest == base


def test_the_metric_function_source_is_in_the_key() -> None:
    def one(): ...  # noqa: E704
    assert cache_key(**BASE, metric_function=one).digest != cache_key(**BASE).digest


def test_suite_source_hash_covers_the_engine_code() -> None:
    """The hash is over the package's files: it is a sha256, stable within a process."""
    digest = measurement_cache.suite_source_hash()
    assert len(digest) == 64 and digest == measurement_cache.suite_source_hash()


def test_changed_source_recomputes_a_stored_run(tmp_path: Path, computed: list[str], monkeypatch: pytest.MonkeyPatch,
                                               stored: tuple[Path, list]) -> None:
    path, (cache, _) = claims_file(tmp_path), stored
    monkeypatch.setattr(measurement_cache, "suite_source_hash", lambda: "edited")
    results = run(path, MeasurementCache(cache))
    assert len(computed) == 2 and not any(r.cached for r in results)


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("v*/*/*.json"))


@pytest.mark.parametrize("corrupt", ["garbage", "truncated", "value-edited", "key-edited", "empty"])
def test_a_corrupted_entry_is_ignored_with_a_warning(tmp_path: Path, computed: list[str], corrupt: str, stored: tuple[Path, list]) -> None:
    path, (cache, first) = claims_file(tmp_path), stored
    assert len(_entries(cache)) == 2
    for entry in _entries(cache):
        text = entry.read_text()
        data = json.loads(text)
        if corrupt == "garbage":
            entry.write_bytes(b"\xff\x00 not json")
        elif corrupt == "truncated":
            entry.write_text(text[: len(text) // 2])
        elif corrupt == "value-edited":  # still valid JSON: only the checksum tells
            value = data["measurement"]["value"]
            data["measurement"]["value"] = {k: 0.0 for k in value} if isinstance(value, dict) else ["0.0"]
            entry.write_text(json.dumps(data))
        elif corrupt == "key-edited":  # an entry filed under another key's name
            data["key"]["params"] = "{}"
            entry.write_text(json.dumps(data))
        else:
            entry.write_text("")
    again = MeasurementCache(cache)
    with pytest.warns(CacheEntryWarning, match="ignoring measurement cache entry"):
        second = run(path, again)
    assert len(computed) == 2 and again.ignored == 2 and not any(r.cached for r in second)
    assert values(second) == first
    third = run(path, MeasurementCache(cache))  # the recomputed values replaced the bad entries
    assert all(r.cached for r in third) and values(third) == first


def test_a_measurement_is_stored_as_the_record_writes_it(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from harness.record import to_json

    cache = MeasurementCache(tmp_path)
    key = cache_key(**BASE)
    cache.put(key, Measurement(0.5, details={"array": np.zeros(3)}), 0.0)
    cache.put(key, Measurement(0.5, details={object(): 1}), 0.0)
    assert cache.not_storable == 2 and cache.get(key) is None
    measured = Measurement(
        [{"label": "rank=1", "top1": np.float32(0.1), "trace": (1, np.int64(2))}],
        None, {"fits": {1: {"loss": torch.tensor(0.25).double(), "ok": np.bool_(True)}}, "nan": float("nan")}, "frac", "lower")
    cache.put(key, measured, 0.0)
    back = MeasurementCache(tmp_path).get(key)
    assert back is not None and back.bound == "lower" and back.unit == "frac"
    assert back.value == [{"label": "rank=1", "top1": float(np.float32(0.1)), "trace": [1, 2]}]
    assert back.details["fits"] == {"1": {"loss": 0.25, "ok": True}} and back.details["nan"] != back.details["nan"]
    assert to_json(_fields(back)) == to_json(_fields(measured))  # the record cannot tell them apart


def test_plain_numbers_read_back_bit_for_bit(tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path)
    key = cache_key(**BASE)
    measured = Measurement({"0.0": 0.1 + 0.2, "1.0": 5e-324}, {"0.0": 1e-300, "1.0": None}, {"n": 3, "ok": True, "inf": float("inf")})
    cache.put(key, measured, 0.0)
    back = MeasurementCache(tmp_path).get(key)
    assert back is not None and back.value == measured.value and back.uncertainty == measured.uncertainty
    assert back.details == measured.details and type(back.details["n"]) is int and back.bound is None


def _fields(measurement: Measurement) -> dict[str, Any]:
    return {name: getattr(measurement, name) for name in ("value", "uncertainty", "details", "unit", "bound")}


def test_cli_no_cache_clear_and_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    claims_file(tmp_path)
    cache = str(tmp_path / "cache")
    # one measured claim is enough to show that --no-cache does not create the folder (a whole run draws three more plots);
    # that it does not read a stored cache is not checked here (the folder does not exist yet)
    assert claims_main(["run", "claims", "-k", "induction-heads", "--out", "nocache", "--no-progress", "--no-cache", "--cache-dir", cache]) == 0
    assert not Path(cache).exists()
    assert claims_main(["run", "claims", "--out", "a", "--no-progress", "--cache-dir", cache]) == 0
    assert claims_main(["run", "claims", "--out", "b", "--no-progress", "--cache-dir", cache]) == 0
    a, b = (json.loads((tmp_path / out / "results.json").read_text()) for out in ("a", "b"))
    assert [e["cached"] for e in a["claims"]] == [False] * 3 and [e["cached"] for e in b["claims"]] == [True] * 3
    assert b["provenance"]["measurement_cache"]["hits"] == 2 and b["provenance"]["measurement_cache"]["dir"] == cache
    strip = lambda record: [{k: v for k, v in e.items() if k not in ("duration_s", "cached")} for e in record["claims"]]  # noqa: E731
    assert strip(a) == strip(b)
    report = (tmp_path / "b" / "report.md").read_text()
    assert "3 of 3 claims reused a cached measurement" in report and "(cached)" in report
    assert "(cached)" not in (tmp_path / "a" / "report.md").read_text()
    assert "reused from the measurement cache" in (tmp_path / "b" / "report.html").read_text()
    capsys.readouterr()
    assert claims_main(["cache", "info", "--cache-dir", cache]) == 0
    assert ": 2 entries" in capsys.readouterr().out
    assert claims_main(["cache", "clear", "--cache-dir", cache]) == 0
    assert "removed 2 cached measurement(s)" in capsys.readouterr().out
    assert _entries(Path(cache)) == []


def test_default_folder_follows_xdg_and_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(measurement_cache.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert measurement_cache.default_cache_dir() == tmp_path / "xdg" / "interp-claims" / "measurements"
    monkeypatch.setenv(measurement_cache.ENV_DIR, str(tmp_path / "mine"))
    assert measurement_cache.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv(measurement_cache.ENV_OFF, raising=False)
    assert measurement_cache.open_cache().root == tmp_path / "mine"
    assert measurement_cache.open_cache(disabled=True) is None
    monkeypatch.setenv(measurement_cache.ENV_OFF, "1")
    assert measurement_cache.open_cache() is None
    assert measurement_cache.open_cache(folder=tmp_path / "given").root == tmp_path / "given"


def test_an_unwritable_folder_warns_once_and_the_run_goes_on(tmp_path: Path, computed: list[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = MeasurementCache(blocker / "cache")  # under a file: cannot be created
    with pytest.warns(CacheEntryWarning, match="cannot be written"):
        results = run(claims_file(tmp_path), cache)
    assert all(r.passed for r in results) and cache.stored == 0


def test_another_cpu_or_thread_count_changes_the_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache restored on a machine with another CPU recomputes: figures may move with the CPU."""
    base, here = cache_key(**BASE).digest, measurement_cache.cpu_identity()
    for change in ({"cpu": "Another CPU"}, {"cpu_flags": "avx2 fma avx"}, {"cpus": "64"}):
        monkeypatch.setattr(measurement_cache, "cpu_identity", lambda change=change: {**here, **change})
        measurement_cache.environment.cache_clear()  # read once per process
        assert cache_key(**BASE).digest != base
        monkeypatch.undo()
    monkeypatch.setenv("OMP_NUM_THREADS", "1" if os.environ.get("OMP_NUM_THREADS") != "1" else "2")
    measurement_cache.environment.cache_clear()
    assert cache_key(**BASE).digest != base
    monkeypatch.undo()
    measurement_cache.environment.cache_clear()
    assert cache_key(**BASE).digest == base
