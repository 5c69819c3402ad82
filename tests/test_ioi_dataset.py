"""ARENA 1.4.1's seeded IOI dataset as an input kind: the generator, its ABC flip, named positions, END logit difference."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fixtures.ioi_dataset import ABBA_TEMPLATES, BABA_TEMPLATES, FLIPS, flipped, generate, mirrored
from fixtures.ioi_names import IOI_NAMES
from harness.testing import measure_metric
from tests.ioi_dataset_support import dataset_batch, dataset_model, end_logit_diffs, train_dataset_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("ioi-dataset-tokenizer"))


def test_mirrored_templates_swap_the_first_clause_only() -> None:
    assert mirrored("Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]") == (
        "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    )
    assert len(ABBA_TEMPLATES) == len(BABA_TEMPLATES) == 15
    assert all(t.count("[B]") == m.count("[B]") for t, m in zip(BABA_TEMPLATES, ABBA_TEMPLATES))


def test_generator_is_seeded_and_well_formed() -> None:
    first, again, other = generate(25, 1), generate(25, 1), generate(25, 2)
    assert first == again and first != other and len(first) == 25
    for p in first:
        assert p.io != p.s and p.io in IOI_NAMES and p.s in IOI_NAMES
        assert p.text.endswith(" " + p.io) and p.text.count(p.s) == 2
        assert p.order == ("ABBA" if p.text.index(p.io) < p.text.index(p.s) else "BABA")
    assert {p.order for p in generate(60, 1)} == {"ABBA", "BABA"}
    assert {p.order for p in generate(20, 1, "BABA")} == {"BABA"}


def test_abc_flip_replaces_the_three_names_and_is_seeded() -> None:
    clean = generate(30, 1)
    abc = flipped(clean, FLIPS["abc"], 1)
    assert abc == flipped(clean, FLIPS["abc"], 1) and abc != flipped(clean, FLIPS["abc"], 2)
    for before, after in zip(clean, abc):
        words_before, words_after = before.text.split(" "), after.text.split(" ")
        changed = [i for i, (a, b) in enumerate(zip(words_before, words_after)) if a != b]
        named = [w for w in words_after if w in IOI_NAMES]
        assert len(named) >= 3  # three fresh names, each drawn alone (as the course does: two may coincide)
        assert len(changed) >= 2 and words_after[-1] == before.io  # the final name (the answer) is kept
        assert not {before.io, before.s} & set(named[:3])


def test_input_kind_positions_and_padding(tokenizer: Any) -> None:
    model = dataset_model(0, tokenizer)
    batch = dataset_batch(model, n=12, seed=1)
    prompts = generate(12, 1)
    idx = batch.meta["word_idx"]
    for b, p in enumerate(prompts):
        row = batch.tokens[b]
        length = batch.meta["lengths"][b]
        assert tokenizer.decode(row[:length]) == p.text
        assert (row[length:] == 0).all()  # right-padded with BOS/EOS
        io, s = batch.meta["answers"][b]
        assert int(row[idx["IO"][b]]) == io and int(row[idx["S1"][b]]) == s and int(row[idx["S2"][b]]) == s
        assert idx["S1"][b] < idx["S2"][b] < idx["end"][b] == length - 2 and int(row[length - 1]) == io
        assert (idx["IO"][b] < idx["S1"][b]) == (p.order == "ABBA")
    abc = dataset_batch(model, n=12, seed=1, flip="abc")
    assert abc.meta["answers"] == batch.meta["answers"] and abc.meta["word_idx"] == idx
    assert not torch.equal(abc.tokens, batch.tokens)
    with_bos = dataset_batch(model, n=12, seed=1, prepend_bos=True)
    assert with_bos.meta["word_idx"]["end"] == [e + 1 for e in idx["end"]]


def test_logit_diff_is_read_at_each_prompts_end(tokenizer: Any) -> None:
    """ioi.logit_diff on ioi_dataset equals logits[b, end_b, IO] - logits[b, end_b, S] by a loop (not the last position)."""
    model = dataset_model(1, tokenizer)
    for flip in (None, "abc"):
        batch = dataset_batch(model, n=10, seed=3, flip=flip)
        expected = end_logit_diffs(model, batch, batch.meta["answers"])
        got = measure_metric(model, "ioi.logit_diff", inputs={"ioi_dataset": {"n": 10, "seed": 3, "flip": flip}})
        assert [got.value[str(b)] for b in range(10)] == pytest.approx(expected, abs=1e-5)
        assert got.value["mean"] == pytest.approx(sum(expected) / 10, abs=1e-5)


def test_head_attribution_sums_at_the_end_positions(tokenizer: Any) -> None:
    """The direct parts at END sum to the END logit difference (the metric fails closed otherwise)."""
    model = dataset_model(2, tokenizer)
    inputs = {"ioi_dataset": {"n": 8, "seed": 1}}
    got = measure_metric(model, "ioi.head_attribution", inputs=inputs)
    assert got.details["sum_check"] < 1e-4
    assert got.details["logit_diff_mean"] == pytest.approx(measure_metric(model, "ioi.logit_diff", inputs=inputs).value["mean"], abs=1e-5)
