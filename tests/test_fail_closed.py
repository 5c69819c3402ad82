"""Non-finite weights, activations and metric outputs give verdict ``error``, never a judged one."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import fixtures.registry as model_registry
from harness.context import MetricContext
from harness.core.finite import NonFiniteModelError, first_non_finite_activation, first_non_finite_parameter, non_finite_summary
from harness.loader import load_claim_text
from harness.core.measurement import Measurement, measurement_non_finite_reason
from harness.registry import metric
from harness.runner import run_claim
from harness.session import Session
from harness.verdicts import Verdict

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

PLANTED = "planted-attn-2l"
POISONED = "planted-attn-2l-poisoned"
POISONED_PARAMETER = "blocks.1.attn.W_Q"

CLAIMS = """\
source: {course: project, chapter: tests}
model: MODEL
claims:
  - id: induction-heads
    statement: Head 1.0 is the only induction head.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.detect
    params: {pattern: induction, threshold: 0.4}
    expect: {equals: []}
  - id: no-induction-head
    statement: Head 0.0 is not an induction head.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: induction}
    select: "0.0"
    expect: {"<": 0.4}
  - id: ov-weights
    statement: A weights-only metric on the same model.
    metric: copying.eigenvalue_score
    select: "1.0"
    expect: {">": -2}
"""


def planted_variant(monkeypatch: pytest.MonkeyPatch, name: str, change) -> None:
    """Register ``name``: the planted model with ``change(hooked)`` applied to its weights after loading."""
    entries = model_registry.model_entries()
    planted = entries[PLANTED]

    def load():
        handle = planted.load()
        handle.identity = dataclasses.replace(handle.identity, name=name)
        with torch.no_grad():
            change(handle._hooked)
        return handle

    monkeypatch.setitem(entries, name, dataclasses.replace(planted, name=name, load=load))


def run_all(model: str) -> list:
    loaded = load_claim_text(CLAIMS.replace("MODEL", model), "claims/inline.yaml")
    session = Session()
    return [run_claim(loaded, claim, session) for claim in loaded.spec.claims]


def poison_w_q(hooked) -> None:
    hooked.blocks[1].attn.W_Q[0, 3, 5] = float("nan")


def test_planted_model_has_finite_weights_and_judged_claims() -> None:
    """The control: the same claims on the unpoisoned model are judged, not errors."""
    results = run_all(PLANTED)
    assert all(result.verdict in (Verdict.SUPPORTED, Verdict.REFUTED) for result in results), [r.reason for r in results]
    assert results[0].verdict is Verdict.REFUTED  # the planted model has induction head 1.0: {} is refuted


def test_nan_weight_makes_every_claim_on_the_model_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    planted_variant(monkeypatch, POISONED, poison_w_q)
    results = run_all(POISONED)
    assert [result.verdict for result in results] == [Verdict.ERROR] * 3
    for result in results:
        assert POISONED in result.reason and POISONED_PARAMETER in result.reason and "nan" in result.reason
        assert result.measurement is None


def test_infinite_weight_is_an_error_naming_the_first_bad_parameter(monkeypatch: pytest.MonkeyPatch) -> None:
    def poison(hooked) -> None:
        hooked.blocks[1].attn.W_O[2, 0, 0] = float("inf")
        hooked.blocks[0].attn.W_V[0, 0, 0] = float("-inf")

    planted_variant(monkeypatch, POISONED, poison)
    with pytest.raises(NonFiniteModelError, match=r"parameter blocks\.0\.attn\.W_V: 1 of \d+ entries .* -inf at index \[0, 0, 0\]"):
        Session().model(POISONED)


def test_overflowing_activations_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finite weights whose forward pass overflows: the claims that run the model are errors."""

    def overflow(hooked) -> None:
        hooked.embed.W_E.mul_(1e30)
        hooked.blocks[0].attn.W_Q.mul_(1e30)

    planted_variant(monkeypatch, POISONED, overflow)
    detect, scores, _weights_only = run_all(POISONED)
    for result in (detect, scores):
        assert result.verdict is Verdict.ERROR
        assert f"model {POISONED!r}: activation " in result.reason


@metric("testing.set_from_nan_scores")
def set_from_nan_scores(ctx: MetricContext) -> Measurement:
    """A set chosen from a NaN score by a threshold: NaN > 0.4 is false, so the set is empty."""
    scores = {"0.0": 0.9, "0.1": float("nan")}
    return Measurement([name for name, value in scores.items() if value > 0.4], None, {"scores": scores})


def test_set_chosen_from_nan_scores_is_an_error() -> None:
    text = CLAIMS.replace("MODEL", PLANTED).split("  - id:")[0] + (
        "  - id: set\n    statement: x\n    metric: testing.set_from_nan_scores\n    expect: {equals: [\"0.0\"]}\n"
    )
    loaded = load_claim_text(text, "claims/inline.yaml")
    (result,) = [run_claim(loaded, claim, Session()) for claim in loaded.spec.claims]
    assert result.verdict is Verdict.ERROR
    assert "details 'scores' holds nan for '0.1'" in result.reason


@pytest.mark.parametrize(
    ("measurement", "fragment"),
    [
        (Measurement(["1.0"], None, {"scores": {"1.0": 0.9, "1.1": float("nan")}}), "'scores' holds nan for '1.1'"),
        (Measurement([], None, {"contributions": {"0.0": float("-inf")}}), "'contributions' holds -inf"),
        (Measurement(["0.0"], None, {"clean": float("nan")}), "'clean' is nan"),
        (Measurement(0.5, float("nan")), "uncertainty nan"),
        (Measurement({"1.0": 0.5}, {"1.0": float("inf")}), "uncertainty inf for '1.0'"),
        (Measurement(float("nan")), "returned nan"),
    ],
)
def test_non_finite_measurements_are_refused(measurement: Measurement, fragment: str) -> None:
    reason = measurement_non_finite_reason(measurement)
    assert reason is not None and fragment in reason


@pytest.mark.parametrize(
    "measurement",
    [
        Measurement(["1.0"], None, {"scores": {"1.0": 0.9, "1.1": 0.1}, "pattern": "induction", "example_patterns": {"1.0": [[1.0]]}}),
        Measurement(0.5, 0.01, {"seconds_per_step": float("nan")}),  # a scalar's details are for reports only
        Measurement({"1.0": 0.5}, {"1.0": 0.1}),
        Measurement([], None, {}),
    ],
)
def test_finite_measurements_are_accepted(measurement: Measurement) -> None:
    assert measurement_non_finite_reason(measurement) is None


def test_non_finite_summary_counts_and_locates() -> None:
    masked = torch.tensor([[0.0, float("-inf")], [float("nan"), 2.0]])
    assert non_finite_summary(masked) == "2 of 4 entries are NaN or infinite, the first -inf at index [0, 1]"
    assert non_finite_summary(torch.tensor([1, 2])) is None  # integer tensors cannot hold NaN
    huge = torch.full((4,), 3e38)  # finite entries whose sum overflows: not refused
    assert non_finite_summary(huge) is None


def test_masked_scores_may_hold_negative_infinity_only() -> None:
    """+inf in a score must be caught in the scores: TransformerLens zeroes the NaN it makes in the pattern."""
    scores = torch.tensor([[0.0, float("-inf")], [1.0, 2.0]])
    name = "blocks.0.attn.hook_attn_scores"
    assert first_non_finite_activation(torch.zeros(1), [(name, scores)]) is None
    assert first_non_finite_activation(torch.zeros(1), [("blocks.0.hook_resid_pre", scores)]).startswith("activation blocks.0.hook_resid_pre: ")
    for bad in (float("inf"), float("nan")):
        broken = scores.clone()
        broken[1, 0] = bad
        assert first_non_finite_activation(torch.zeros(1), [(name, broken)]) == f"activation {name}: 1 of 4 entries are NaN or infinite, the first {bad} at index [1, 0]"
    assert first_non_finite_activation(torch.tensor([float("nan")]), []).startswith("logits: ")


def test_first_non_finite_parameter_is_in_model_order() -> None:
    parameters = [("a", torch.zeros(2)), ("b", torch.tensor([1.0, math.inf])), ("c", torch.tensor([math.nan]))]
    assert first_non_finite_parameter(parameters) == "parameter b: 1 of 2 entries are NaN or infinite, the first inf at index [1]"
    assert first_non_finite_parameter(parameters[:1]) is None
