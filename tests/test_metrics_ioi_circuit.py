"""Attention between named IOI positions, per-layer attribution, the logit lens and ABC mean ablation + attribution.

References: TransformerLens's ``cache.decompose_resid`` / ``cache.accumulated_resid`` with
``apply_ln_to_stack`` (the course's calls) on the course's 8 prompts, loops over the cached
patterns, and the ablation written as the course's ``ablate_top_head_hook`` on a plain hooked run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fixtures.ioi_dataset import generate
from harness.testing import measure_metric
from tests.ioi_dataset_support import (
    course_mean_ablated_logit_diff, dataset_batch, dataset_model, train_dataset_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = {"ioi_dataset": {"n": 8, "seed": 5}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("ioi-circuit-tokenizer"))


@torch.no_grad()
def test_attention_between_reads_each_prompts_positions(tokenizer: Any) -> None:
    model = dataset_model(0, tokenizer)
    batch = dataset_batch(model, n=8, seed=5)
    _, cache = model._hooked.run_with_cache(batch.tokens)
    idx = batch.meta["word_idx"]
    for query, key in (("end", "IO"), ("S2", "S1"), ("end", "S2"), ("S2", "S1+1")):
        got = measure_metric(model, "ioi.attention_between", inputs=INPUTS, query=query, key=key)
        for layer in range(2):
            for head in range(2):
                expected = sum(float(cache["pattern", layer][b, head, idx[query][b], idx[key][b]]) for b in range(8)) / 8
                assert got.value[f"{layer}.{head}"] == pytest.approx(expected, abs=1e-6)
    top = measure_metric(model, "ioi.attention_between", inputs=INPUTS, query="end", key="IO", top_k=1)
    assert top.value == [max(top.details["scores"], key=top.details["scores"].get)]


@torch.no_grad()
def test_named_positions_on_the_course_prompts_match_the_dataset_rule(tokenizer: Any) -> None:
    """On a prompt set without word_idx, IO/S1/S2 come from the answer tokens; end is the final position."""
    model = dataset_model(1, tokenizer)
    batch = dataset_batch(model, n=6, seed=1)
    lengths = batch.meta["lengths"]
    same = [b for b in range(6) if lengths[b] == lengths[0]]
    rows = batch.tokens[same, : lengths[0] - 1]  # drop the final name: END is then the last position
    answers = [batch.meta["answers"][b] for b in same]
    as_tokens = measure_metric(model, "ioi.attention_between", inputs=_tokens_batch(rows, answers), query="S2", key="S1")
    ref = measure_metric(model, "ioi.attention_between", inputs={"ioi_dataset": {"n": 6, "seed": 1}}, query="S2", key="S1")
    if len(same) == 6:
        assert as_tokens.value == pytest.approx(ref.value, abs=1e-6)
    assert set(as_tokens.value) == set(ref.value)


def _tokens_batch(rows: torch.Tensor, answers: list[list[int]]) -> Any:
    from harness.core.input_batch import InputBatch

    return InputBatch(rows, "ioi_prompts", {"prompts": "custom"}, {"answers": answers, "answer_names": [["a", "b"]] * len(answers)})


@torch.no_grad()
def test_layer_attribution_and_logit_lens_are_the_course_calls(tokenizer: Any) -> None:
    """On prompts of one length (END = last position) they equal decompose_resid / accumulated_resid via apply_ln_to_stack."""
    model = dataset_model(2, tokenizer)
    prompts = generate(40, 7)
    first = prompts[0]
    hooked = model._hooked
    batch = dataset_batch(model, n=40, seed=7)
    keep = [b for b in range(40) if batch.meta["lengths"][b] == batch.meta["lengths"][0]][:6]
    tokens = batch.tokens[keep, : batch.meta["lengths"][0] - 1]
    answers = torch.tensor([batch.meta["answers"][b] for b in keep])
    _, cache = hooked.run_with_cache(tokens)
    directions = hooked.tokens_to_residual_directions(answers[:, 0]) - hooked.tokens_to_residual_directions(answers[:, 1])
    inputs = _tokens_batch(tokens, answers.tolist())
    layers = measure_metric(model, "ioi.layer_attribution", inputs=inputs)
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    course = torch.einsum("cbm,bm->cb", scaled, directions).mean(1)
    names = {"embed": "embed", "pos_embed": "pos_embed", **{f"{l}_attn_out": f"attn.{l}" for l in range(3)}, **{f"{l}_mlp_out": f"mlp.{l}" for l in range(3)}}
    for label, value in zip(labels, course):
        assert layers.value[names[label]] == pytest.approx(float(value), abs=1e-5), label
    assert layers.details["sum"] == pytest.approx(layers.details["logit_diff_mean"], abs=1e-4)
    lens = measure_metric(model, "ioi.logit_lens", inputs=inputs)
    stack, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    course = torch.einsum("cbm,bm->cb", scaled, directions).mean(1)
    assert list(lens.value) == list(labels)
    assert list(lens.value.values()) == pytest.approx([float(v) for v in course], abs=1e-5)
    assert first.text  # the generator ran


@torch.no_grad()
def test_ablated_attribution_is_the_course_hook(tokenizer: Any) -> None:
    model = dataset_model(3, tokenizer, normalization=None)
    hooked = model._hooked
    orig, abc = dataset_batch(model, n=8, seed=5), dataset_batch(model, n=8, seed=5, flip="abc")
    _, abc_cache = hooked.run_with_cache(abc.tokens)
    templates = torch.tensor(orig.meta["templates"])
    ends = torch.tensor(orig.meta["word_idx"]["end"])
    means = torch.empty_like(abc_cache["z", 1])
    for t in templates.unique():
        means[templates == t] = abc_cache["z", 1][templates == t].mean(0)

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[torch.arange(8), ends, 1] = means[torch.arange(8), ends, 1]
        return z

    logits = hooked.run_with_hooks(orig.tokens, fwd_hooks=[("blocks.1.attn.hook_z", hook)])
    answers = torch.tensor(orig.meta["answers"])
    final = logits[torch.arange(8), ends]
    expected = float((final[torch.arange(8), answers[:, 0]] - final[torch.arange(8), answers[:, 1]]).mean())
    got = measure_metric(model, "ioi.ablated_attribution", inputs=INPUTS, ablate=["1.1"])
    assert got.value["ablated"] == pytest.approx(expected, abs=1e-5)
    assert got.value["naive"] == pytest.approx(got.value["logit_diff"] - got.value["direct"], abs=1e-9)
    assert got.value["ln_scale_ratio"] == 1.0
    # no norm: heads of layers 0 and 1 other than 1.1 cannot change; the ablated head's own change is its new minus old
    for name in ("0.0", "0.1", "1.0"):
        assert got.value[name] == pytest.approx(0.0, abs=1e-6)
    assert abs(got.value["1.1"]) > 1e-4 and any(abs(got.value[n]) > 1e-5 for n in ("2.0", "2.1"))


def test_circuit_mean_ablation_keeps_and_ablates(tokenizer: Any) -> None:
    """The course's add_mean_ablation_hook written out: ABC template means everywhere except the kept (head, position) pairs."""
    model = dataset_model(4, tokenizer)
    keep = {"end": ["2.0", "1.1"], "S2": ["0.1"]}
    expected = course_mean_ablated_logit_diff(model, keep)
    got = measure_metric(model, "ioi.circuit_mean_ablation", inputs=INPUTS, keep=keep)
    assert got.value["ablated"] == pytest.approx(expected, abs=1e-5)
    assert got.details["kept_pairs"] == 8 * 3
    assert got.value["ratio"] == pytest.approx(got.value["ablated"] / got.value["logit_diff"])


def test_flips_keep_or_swap_names_as_named() -> None:
    from fixtures.ioi_dataset import FLIPS, flipped

    clean = generate(20, 3)
    for name, flip in FLIPS.items():
        out = flipped(clean, flip, 3)
        for before, after in zip(clean, out):
            first = [w for w in before.text.split(" ") if w in (before.io, before.s)][:3]
            now = after.text.split(" ")
            if name == "inverted_token":  # A B B -> B A A: each name slot holds the other name
                assert [w for w in now if w in (before.io, before.s)][:3] == [{before.io: before.s, before.s: before.io}[w] for w in first]
            if name == "inverted_position":  # swap the first two names only
                assert [w for w in now if w in (before.io, before.s)][:3] == [first[1], first[0], first[2]]


@torch.no_grad()
def test_heads_from_flip_is_a_plain_z_patch(tokenizer: Any) -> None:
    model = dataset_model(5, tokenizer)
    hooked = model._hooked
    orig, inv = dataset_batch(model, n=8, seed=5), dataset_batch(model, n=8, seed=5, flip="inverted_position")
    _, cache = hooked.run_with_cache(inv.tokens)

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, 0] = cache["z", 1][:, :, 0]
        return z

    logits = hooked.run_with_hooks(orig.tokens, fwd_hooks=[("blocks.1.attn.hook_z", hook)])
    answers, ends = torch.tensor(orig.meta["answers"]), torch.tensor(orig.meta["word_idx"]["end"])
    final = logits[torch.arange(8), ends]
    expected = float((final[torch.arange(8), answers[:, 0]] - final[torch.arange(8), answers[:, 1]]).mean())
    got = measure_metric(model, "ioi.heads_from_flip", inputs=INPUTS, heads=["1.0"], flip="inverted_position")
    assert got.value["patched"] == pytest.approx(expected, abs=1e-5)
    assert got.value["drop"] == pytest.approx(got.value["logit_diff"] - expected, abs=1e-5)


@torch.no_grad()
def test_writing_direction_is_the_course_scatter(tokenizer: Any) -> None:
    import numpy as np

    model = dataset_model(6, tokenizer)
    hooked = model._hooked
    batch = dataset_batch(model, n=8, seed=5)
    _, cache = hooked.run_with_cache(batch.tokens)
    idx, answers = batch.meta["word_idx"], torch.tensor(batch.meta["answers"])
    n = torch.arange(8)
    out = cache["z", 2][:, :, 1] @ hooked.W_O[2, 1]
    at_end = out[n, torch.tensor(idx["end"])]
    xs = np.concatenate([cache["pattern", 2][n, 1, idx["end"], idx[k]].numpy() for k in ("IO", "S1")])
    ys = np.concatenate([(at_end * hooked.W_U.T[answers[:, c]]).sum(-1).numpy() for c in (0, 1)])
    got = measure_metric(model, "ioi.writing_direction", inputs=INPUTS, head="2.1")
    assert got.value["correlation"] == pytest.approx(float(np.corrcoef(xs, ys)[0, 1]), abs=1e-5)
    assert got.value["slope"] == pytest.approx(float(np.polyfit(xs, ys, 1)[0]), rel=1e-4)
