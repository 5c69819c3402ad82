"""The OV kernel's worker count: a fallback to fewer threads than the CPU offers is announced once."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from harness.circuits import ov_topk


@pytest.fixture
def no_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import threadpoolctl`` fails (None in sys.modules raises ImportError), warning state reset."""
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    monkeypatch.setattr(ov_topk, "_fallback_warned", False)


def test_threadpoolctl_is_installed() -> None:
    """It is a declared dependency: the kernel's fast path is the default install's path."""
    import threadpoolctl  # noqa: F401


def test_fallback_warns_once_naming_the_cause(no_threadpoolctl: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_topk, "cpu_share", lambda: 4)
    with pytest.warns(ov_topk.KernelFallbackWarning, match="threadpoolctl is not installed.*1 worker thread instead of 4"):
        assert ov_topk._auto_workers() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ov_topk._auto_workers() == 1  # once per process, not per call


def test_no_warning_on_one_core(no_threadpoolctl: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ov_topk, "cpu_share", lambda: 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ov_topk._auto_workers() == 1


def test_fallback_counts_the_same(no_threadpoolctl: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback is slower, never different: the same counts as the threaded kernel."""
    rng = np.random.default_rng(0)
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in ((300, 16), (16, 4), (4, 16), (16, 300)))
    threaded = ov_topk.full_circuit_topk(E, L, R, U, block_rows=64, block_cols=1024, workers=2)
    monkeypatch.setattr(ov_topk, "cpu_share", lambda: 2)
    with pytest.warns(ov_topk.KernelFallbackWarning):
        fallback = ov_topk.full_circuit_topk(E, L, R, U, block_rows=64, block_cols=1024)
    assert np.array_equal(threaded.above, fallback.above) and np.array_equal(threaded.ties, fallback.ties)


def test_workers_with_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker per usable CPU (the tiles grow with the worker count instead of a cap on it)."""
    monkeypatch.setattr(ov_topk, "cpu_share", lambda: 16)
    assert ov_topk._auto_workers() == 16
    assert ov_topk.cpu_plan().workers == 16
