"""One copy of each piece of circuit maths: the shared routines give what the copies they replace gave.

The replaced routines are kept here, verbatim in their arithmetic, as references.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from harness.circuits.factored import FactoredCircuit, as_numpy
from harness.circuits.ov_topk import effective_factors, full_circuit_topk
from harness.metrics.composition import argmax_top1

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

SETTINGS = settings(max_examples=25, deadline=None)


def blockwise_top1(left: torch.Tensor, right: torch.Tensor, block: int = 1024) -> tuple[int, int]:
    """The replaced float32 routine: argmax hits and tied rows of ``M = left right^T``, in row blocks."""
    n = left.shape[0]
    hits = ties = 0
    for start in range(0, n, block):
        rows = left[start : start + block] @ right.T  # [b, n]
        index = torch.arange(start, start + rows.shape[0])
        hits += int((rows.argmax(dim=1) == index).sum())
        maximum = rows.max(dim=1).values
        diagonal = rows[torch.arange(rows.shape[0]), index]
        ties += int(((diagonal == maximum) & ((rows == maximum[:, None]).sum(1) > 1)).sum())
    return hits, ties


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_argmax_top1_matches_the_blockwise_routine_on_random_factors(n: int, r: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    left, right = torch.randn(n, r, generator=generator), torch.randn(n, r, generator=generator)
    left[: n // 3] = right[: n // 3] * 3.0  # some rows certainly hit
    assert argmax_top1(left, right) == blockwise_top1(left, right, block=7)


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_argmax_top1_counts_exact_ties_as_the_blockwise_routine(n: int, r: int, seed: int) -> None:
    """Small integer factors make exact ties (every product is exact in float32 and float64)."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randint(-2, 3, (n, r), generator=generator).float()
    right = torch.randint(-2, 3, (n, r), generator=generator).float()
    right = torch.cat([right[: n - n // 2], right[: n // 2]])  # duplicated key rows: exact ties
    assert argmax_top1(left, right) == blockwise_top1(left, right)


def test_a_tie_at_the_maximum_goes_to_the_first_index() -> None:
    """Row 1 ties with row 0's column: argmax picks column 0, so row 0 hits and row 1 misses."""
    left = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    right = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert argmax_top1(left, right) == (2, 2) == blockwise_top1(left, right)


def test_argmax_top1_is_the_kernel_with_argmax_ties() -> None:
    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(50, 3, generator=generator), torch.randn(50, 3, generator=generator)
    identity = torch.eye(3)
    expected = full_circuit_topk(left, identity, identity, right.T).accuracy(1, "argmax")
    hits, _ = argmax_top1(left, right)
    assert hits / 50 == expected


def head_weights(seed: int, n_layers: int = 2, n_heads: int = 3, d: int = 8, dh: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random W_V [layer, head, d_model, d_head] and W_O [layer, head, d_head, d_model]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_layers, n_heads, d, dh, generator=generator), torch.randn(n_layers, n_heads, dh, d, generator=generator)


@pytest.mark.parametrize("heads", [[(1, 2)], [(0, 1), (1, 0)], [(1, 1), (0, 0), (0, 2)]])
def test_ov_of_heads_concatenates_as_the_replaced_copies(heads: list[tuple[int, int]]) -> None:
    """Bit-equal to ``torch.cat`` of W_V along columns and W_O along rows (the copies in ov.py and low_rank.py)."""
    W_V, W_O = head_weights(0)
    circuit = FactoredCircuit.ov_of_heads(W_V, W_O, heads)
    assert torch.equal(circuit.left, torch.cat([W_V[l, h] for l, h in heads], dim=1))
    assert torch.equal(circuit.right, torch.cat([W_O[l, h] for l, h in heads], dim=0))
    assert (circuit.d_in, circuit.inner, circuit.d_out) == (8, 4 * len(heads), 8)
    ov_sum = sum(W_V[l, h].double() @ W_O[l, h].double() for l, h in heads)
    torch.testing.assert_close(circuit.double().dense(), ov_sum, rtol=1e-12, atol=1e-12)


def test_stacked_heads_match_the_numpy_concatenation() -> None:
    W_V, W_O = head_weights(1)
    left, right = effective_factors(W_V[0], W_O[0])
    assert np.array_equal(left, np.concatenate(list(W_V[0].numpy()), axis=1))
    assert np.array_equal(right, np.concatenate(list(W_O[0].numpy()), axis=0))
    assert left.dtype == np.float32


def test_numerical_rank_is_the_rank_of_the_summed_ov_matrix() -> None:
    W_V, W_O = head_weights(2, d=16, dh=3)
    assert FactoredCircuit.ov_of_heads(W_V, W_O, [(0, 0)]).double().numerical_rank() == 3
    assert FactoredCircuit.ov_of_heads(W_V, W_O, [(0, 0), (1, 2)]).double().numerical_rank() == 6
    zero = FactoredCircuit(torch.zeros(16, 3, dtype=torch.float64), torch.zeros(3, 16, dtype=torch.float64))
    assert zero.numerical_rank() == 0


def test_factors_that_do_not_chain_are_refused() -> None:
    with pytest.raises(ValueError, match="do not chain"):
        FactoredCircuit(torch.zeros(4, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="at least one head"):
        FactoredCircuit.ov_of_heads(*head_weights(0), [])


def test_as_numpy_keeps_float_values_and_widens_the_rest() -> None:
    x32 = torch.randn(3, 2)
    assert as_numpy(x32).dtype == np.float32 and np.array_equal(as_numpy(x32), x32.numpy())
    assert as_numpy(x32.double()).dtype == np.float64
    assert as_numpy(x32.bfloat16()).dtype == np.float32
    assert as_numpy(np.arange(3)).dtype == np.float64
