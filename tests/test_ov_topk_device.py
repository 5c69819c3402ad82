"""The device-resident kernel (harness/circuits/ov_topk_device.py) run on the CPU device: the CPU kernel's counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.circuits.ov_topk import full_circuit_topk
from harness.testing import fast_settings
from tests.test_ov_prune import COUNTS, near_tie_circuits, planted_copier
from tests.test_ov_topk import circuits, dense_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def assert_device_equals_cpu(E, L, R, U, rows, block_rows, **kw):
    cpu = full_circuit_topk(E, L, R, U, rows=rows, block_rows=7, block_cols=40, **kw)
    dev = full_circuit_topk(*(torch.from_numpy(x) for x in (E, L, R, U)), rows=rows, block_rows=block_rows,
                            device="cpu", **kw)
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(dev, name), getattr(cpu, name), err_msg=name)
    np.testing.assert_allclose(dev.tolerance, cpu.tolerance, rtol=1e-12)  # norms summed in another order
    assert np.array_equal(np.sign(dev.margin), np.sign(cpu.margin), equal_nan=True)
    finite = np.isfinite(cpu.margin)
    assert np.all(np.abs(dev.margin - cpu.margin)[finite] <= 4 * cpu.tolerance[finite])
    return cpu, dev


@fast_settings(80)
@given(circuits(), st.integers(1, 80))
def test_device_path_on_cpu_equals_cpu_kernel(circuit, block_rows):
    E, L, R, U, rows = circuit
    assert_device_equals_cpu(E, L, R, U, rows, block_rows)


@fast_settings(30)
@given(st.integers(2, 120), st.integers(1, 16), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_device_float32_only_scan_on_small_integers(V, d, r, seed):
    """recheck=False counts the float32 product itself; small integers make it exact on both paths."""
    rng = np.random.default_rng(seed)
    E, L, R, U = (rng.integers(-3, 4, s).astype(np.float32) for s in [(V, d), (d, r), (r, d), (d, V)])
    ref = dense_reference(E, L, R, U)
    dev = full_circuit_topk(*(torch.from_numpy(x) for x in (E, L, R, U)), recheck=False, device="cpu", block_rows=9)
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(dev, name), ref[name], err_msg=name)
    assert np.array_equal(dev.margin, ref["margin"])


@fast_settings(60)
@given(near_tie_circuits(), st.integers(1, 80))
def test_device_path_at_near_ties_equals_dense_reference(circuit, block_rows):
    E, L, R, U, rows = circuit
    _, dev = assert_device_equals_cpu(E, L, R, U, rows, block_rows)
    ref = dense_reference(E, L, R, U)
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(dev, name), ref[name][rows], err_msg=name)


def test_device_path_planted_copier_and_random_model():
    E, L, R, U = planted_copier(V=1500, d=40, noise=0.02, seed=1)
    cpu, dev = assert_device_equals_cpu(E, L, R, U, None, None)
    assert dev.accuracy(1) > 0.9
    rng = np.random.default_rng(5)
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in [(1500, 24), (24, 8), (8, 24), (24, 1500)])
    assert_device_equals_cpu(E, L, R, U, slice(100, 900), 128, margins=False)


def test_device_path_refuses_bad_input():
    E = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="NaN"):
        full_circuit_topk(E, torch.full((3, 2), torch.nan), torch.zeros(2, 3), torch.zeros(3, 5), device="cpu")
    with pytest.raises(ValueError, match="shape"):
        full_circuit_topk(E, torch.zeros(3, 2), torch.zeros(2, 3), torch.zeros(3, 4), device="cpu")
