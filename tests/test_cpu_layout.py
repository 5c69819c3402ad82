"""The OV kernel's tiles and workers follow the CPU (harness/circuits/cpu_layout.py); its counts do not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.circuits import cpu_layout as layout_module
from harness.circuits.cpu_layout import CpuLayout, kernel_plan, parse_cpu_list, parse_size, read_sys_l2
from harness.circuits.ov_topk import cpu_plan, full_circuit_topk


def test_parse_size_and_cpu_list() -> None:
    assert parse_size("2048K\n") == 2 << 20 and parse_size("2M") == 2 << 20 and parse_size("512") == 512
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    with pytest.raises(ValueError, match="not a cache size"):
        parse_size("lots")


def fake_sys(root: Path, caches: list[tuple[str, str, str, str]]) -> Path:
    for i, (level, kind, size, shared) in enumerate(caches):
        index = root / "cpu0" / "cache" / f"index{i}"
        index.mkdir(parents=True)
        for name, text in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (index / name).write_text(text + "\n")
    return root


def test_reads_the_l2_cache_and_its_sharers_from_sys(tmp_path: Path) -> None:
    root = fake_sys(tmp_path, [("1", "Data", "48K", "0,8"), ("1", "Instruction", "32K", "0,8"), ("2", "Unified", "1280K", "0,8"), ("3", "Unified", "54M", "0-15")])
    size, shared, source = read_sys_l2(root, 0)
    assert (size, shared) == (1280 << 10, {0, 8}) and source.endswith("index2")
    assert read_sys_l2(tmp_path / "nowhere", 0) is None


@pytest.mark.parametrize("l2_mib, sharers, workers", [(2, 1, 2), (2, 1, 16), (1, 2, 32), (0.25, 2, 4), (1.25, 1, 64), (32, 1, 1)])
def test_plan_tiles_fit_the_kernel(l2_mib: float, sharers: int, workers: int) -> None:
    """Columns a multiple of the 1024-column counting chunk, rows a power of two dividing them,
    the tile within the bounds, and at least as large as L2 or the interpreter lock asks."""
    plan = kernel_plan(CpuLayout(workers, int(l2_mib * 2**20), sharers, "test"), workers)
    rows, cols = plan.block_rows, plan.block_cols
    assert cols % 1024 == 0 and rows & (rows - 1) == 0 and cols % rows == 0
    assert layout_module.MIN_ENTRIES <= rows * cols <= layout_module.MAX_ENTRIES
    assert plan.workers == workers and f"{rows} x {cols}" in plan.reason


def test_a_core_with_2_mib_of_l2_gets_tiles_that_stay_in_it() -> None:
    plan = kernel_plan(CpuLayout(2, 2 << 20, 1, "test"), 2)
    assert (plan.block_rows, plan.block_cols) == (256, 1024)
    assert plan.block_rows * plan.block_cols * layout_module.BYTES_PER_ENTRY <= 0.75 * (2 << 20)


def test_many_workers_get_larger_tiles() -> None:
    few = kernel_plan(CpuLayout(2, 2 << 20, 1, "test"), 2)
    many = kernel_plan(CpuLayout(64, 2 << 20, 1, "test"), 64)
    assert many.block_rows * many.block_cols > few.block_rows * few.block_cols
    assert "interpreter lock" in many.reason


def test_this_machine_has_a_plan() -> None:
    plan = cpu_plan()
    assert plan.workers >= 1 and plan.block_rows >= 1 and "usable CPU" in plan.reason


def test_counts_do_not_depend_on_the_planned_tiles() -> None:
    """The kernel with this CPU's tiles and with the former fixed 512 x 8192 tiles, 1 and 2 workers: equal counts."""
    rng = np.random.default_rng(3)
    V, d, r = 2500, 48, 8
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in ((V, d), (d, r), (r, d), (d, V)))
    U[:, 7] = U[:, 11]  # exact ties
    planned = full_circuit_topk(E, L, R, U)
    for kwargs in ({"block_rows": 512, "block_cols": 8192}, {"workers": 1}, {"block_rows": 64, "block_cols": 1024, "workers": 2}):
        other = full_circuit_topk(E, L, R, U, **kwargs)
        for name in ("above", "ties", "ties_below"):
            assert np.array_equal(getattr(planned, name), getattr(other, name)), (name, kwargs)
        assert np.array_equal(np.sign(planned.margin), np.sign(other.margin))
