"""Rankings and baseline margins: composition.top_pairs, composition.baseline_z,
qk.attention_decomposition_top, and the facts about the planted models that used to be
"false claims kept to show a refutation" in claims/toy (true of the metric by construction).

Each metric is checked against the table metric it ranks (composition.scores,
composition.baseline, qk.attention_decomposition) on the planted models and on random ones.
"""

from __future__ import annotations

from typing import Callable


import pytest
import torch
from pydantic import ValidationError

from harness.metrics import composition as comp_module
from harness.core.model_handle import ModelHandle
from harness.registry import get_metric
from harness.testing import measure_metric, random_handle

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPEATED = {"repeated_random": {"seq_len": 20, "batch": 4, "seed": 0}}
SHORT = {"repeated_random": {"seq_len": 6, "batch": 3, "seed": 0}}  # fits the random models' n_ctx 16


def random_model(seed: int) -> ModelHandle:
    """A seeded 3-layer attention-only model, 3 heads per layer, d_model 12, d_head 4."""
    return random_handle(seed, n_layers=3, n_heads=3, d_model=12, d_head=4, d_vocab=16)


# ------------------------------------------------------------------------------------------------
# composition.top_pairs and composition.baseline_z
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["q", "k", "v"])
@pytest.mark.parametrize("pairs", ["consecutive", "all"])
def test_top_pairs_are_the_largest_scores(seed: int, kind: str, pairs: str) -> None:
    model = random_model(seed)
    table = measure_metric(model, "composition.scores", kind=kind, pairs=pairs).value
    for k in (1, 2, 5):
        got = measure_metric(model, "composition.top_pairs", kind=kind, k=k, pairs=pairs)
        assert len(got.value) == k
        smallest_kept = min(table[name] for name in got.value)
        assert all(table[name] < smallest_kept for name in table if name not in got.value)
        assert list(got.details["scores"]) == sorted(table, key=table.get, reverse=True)[: k + 3]


def test_top_pairs_errors() -> None:
    model = random_model(0)
    n_pairs = len(measure_metric(model, "composition.scores", kind="k").value)
    with pytest.raises(ValueError, match="only"):
        measure_metric(model, "composition.top_pairs", kind="k", k=n_pairs + 1)
    with pytest.raises(ValidationError):
        get_metric("composition.top_pairs").validate_params({"kind": "k", "k": 0})


def test_top_pairs_planted_k_composition_is_the_prev_token_pair(registry_model: Callable[[str], ModelHandle]) -> None:
    assert measure_metric(registry_model("planted-attn-2l"), "composition.top_pairs", kind="k", k=1).value == ["0.0->1.0"]


@pytest.mark.parametrize("seed", [0, 3])
def test_baseline_z_is_the_score_in_baseline_standard_deviations(seed: int) -> None:
    model = random_model(seed)
    table = measure_metric(model, "composition.scores", kind="k", pairs="all").value
    baseline = measure_metric(model, "composition.baseline", n_samples=50, seed=1).value
    for pair in ("0.0->1.1", "0.2->2.0", "1.1->2.2"):
        got = measure_metric(model, "composition.baseline_z", kind="k", pair=pair, n_samples=50, seed=1)
        assert got.value == pytest.approx((table[pair] - baseline["mean"]) / baseline["std"], rel=1e-5)
        assert got.details["score"] == pytest.approx(table[pair], rel=1e-12)


def test_baseline_value_has_its_extremes() -> None:
    model = random_model(0)
    got = measure_metric(model, "composition.baseline", n_samples=40, seed=2)
    scores = comp_module.random_composition_scores(40, 12, 4, 2)
    assert got.value["min"] == pytest.approx(float(scores.min())) and got.value["max"] == pytest.approx(float(scores.max()))
    assert got.value["min"] <= got.value["mean"] <= got.value["max"]


@pytest.mark.parametrize("pair, match", [("1.0->0.1", "earlier layer"), ("0.0->0.1", "earlier layer"), ("0.0->5.0", "not in the model"), ("0.7->1.0", "not in the model")])
def test_baseline_z_refuses_bad_pairs(pair: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        measure_metric(random_model(0), "composition.baseline_z", kind="k", pair=pair, n_samples=10)


def test_baseline_z_pair_syntax_is_a_spec_error() -> None:
    with pytest.raises(ValidationError):
        get_metric("composition.baseline_z").validate_params({"kind": "k", "pair": "0.0 to 1.0"})


def test_baseline_z_separates_planted_from_random_control(registry_model: Callable[[str], ModelHandle]) -> None:
    """The planted K-composition is far above the baseline, the planted V-composition (zero) far
    below; the random control of the same shapes sits within 3 standard deviations."""
    planted, control = registry_model("planted-attn-2l"), registry_model("planted-attn-2l-random")
    assert measure_metric(planted, "composition.baseline_z", kind="k", pair="0.0->1.0", n_samples=100).value > 3
    assert measure_metric(planted, "composition.baseline_z", kind="v", pair="0.0->1.0", n_samples=100).value < -3
    assert abs(measure_metric(control, "composition.baseline_z", kind="k", pair="0.0->1.0", n_samples=100).value) < 3


# ------------------------------------------------------------------------------------------------
# qk.attention_decomposition_top
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("head", ["1.0", "2.2"])
def test_decomposition_top_ranks_the_table(seed: int, head: str) -> None:
    model = random_model(seed)
    table = measure_metric(model, "qk.attention_decomposition", inputs=SHORT, head=head).value
    for k in (1, 3):
        got = measure_metric(model, "qk.attention_decomposition_top", inputs=SHORT, head=head, k=k)
        assert got.value == sorted(table, key=table.get, reverse=True)[:k]


def test_decomposition_top_planted_induction_head_reads_embed_and_prev_token_head(registry_model: Callable[[str], ModelHandle]) -> None:
    got = measure_metric(registry_model("planted-attn-2l"), "qk.attention_decomposition_top", inputs=REPEATED, head="1.0", k=1)
    assert got.value == ["embed|0.0"]


# ------------------------------------------------------------------------------------------------
# facts of the planted models, formerly "false claims kept to show a refutation"
# ------------------------------------------------------------------------------------------------


def test_previous_token_head_has_no_induction_stripe(registry_model: Callable[[str], ModelHandle]) -> None:
    scores = measure_metric(registry_model("planted-attn-2l"), "attention.scores", inputs=REPEATED, pattern="induction").value
    assert scores["0.0"] < 0.05 < 0.4 < scores["1.0"]


def test_induction_head_has_a_flat_positional_pattern(registry_model: Callable[[str], ModelHandle]) -> None:
    """1.0's QK reads tokens, not positions: its positional pattern is uniform over the causal past."""
    got = measure_metric(registry_model("planted-attn-2l"), "qk.positional_pattern", head="1.0")
    assert got.value["prev_diag_mean"] < 0.5
    assert measure_metric(registry_model("planted-attn-2l"), "qk.positional_pattern", head="0.0").value["prev_diag_mean"] == pytest.approx(1.0, abs=1e-6)


def test_direct_path_adds_less_than_the_induction_head_on_repeats(registry_model: Callable[[str], ModelHandle]) -> None:
    got = measure_metric(registry_model("planted-attn-2l"), "attribution.direct_logit", inputs=REPEATED, positions="second_half").value
    assert got["embed"] < got["1.0"]


# ------------------------------------------------------------------------------------------------
# the untrained controls
# ------------------------------------------------------------------------------------------------


def test_toy_random_control_has_the_toy_shape_and_is_seeded() -> None:
    from fixtures.registry import get_model_entry

    entry = get_model_entry("toy-attn-2l-random")
    first, second = entry.load(), entry.load()
    assert first.shape == get_model_entry("toy-attn-2l").shape == entry.shape
    assert first.identity.weights_sha256 == second.identity.weights_sha256
    assert first.identity.weights_sha256 != get_model_entry("toy-attn-2l").load().identity.weights_sha256


def test_tl_initialised_leaves_the_global_rng_alone() -> None:
    from fixtures.random_models import small_config, tl_initialised

    cfg = small_config()
    cfg.init_weights = True
    state = torch.random.get_rng_state()
    a, b = tl_initialised(cfg, 5), tl_initialised(cfg, 5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    cfg.init_weights = False
    with pytest.raises(ValueError, match="init_weights"):
        tl_initialised(cfg, 5)
