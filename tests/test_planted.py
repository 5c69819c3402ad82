"""The planted models carry exactly the mechanisms their ground truth states.

Every ground-truth entry is re-derived here from weights or activations with plain torch and
TransformerLens calls (no project metric code), so a wrong weight or a wrong claim fails.
"""

from __future__ import annotations

import functools
import json
import math
import time

import pytest
import torch
from transformer_lens import HookedTransformer

from fixtures.planted import (
    PLANTED_MODELS,
    PlantedModel,
    build_ov_rank_model,
    build_planted,
    build_split_copy_model,
    distinct_repeated_tokens,
    ov_rank_spec,
    split_copy_spec,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

NAMES = ["planted-attn-2l", "planted-attn-2l-random", "planted-ov-rank", "planted-split-copy"]
ATTN = "planted-attn-2l"
RANDOM = "planted-attn-2l-random"
KINDS = ("previous_token_heads", "current_token_heads", "first_token_heads", "induction_heads")


# ----------------------------------------------------------------------------------------------
# helpers (plain torch)
# ----------------------------------------------------------------------------------------------


def heads(model: HookedTransformer) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def arena_repeated(batch: int, seq_len: int, d_vocab: int, bos: int, seed: int = 0) -> torch.Tensor:
    """[BOS] + R + R with R ~ Uniform{0..d_vocab-1} (with replacement), as ARENA 1.2 draws it."""
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(0, d_vocab, (batch, seq_len), generator=gen)
    return torch.cat([torch.full((batch, 1), bos), half, half], dim=1)


def detection_scores(cache, n_layers: int, seq_len: int) -> dict[str, dict[str, float]]:
    """ARENA 1.2 detectors: mean attention on diagonal -1 / 0, column 0, diagonal -(seq_len-1)."""
    scores: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
    for layer in range(n_layers):
        pattern = cache["pattern", layer]  # [batch, head, q, k]
        for head in range(pattern.shape[1]):
            p = pattern[:, head]
            name = f"{layer}.{head}"
            scores["previous_token_heads"][name] = p.diagonal(-1, -2, -1).mean().item()
            scores["current_token_heads"][name] = p.diagonal(0, -2, -1).mean().item()
            scores["first_token_heads"][name] = p[..., 0].mean().item()
            scores["induction_heads"][name] = p.diagonal(-seq_len + 1, -2, -1).mean().item()
    return scores


def detected(scores: dict[str, float], threshold: float) -> list[str]:
    return sorted(name for name, value in scores.items() if value > threshold)


def full_ov(model: HookedTransformer, layer: int, head: int) -> torch.Tensor:
    return model.W_E @ model.W_V[layer, head] @ model.W_O[layer, head] @ model.W_U


def full_ov_of(model: HookedTransformer, spec: str) -> torch.Tensor:
    """Full OV circuit of "L.H" or of a sum "L.H+L.H" (the effective circuit of several heads)."""
    parts = [tuple(int(x) for x in part.split(".")) for part in spec.split("+")]
    return sum(full_ov(model, layer, head) for layer, head in parts)


def above_and_ties(matrix: torch.Tensor) -> tuple[list[int], int]:
    """Per row: entries strictly above the diagonal; total entries equal to it (off the diagonal)."""
    diag = matrix.diagonal()[:, None]
    above = (matrix > diag).sum(dim=1)
    ties = (matrix == diag).sum() - matrix.shape[0]
    return above.tolist(), int(ties)


def comp_score(a: torch.Tensor, b: torch.Tensor) -> float:
    """ARENA composition score |AB|_F / (|A|_F |B|_F) (nan for a zero factor)."""
    return ((a @ b).norm() / (a.norm() * b.norm())).item()


def composition(model: HookedTransformer) -> dict[str, dict[tuple[str, str], float]]:
    w_ov = model.W_V @ model.W_O
    w_qk = model.W_Q @ model.W_K.transpose(-1, -2)
    out: dict[str, dict[tuple[str, str], float]] = {"q": {}, "k": {}, "v": {}}
    for i in range(model.cfg.n_heads):
        for j in range(model.cfg.n_heads):
            pair = (f"0.{i}", f"1.{j}")
            out["q"][pair] = comp_score(w_ov[0, i], w_qk[1, j])
            out["k"][pair] = comp_score(w_ov[0, i], w_qk[1, j].T)
            out["v"][pair] = comp_score(w_ov[0, i], w_ov[1, j])
    return out


@functools.lru_cache(maxsize=None)
def gaussian_comp_baseline(d_model: int, d_head: int, draws: int = 4) -> float:
    gen = torch.Generator().manual_seed(0)
    def low_rank() -> torch.Tensor:
        return torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_head, d_model, generator=gen)

    return sum(comp_score(low_rank(), low_rank()) for _ in range(draws)) / draws


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attn() -> HookedTransformer:
    return build_planted(ATTN)


@pytest.fixture(scope="module")
def random_model() -> HookedTransformer:
    return build_planted(RANDOM)


@pytest.fixture(scope="module")
def truth() -> dict:
    return PLANTED_MODELS[ATTN].ground_truth


SEQ_LEN = 20


@pytest.fixture(scope="module")
def attn_run(attn, truth):
    tokens = distinct_repeated_tokens(4, SEQ_LEN, attn.cfg.d_vocab, truth["bos_token_id"])
    logits, cache = attn.run_with_cache(tokens)
    return tokens, logits, cache


# ----------------------------------------------------------------------------------------------
# API and registry
# ----------------------------------------------------------------------------------------------


def test_registry_names_and_specs():
    assert list(PLANTED_MODELS) == NAMES
    for name, spec in PLANTED_MODELS.items():
        assert isinstance(spec, PlantedModel) and spec.name == name and spec.description
        json.dumps(spec.ground_truth)  # serialisable into reports
    with pytest.raises(KeyError):
        build_planted("planted-nothing")


@pytest.mark.parametrize("name", NAMES)
def test_build_is_fast_deterministic_float32_without_tokenizer(name):
    start = time.perf_counter()
    first = build_planted(name)
    assert time.perf_counter() - start < 1.0
    second = build_planted(name)
    assert first is not second and first.tokenizer is None and first.cfg.attn_only
    assert first.cfg.normalization_type is None
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    assert all(p.dtype == torch.float32 for p in first.parameters())


def test_random_control_has_the_planted_shapes(attn, random_model):
    random = random_model
    for key in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "positional_embedding_type"):
        assert getattr(random.cfg, key) == getattr(attn.cfg, key), key
    assert PLANTED_MODELS[RANDOM].ground_truth["bos_token_id"] == PLANTED_MODELS[ATTN].ground_truth["bos_token_id"]


# ----------------------------------------------------------------------------------------------
# planted-attn-2l
# ----------------------------------------------------------------------------------------------


def test_residual_subspaces_are_one_hot_and_disjoint(attn, truth):
    layout = {key: slice(*bounds) for key, bounds in truth["residual_layout"].items()}
    assert attn.cfg.positional_embedding_type == truth["positional_embedding_type"] == "shortformer"
    assert torch.equal(attn.W_E[:, layout["token"]], torch.eye(attn.cfg.d_vocab))
    assert attn.W_E[:, layout["token"].stop :].abs().sum() == 0
    assert torch.equal(attn.W_pos[:, layout["position"]], torch.eye(attn.cfg.n_ctx))
    assert attn.W_pos[:, : layout["position"].start].abs().sum() == 0
    assert torch.equal(attn.W_U[layout["token"]], torch.eye(attn.cfg.d_vocab))
    assert attn.W_U[layout["token"].stop :].abs().sum() == 0
    assert truth["direct_path_gain"] == 1.0 and torch.equal(attn.W_E @ attn.W_U, torch.eye(attn.cfg.d_vocab))


def expected_pattern(kind: str, n: int) -> torch.Tensor:
    if kind == "previous":
        return torch.diag(torch.ones(n - 1), -1) + torch.diag(torch.tensor([1.0] + [0.0] * (n - 1)))
    if kind == "current":
        return torch.eye(n)
    if kind == "first":
        return torch.zeros(n, n).index_fill_(1, torch.tensor([0]), 1.0)
    assert kind == "uniform"
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


def test_exact_patterns(attn_run, truth):
    _, _, cache = attn_run
    for name, kind in truth["exact_patterns"].items():
        layer, head = (int(x) for x in name.split("."))
        pattern = cache["pattern", layer][:, head]
        want = expected_pattern(kind, pattern.shape[-1]).expand_as(pattern)
        if kind == "uniform":
            torch.testing.assert_close(pattern, want, rtol=0, atol=1e-6, msg=name)
        else:  # exactly 1.0 and 0.0 in float32
            assert torch.equal(pattern, want), name


def test_positional_qk(attn, truth):
    scale, n = truth["positional_qk_scale"], attn.cfg.n_ctx
    for name, kind in truth["positional_qk"].items():
        layer, head = (int(x) for x in name.split("."))
        qk = attn.W_pos @ attn.W_Q[layer, head] @ attn.W_K[layer, head].T @ attn.W_pos.T
        want = scale * expected_pattern(kind, n)
        if kind == "previous":
            want[0, 0] = 0.0  # position 0's query is 0: it attends to itself only by the causal mask
        assert torch.equal(qk, want), name


def test_induction_stripe_and_predictions(attn_run, truth):
    tokens, logits, cache = attn_run
    (layer, head), L = (int(x) for x in truth["induction_heads"][0].split(".")), SEQ_LEN
    pattern = cache["pattern", layer][:, head]
    for k in range(1, L + 1):
        assert torch.equal(pattern[:, L + k, k + 1], torch.full((4,), truth["induction_attention_second_half"]))
    log_probs = logits.log_softmax(-1)[:, L + 1 : 2 * L]  # positions L+1..2L-1 predict L+2..2L
    targets = tokens[:, L + 2 :]
    correct = log_probs.gather(-1, targets[..., None])[..., 0]
    want = torch.full_like(correct, truth["second_half_correct_logprob"])
    torch.testing.assert_close(correct, want, rtol=0, atol=2e-6)
    top1 = (log_probs.argmax(-1) == targets).float().mean().item()
    assert top1 == truth["second_half_top1"]
    first_half = logits.log_softmax(-1)[:, 1:L].gather(-1, tokens[:, 2 : L + 1, None])[..., 0]
    assert first_half.max() < -2.0  # no earlier occurrence: the first half is unpredictable


@pytest.mark.parametrize("sampler", [distinct_repeated_tokens, arena_repeated])
def test_detection_at_threshold_finds_exactly_the_planted_heads(attn, truth, sampler):
    seq_len = 10  # ARENA-style R (with replacement) rarely repeats at this length in 64 tokens
    tokens = sampler(8, seq_len, attn.cfg.d_vocab, truth["bos_token_id"])
    _, cache = attn.run_with_cache(tokens)
    scores = detection_scores(cache, attn.cfg.n_layers, seq_len)
    for kind in KINDS:
        assert detected(scores[kind], truth["detection_threshold"]) == truth[kind], kind


def test_composition(attn, truth):
    scores = composition(attn)
    baseline = gaussian_comp_baseline(attn.cfg.d_model, attn.cfg.d_head)
    assert abs(baseline - 1 / math.sqrt(attn.cfg.d_model)) < 0.005
    zero_ov = set(truth["zero_ov_heads"])
    zero_qk = {name for name in truth["inert_heads"] if name.startswith("1.")}
    for kind in ("q", "k", "v"):
        listed = {tuple(pair) for pair in truth[f"{kind}_composition"]}
        for pair, value in scores[kind].items():
            undefined = pair[0] in zero_ov or pair[1] in (zero_ov if kind == "v" else zero_qk)
            assert math.isnan(value) == undefined, (kind, pair)
            if pair in listed:
                assert value > 1.5 * baseline
            elif not undefined:
                assert value == 0.0, (kind, pair)
    for key, value in truth["k_composition_score"].items():
        pair = tuple(key.split("->"))
        assert scores["k"][pair] == pytest.approx(value, rel=1e-6)


def test_ov_circuits(attn, truth):
    n_vocab = attn.cfg.d_vocab
    for name in truth["zero_ov_heads"]:
        layer, head = (int(x) for x in name.split("."))
        assert (attn.W_V[layer, head] @ attn.W_O[layer, head]).abs().sum() == 0, name
    for layer, head in heads(attn):
        name = f"{layer}.{head}"
        ov = full_ov(attn, layer, head)
        if name in truth["zero_full_ov_heads"]:
            assert ov.abs().sum() == 0, name
            continue
        assert torch.equal(ov, truth["ov_copy_gain"][name] * torch.eye(n_vocab)), name
        above, ties = above_and_ties(ov)
        assert sum(a == 0 for a in above) / n_vocab == truth["ov_top1"][name] and ties == 0
        eig = torch.linalg.eigvals(ov.double())
        assert (eig.sum() / eig.abs().sum()).real.item() == pytest.approx(truth["ov_copying_score"][name])
    assert sorted(truth["ov_copy_gain"]) == sorted(truth["copying_heads"])


def test_direct_logit_attribution(attn_run, attn, truth):
    tokens, logits, cache = attn_run
    L = SEQ_LEN
    targets = tokens[:, L + 2 :]
    w_u = attn.W_U[:, targets].permute(1, 2, 0)  # [batch, pos, d_model]
    positions = slice(L + 1, 2 * L)
    embed = (cache["embed"][:, positions] * w_u).sum(-1)
    total = embed.clone()
    assert torch.all(embed == truth["dla_correct_token_second_half"]["embed"])
    for layer, head in heads(attn):
        out = cache["z", layer][:, positions, head] @ attn.W_O[layer, head]
        dla = (out * w_u).sum(-1)
        total += dla
        want = truth["dla_correct_token_second_half"][f"{layer}.{head}"]
        torch.testing.assert_close(dla, torch.full_like(dla, want), rtol=0, atol=1e-5)
    torch.testing.assert_close(total, logits[:, positions].gather(-1, targets[..., None])[..., 0], rtol=0, atol=1e-5)


def zero_ablated_logits(model: HookedTransformer, tokens: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    def hook(z, hook):
        z[:, :, head] = 0.0
        return z

    return model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])


def test_zero_ablation(attn_run, attn, truth):
    tokens, logits, _ = attn_run
    L = SEQ_LEN
    for name in truth["ablation_no_effect_heads"]:
        layer, head = (int(x) for x in name.split("."))
        assert torch.equal(zero_ablated_logits(attn, tokens, layer, head), logits), name
    for name in truth["induction_circuit"]:
        layer, head = (int(x) for x in name.split("."))
        ablated = zero_ablated_logits(attn, tokens, layer, head)
        top1 = (ablated[:, L + 1 : 2 * L].argmax(-1) == tokens[:, L + 2 :]).float().mean().item()
        assert top1 < 0.5, name


# ----------------------------------------------------------------------------------------------
# planted-attn-2l-random: the negative control
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [distinct_repeated_tokens, arena_repeated])
def test_random_control_detects_no_head(random_model, sampler):
    model, truth = random_model, PLANTED_MODELS[RANDOM].ground_truth
    for seq_len in (truth["min_seq_len"], 50):
        tokens = sampler(4, seq_len, model.cfg.d_vocab, truth["bos_token_id"])
        _, cache = model.run_with_cache(tokens)
        scores = detection_scores(cache, model.cfg.n_layers, seq_len)
        for kind in KINDS:
            assert detected(scores[kind], truth["detection_threshold"]) == truth[kind] == [], (kind, seq_len)
            assert max(scores[kind].values()) > 0.01  # the patterns are not degenerate


def test_random_control_composition_is_at_baseline(random_model):
    model, truth = random_model, PLANTED_MODELS[RANDOM].ground_truth
    baseline = gaussian_comp_baseline(model.cfg.d_model, model.cfg.d_head)
    for kind, values in composition(model).items():
        assert truth[f"{kind}_composition"] == []
        assert all(abs(v - baseline) < 0.1 * baseline for v in values.values()), kind


# ----------------------------------------------------------------------------------------------
# OV models
# ----------------------------------------------------------------------------------------------


def check_ov_truth(model: HookedTransformer, truth: dict) -> None:
    """Every OV entry of a ground truth, re-derived from the weights."""
    n_vocab = model.cfg.d_vocab
    assert n_vocab == truth["d_vocab"]
    for spec, want_above in truth["ov_above_diagonal"].items():
        ov = full_ov_of(model, spec)
        above, ties = above_and_ties(ov)
        assert above == want_above, spec
        assert ties == truth["ov_ties_with_diagonal"] == 0, spec
        assert sum(a == 0 for a in above) / n_vocab == truth["ov_top1"][spec], spec
        for k, accuracy in truth["ov_topk"][spec].items():
            assert sum(a < int(k) for a in above) / n_vocab == accuracy, (spec, k)
        assert torch.linalg.matrix_rank(ov).item() == truth["ov_rank"][spec], spec
        if spec in truth["ov_copied_tokens"]:
            copied = [i for i in range(n_vocab) if above[i] == 0]
            assert copied == truth["ov_copied_tokens"][spec], spec
            layer, head = (int(x) for x in spec.split("."))
            w_ov = model.W_V[layer, head] @ model.W_O[layer, head]
            assert torch.linalg.matrix_rank(w_ov).item() == truth["ov_rank"][spec], spec


@pytest.mark.parametrize("name", ["planted-ov-rank", "planted-split-copy"])
def test_named_ov_models(name):
    model, truth = build_planted(name), PLANTED_MODELS[name].ground_truth
    check_ov_truth(model, truth)
    assert model.cfg.n_layers == 1 and model.cfg.n_heads == 2 and sorted(truth["copying_heads"]) == ["0.0", "0.1"]


def test_named_ov_model_values():
    rank_truth = PLANTED_MODELS["planted-ov-rank"].ground_truth
    assert rank_truth["ov_top1"] == {"0.0": 16 / 64, "0.1": 1.0, "0.0+0.1": 1.0}
    assert rank_truth["ov_rank"] == {"0.0": 16, "0.1": 64, "0.0+0.1": 64}
    split_truth = PLANTED_MODELS["planted-split-copy"].ground_truth
    assert split_truth["ov_top1"] == {"0.0": 0.5, "0.1": 0.5, "0.0+0.1": 1.0}
    assert split_truth["ov_rank"] == {"0.0": 32, "0.1": 32, "0.0+0.1": 64}


@pytest.mark.parametrize(
    "d_vocab, rank, seed, rotate",
    [(64, 16, 0, True), (10, 1, 3, False), (33, 33, 1, True), (128, 40, 2, True), (96, 40, 2, False)],
)
def test_ov_rank_factory(d_vocab, rank, seed, rotate):
    spec = ov_rank_spec(d_vocab, rank, seed, rotate)
    model = build_ov_rank_model(d_vocab, rank, seed, rotate=rotate)
    assert spec.ground_truth["ov_top1"]["0.0"] == rank / d_vocab
    check_ov_truth(model, spec.ground_truth)


@pytest.mark.parametrize("d_vocab, seed, rotate", [(64, 1, True), (12, 4, False)])
def test_split_copy_factory(d_vocab, seed, rotate):
    spec = split_copy_spec(d_vocab, seed, rotate)
    check_ov_truth(build_split_copy_model(d_vocab, seed, rotate=rotate), spec.ground_truth)


def test_factories_reject_bad_arguments():
    with pytest.raises(ValueError):
        build_ov_rank_model(16, 0)
    with pytest.raises(ValueError):
        build_ov_rank_model(16, 17)
    with pytest.raises(ValueError):
        build_split_copy_model(15)
    with pytest.raises(ValueError):
        build_ov_rank_model(130, 4, rotate=True)


def test_the_checks_can_fail():
    """A one-entry change to a weight breaks the corresponding ground truth."""
    model, truth = build_planted("planted-ov-rank"), PLANTED_MODELS["planted-ov-rank"].ground_truth
    with torch.no_grad():
        model.blocks[0].attn.W_O[0, 0, 0] = 0.0  # token 0 is no longer copied by 0.0
    with pytest.raises(AssertionError):
        check_ov_truth(model, truth)
