"""The ``repeated_maxrep`` input kind: ``[BOS] + R + C``, C made of maxrep-token chunks of R.

Checked: shapes and BOS as ``repeated_random``; R equal to ``repeated_random``'s for the same
seed; seeded determinism; every chunk of C is a contiguous copy of R starting in
``[0, seq_len - maxrep)``; no chunk continues the previous one in R; hence, when R has distinct
tokens, no (maxrep+1)-gram of R appears anywhere in C (the course's "max-2 repeats").
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fixtures.inputs import (
    INPUT_KINDS,
    RepeatedMaxrepParams,
    RepeatedRandomParams,
    repeated_maxrep_tokens,
    repeated_random_tokens,
)
from harness.metrics.loss import prediction_slice

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

BIG_VOCAB = 50_278  # the course model's d_vocab
SETTINGS = settings(max_examples=40, deadline=None)

params_strategy = st.builds(
    dict,
    seq_len=st.integers(2, 60),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    maxrep=st.integers(1, 4),
    prepend_bos=st.booleans(),
).filter(lambda p: p["seq_len"] > p["maxrep"])


def build(d_vocab: int, **params: Any) -> torch.Tensor:
    return repeated_maxrep_tokens(d_vocab, 0, RepeatedMaxrepParams(**params))


def halves(tokens: torch.Tensor, seq_len: int, prepend_bos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    start = 1 if prepend_bos else 0
    return tokens[:, start : start + seq_len], tokens[:, start + seq_len :]


def ngrams(row: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(row[i : i + n]) for i in range(len(row) - n + 1)}


def chunk_starts_of(first: list[int], second: list[int], maxrep: int) -> list[int]:
    """For each chunk k of ``second``, the start s in R it was copied from (R distinct: unique)."""
    starts = []
    for k in range(0, len(second), maxrep):
        chunk = second[k : k + maxrep]
        matches = [s for s in range(len(first) - maxrep) if first[s : s + len(chunk)] == chunk]
        assert len(matches) == 1, (chunk, matches)
        starts.append(matches[0])
    return starts


@SETTINGS
@given(params_strategy)
def test_shape_bos_and_first_half_as_repeated_random(params: dict[str, Any]) -> None:
    tokens = build(BIG_VOCAB, **params)
    seq_len, batch = params["seq_len"], params["batch"]
    prefix = 1 if params["prepend_bos"] else 0
    assert tokens.shape == (batch, prefix + 2 * seq_len) and tokens.dtype == torch.int64
    if prefix:
        assert (tokens[:, 0] == 0).all()
    random_params = {k: params[k] for k in ("seq_len", "batch", "seed", "prepend_bos")}
    reference = repeated_random_tokens(BIG_VOCAB, 0, RepeatedRandomParams(**random_params))
    assert torch.equal(tokens[:, : prefix + seq_len], reference[:, : prefix + seq_len])
    assert int(tokens.min()) >= 0 and int(tokens.max()) < BIG_VOCAB


@SETTINGS
@given(params_strategy)
def test_chunks_are_copies_of_r_that_never_continue_each_other(params: dict[str, Any]) -> None:
    tokens = build(BIG_VOCAB, **params)
    first, second = halves(tokens, params["seq_len"], params["prepend_bos"])
    maxrep = params["maxrep"]
    for r, c in zip(first.tolist(), second.tolist()):
        if len(set(r)) < len(r):
            continue  # a chance duplicate in R (rare at this vocabulary) makes the source ambiguous
        starts = chunk_starts_of(r, c, maxrep)
        assert len(starts) == -(-params["seq_len"] // maxrep)
        assert all(0 <= s < params["seq_len"] - maxrep for s in starts)
        assert all(b != a + maxrep for a, b in zip(starts, starts[1:]))


@SETTINGS
@given(params_strategy)
def test_no_longer_repeat_of_r_in_the_second_half(params: dict[str, Any]) -> None:
    """With R distinct, no (maxrep+1)-gram of R occurs in C (nor across the R|C boundary)."""
    tokens = build(BIG_VOCAB, **params)
    first, second = halves(tokens, params["seq_len"], params["prepend_bos"])
    n = params["maxrep"] + 1
    for r, c in zip(first.tolist(), second.tolist()):
        if len(set(r)) < len(r):
            continue
        assert not ngrams(r, n) & ngrams(c, n)
        boundary = r[-(n - 1) :] + c[: n - 1]  # the n-grams that straddle R | C
        assert not ngrams(r, n) & ngrams(boundary, n)


def test_course_shape_has_only_length_two_repeats() -> None:
    """The course's call (seq_len 50, batch 50, maxrep 2): every row repeats bigrams of R, never a 3-gram."""
    tokens = build(BIG_VOCAB, seq_len=50, batch=50, seed=0)
    first, second = halves(tokens, 50, True)
    rows = [(r, c) for r, c in zip(first.tolist(), second.tolist()) if len(set(r)) == len(r)]
    assert len(rows) >= 45  # duplicates in R are rare at d_vocab 50,278
    for r, c in rows:
        assert all(tuple(c[k : k + 2]) in ngrams(r, 2) for k in range(0, 50, 2))  # 25 chunks, each an R bigram
        assert not ngrams(r, 3) & ngrams(c, 3)


def test_seeded_and_deterministic() -> None:
    a = build(BIG_VOCAB, seq_len=30, batch=3, seed=5)
    assert torch.equal(a, build(BIG_VOCAB, seq_len=30, batch=3, seed=5))
    assert not torch.equal(a, build(BIG_VOCAB, seq_len=30, batch=3, seed=6))
    state = torch.random.get_rng_state()
    build(BIG_VOCAB, seq_len=30, batch=3, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_odd_seq_len_truncates_the_last_chunk() -> None:
    tokens = build(BIG_VOCAB, seq_len=7, batch=2, seed=3)
    first, second = halves(tokens, 7, True)
    assert second.shape == (2, 7)
    for r, c in zip(first.tolist(), second.tolist()):
        assert c[-1] in r[: 7 - 2]  # the cut chunk's first token is a chunk start


@pytest.mark.parametrize("bad", [{"seq_len": 2, "maxrep": 2}, {"seq_len": 1}, {"maxrep": 0}, {"chunk": 2}, {"batch": 0}])
def test_params_are_strict(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RepeatedMaxrepParams(**bad)


def test_registered_and_usable_with_repeated_positions() -> None:
    """As an input kind: meta seq_len/prefix let the halves (and ablation's repeated_half) slice it."""
    kind = INPUT_KINDS["repeated_maxrep"]

    class Shape:
        d_vocab = 64

    class Model:
        shape = Shape()
        bos_token_id = 0

    batch = kind.build(Model(), kind.params_model.model_validate({"seq_len": 10, "batch": 2, "seed": 1}))
    assert batch.kind == "repeated_maxrep" and batch.tokens.shape == (2, 21)
    assert batch.meta == {"seq_len": 10, "prefix": 1, "maxrep": 2}
    assert batch.key == "repeated_maxrep(batch=2,maxrep=2,prepend_bos=True,seed=1,seq_len=10)"
    assert prediction_slice("second_half_excl_first", 20, batch.meta) == slice(11, 20)
    Model.bos_token_id = None
    with pytest.raises(ValueError, match="BOS"):
        kind.build(Model(), kind.params_model.model_validate({"seq_len": 10}))
