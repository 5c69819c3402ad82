"""The OV kernel's tiles calibrated on the CPU (harness/circuits/kernel_calibration.py): chosen by
measurement, stored per CPU signature, reused; never a different count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.circuits import kernel_calibration as cal
from harness.circuits import ov_topk
from harness.circuits.kernel_calibration import CANDIDATES, calibrated_tiles, rank_bucket, signature


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cal, "_MEMORY", {})


def fake_measure(fastest: tuple[int, int], calls: list[tuple[int, int]]) -> cal.Measure:
    def measure(rows: int, cols: int) -> float:
        calls.append((rows, cols))
        return 1.0 if (rows, cols) == fastest else 2.0 + rows * cols / 1e9

    return measure


def sig(**change: object) -> dict:
    return {**signature(2, 64, True, "test layout"), **change}


def test_the_fastest_candidate_wins_and_is_stored(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    found = calibrated_tiles(sig(), fake_measure((512, 2048), calls), extra=(128, 1024), folder=tmp_path)
    assert (found.block_rows, found.block_cols) == (512, 2048) and found.measured_now
    assert set(calls) == {*CANDIDATES, (128, 1024)} and len(calls) == cal.REPEATS * (len(CANDIDATES) + 1)
    stored = json.loads(found.path.read_text())
    assert (stored["block_rows"], stored["block_cols"]) == (512, 2048) and stored["signature"] == sig()


def test_the_rules_tile_stays_unless_clearly_slower(tmp_path: Path) -> None:
    """Within 5% of the fastest, the rule's tile is kept: load noise is no reason to move."""
    times = {(128, 1024): 1.04, (512, 2048): 1.0}
    found = calibrated_tiles(sig(), lambda r, c: times.get((r, c), 2.0), extra=(128, 1024), folder=tmp_path)
    assert (found.block_rows, found.block_cols) == (128, 1024)
    times[(128, 1024)] = 1.06
    other = calibrated_tiles(sig(workers=3), lambda r, c: times.get((r, c), 2.0), extra=(128, 1024), folder=tmp_path)
    assert (other.block_rows, other.block_cols) == (512, 2048)


def test_a_stored_choice_is_reused_without_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calibrated_tiles(sig(), fake_measure((256, 4096), []), folder=tmp_path)
    monkeypatch.setattr(cal, "_MEMORY", {})  # a later process: only the file remains
    calls: list[tuple[int, int]] = []
    again = calibrated_tiles(sig(), fake_measure((512, 1024), calls), folder=tmp_path)
    assert (again.block_rows, again.block_cols) == (256, 4096) and not again.measured_now and calls == []


@pytest.mark.parametrize("change", [{"blas_core": "NoSuchCore"}, {"workers": 1}, {"rank_bucket": 8},
                                    {"variables": {"NUMBA_CPU_NAME": "generic"}}, {"flags": ["sse2"]}])
def test_another_cpu_signature_measures_again(tmp_path: Path, change: dict) -> None:
    first = calibrated_tiles(sig(), fake_measure((256, 4096), []), folder=tmp_path)
    other = calibrated_tiles(sig(**change), fake_measure((512, 1024), []), folder=tmp_path)
    assert other.path != first.path and (other.block_rows, other.block_cols) == (512, 1024)


def test_a_corrupted_or_foreign_file_is_measured_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unparsable, another signature's, a tile no calibration tries (a 16 GiB tile would be
    allocated per worker), or seconds that are not numbers: each is measured again, never used."""
    first = calibrated_tiles(sig(), fake_measure((256, 4096), []), folder=tmp_path)
    huge = {"signature": sig(), "block_rows": 4, "block_cols": 1 << 30, "cpu_seconds": {f"4x{1 << 30}": 1.0}}
    for text in ("{not json", json.dumps({"signature": sig(workers=99), "block_rows": 256, "block_cols": 4096,
                                          "cpu_seconds": {"256x4096": 1.0}}), json.dumps(huge),
                 json.dumps({**huge, "block_rows": 256, "block_cols": 4096, "cpu_seconds": {"256x4096": "fast"}})):
        first.path.write_text(text)
        monkeypatch.setattr(cal, "_MEMORY", {})
        again = calibrated_tiles(sig(), fake_measure((512, 1024), []), folder=tmp_path)
        assert (again.block_rows, again.block_cols) == (512, 1024) and again.measured_now


def test_rank_buckets_and_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [rank_bucket(r) for r in (1, 4, 5, 16, 17, 64, 65)] == [4, 4, 8, 16, 32, 64, 128]
    monkeypatch.setenv(cal.ENV_MODE, "rule")
    assert cal.mode() == "rule"
    monkeypatch.setenv(cal.ENV_MODE, "fastest")
    with pytest.raises(ValueError, match="INTERP_CLAIMS_KERNEL_TILES='fastest'"):
        cal.mode()


def test_small_problems_and_rule_mode_keep_the_l2_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = ov_topk.cpu_plan(2)
    assert ov_topk.cpu_plan(2, r=64, entries=cal.MIN_CALIBRATED_ENTRIES - 1) == rule
    monkeypatch.setenv(cal.ENV_MODE, "rule")
    assert ov_topk.cpu_plan(2, r=64, entries=cal.MIN_CALIBRATED_ENTRIES) == rule


def test_the_kernel_calibrates_for_a_large_problem_and_counts_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real (shrunken) calibration through full_circuit_topk: the tiles it picks give the same
    counts as another tile (not the picked one, which may be the rule's), exact ties included; the
    choice is stored under the cache root."""
    monkeypatch.setenv("INTERP_CLAIMS_CACHE", str(tmp_path))
    monkeypatch.setattr(cal, "MIN_CALIBRATED_ENTRIES", 1)
    monkeypatch.setattr(ov_topk, "MIN_CALIBRATED_ENTRIES", 1)
    monkeypatch.setattr(ov_topk, "CAL_ROWS", 128)
    monkeypatch.setattr(ov_topk, "CAL_KEYS", 2048)
    monkeypatch.setattr(cal, "REPEATS", 1)
    rng = np.random.default_rng(5)
    V, d, r = 2300, 40, 6
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in ((V, d), (d, r), (r, d), (d, V)))
    U[:, 3] = U[:, 9]  # exact ties
    rule = ov_topk.cpu_plan(2)
    plan = ov_topk.cpu_plan(2, r=r, entries=V * V)
    assert "calibrated on this CPU" in plan.reason
    assert (plan.block_rows, plan.block_cols) in (*CANDIDATES, (rule.block_rows, rule.block_cols))
    assert list((tmp_path / "kernel-tiles").glob("*.json"))
    calibrated = ov_topk.full_circuit_topk(E, L, R, U, workers=2)
    picked = (plan.block_rows, plan.block_cols)
    rows, cols = (64, 1024) if picked != (64, 1024) else (128, 2048)  # never the picked tile again
    other = ov_topk.full_circuit_topk(E, L, R, U, workers=2, block_rows=rows, block_cols=cols)
    for name in ("above", "ties", "ties_below"):
        assert np.array_equal(getattr(calibrated, name), getattr(other, name)), name
    assert np.array_equal(np.sign(calibrated.margin), np.sign(other.margin))


def _burn_in_another_thread() -> None:
    """CPU work (a fixed amount, whatever the load) in a second thread, waited for."""
    import threading

    worker = threading.Thread(target=lambda: sum(i * i for i in range(2_000_000)))
    worker.start()
    worker.join()


def test_a_one_thread_measure_ignores_the_other_threads() -> None:
    """A rank curve's fits run side by side in threads while one of them calibrates a one-worker
    scan: the process's CPU clock would charge the neighbours' work to the tile being measured."""
    process = cal.cpu_seconds(_burn_in_another_thread)
    own = cal.cpu_seconds(_burn_in_another_thread, own_thread=True)
    assert process > 0.05 and own < process / 5


@pytest.mark.parametrize("workers", [1, 2])
def test_the_calibration_scan_uses_the_thread_clock_for_one_worker(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    clocks: list[bool] = []
    monkeypatch.setattr(ov_topk, "cpu_seconds", lambda run, own_thread=False: clocks.append(own_thread) or 1.0)
    ov_topk._calibration_scan(4, workers, True)(256, 1024)
    assert clocks == [workers == 1]
