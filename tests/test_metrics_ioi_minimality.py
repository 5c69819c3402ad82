"""Minimality scores (ARENA 1.4.1 section 5).

Reference: the course's ``get_all_minimality_scores`` written out with TransformerLens hooks (its
``add_mean_ablation_hook`` as a plain ``z`` hook, ``get_score`` per removed set) on a random model,
every head of a 6-head circuit scored. Ground truth: a head whose ``W_O`` is zero scores exactly 0.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.testing import measure_metric
from tests.ioi_dataset_support import (
    course_mean_ablated_logit_diff, dataset_batch, dataset_model, logit_diff_at_end, train_dataset_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = {"ioi_dataset": {"n": 8, "seed": 5}}
KEEP = {"end": ["2.0", "2.1", "1.1"], "S2": ["1.0", "0.1"], "S1+1": ["0.0"]}
K_SETS = {
    "2.0": [], "2.1": ["2.0"], "1.1": ["2.0", "2.1"], "1.0": ["0.1"], "0.1": ["1.0", "0.0"], "0.0": ["1.1"],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("ioi-minimality-tokenizer"))


def course_scores(model: Any, keep: dict[str, list[str]], k_sets: dict[str, list[str]]) -> dict[str, float]:
    """The course's algorithm: F(M), then for each v |F(C \\ K) - F(C \\ (K u {v}))| / F(M), one hooked run per F."""
    batch = dataset_batch(model, n=8, seed=5)
    with torch.no_grad():
        full = logit_diff_at_end(model._hooked(batch.tokens), batch)

    def score(removed: set[str]) -> float:
        return course_mean_ablated_logit_diff(model, {where: [h for h in heads if h not in removed] for where, heads in keep.items()})

    return {v: abs(score(set(k)) - score(set(k) | {v})) / full for v, k in k_sets.items()}


def test_minimality_scores_are_the_course_algorithm(tokenizer: Any) -> None:
    model = dataset_model(11, tokenizer)  # F(M) = 0.59 > 0: scores are positive, as on gpt2-small
    got = measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets=K_SETS)
    expected = course_scores(model, KEEP, K_SETS)
    assert set(got.value) == set(K_SETS)
    for v in K_SETS:
        assert got.value[v] == pytest.approx(expected[v], abs=1e-5), v
    assert sum(abs(s) for s in got.value.values()) > 1e-3  # the reference is not trivially 0
    assert got.details["n_ablation_runs"] == len({frozenset(k) for k in K_SETS.values()} | {frozenset(k) | {v} for v, k in K_SETS.items()})
    above = measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets=K_SETS, above=0.01)
    assert above.value == [v for v in sorted(K_SETS, key=lambda n: -got.value[n]) if got.value[v] > 0.01]
    assert 0 < len(above.value) < len(K_SETS), got.value


def test_minimality_score_is_the_difference_of_two_circuit_ablations(tokenizer: Any) -> None:
    """score(v) F(M) = |ablated(C \\ K) - ablated(C \\ (K u {v}))| of ioi.circuit_mean_ablation."""
    model = dataset_model(7, tokenizer)
    got = measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets={"1.1": ["2.0", "2.1"]})
    without_k = {"end": ["1.1"], "S2": ["1.0", "0.1"], "S1+1": ["0.0"]}
    without_kv = {"end": [], "S2": ["1.0", "0.1"], "S1+1": ["0.0"]}
    a = measure_metric(model, "ioi.circuit_mean_ablation", inputs=INPUTS, keep=without_k)
    b = measure_metric(model, "ioi.circuit_mean_ablation", inputs=INPUTS, keep=without_kv)
    assert got.details["f_model"] == pytest.approx(a.value["logit_diff"], abs=1e-6)
    assert got.value["1.1"] * a.value["logit_diff"] == pytest.approx(abs(a.value["ablated"] - b.value["ablated"]), abs=1e-6)


@torch.no_grad()
def test_a_head_that_writes_nothing_scores_zero(tokenizer: Any) -> None:
    """Planted: W_O of 1.0 is zero, so replacing its z changes nothing downstream, whatever K is removed first."""
    model = dataset_model(8, tokenizer)
    model._hooked.blocks[1].attn.W_O[0] = 0.0
    k_sets = {"1.0": [], "2.0": [], "1.1": ["2.0", "2.1"]}
    got = measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets=k_sets)
    assert got.value["1.0"] == 0.0
    assert abs(got.value["2.0"]) > 1e-4 and abs(got.value["1.1"]) > 1e-4  # live heads do score
    other = measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets={"1.0": ["0.1", "2.1", "1.1"]})
    assert other.value["1.0"] == 0.0


def test_k_sets_must_name_circuit_heads_and_exclude_v(tokenizer: Any) -> None:
    model = dataset_model(6, tokenizer)
    with pytest.raises(ValueError, match="not in the circuit"):
        measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets={"1.0": ["0.0", "2.2"]})
    with pytest.raises(ValueError, match="not in the circuit"):
        measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep={"end": ["2.0"]}, k_sets={"1.0": []})
    with pytest.raises(ValueError, match="in its own K"):
        measure_metric(model, "ioi.minimality_scores", inputs=INPUTS, keep=KEEP, k_sets={"1.0": ["1.0"]})
