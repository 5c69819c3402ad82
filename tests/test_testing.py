"""harness/testing.py: a metric run on an ad-hoc model as the runner runs it for a claim."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from fixtures.random_models import random_hooked
from harness.session import Session
from harness.testing import ad_hoc_handle, measure_metric, random_handle

REPEATED = {"repeated_random": {"seq_len": 4, "batch": 2, "seed": 0}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_bare_model_is_wrapped_and_measured() -> None:
    got = measure_metric(random_hooked(0), "model_facts.config")
    assert got.value["n_layers"] == 2 and got.value["d_vocab"] == 10


def test_select_picks_one_figure() -> None:
    got = measure_metric(random_handle(0), "model_facts.config", select="n_heads")
    assert got.value == 2


def test_parameters_are_validated_against_the_metric_schema() -> None:
    with pytest.raises(ValidationError):
        measure_metric(random_handle(0), "composition.scores", kind="x")
    with pytest.raises(ValidationError):
        measure_metric(random_handle(0), "composition.scores", kind="k", not_a_parameter=1)


def test_an_unknown_metric_is_refused() -> None:
    with pytest.raises(KeyError):
        measure_metric(random_handle(0), "no.such_metric")


def test_an_input_spec_is_built_and_the_measurement_cached_in_the_session() -> None:
    session = Session()
    model = random_handle(1)
    first = measure_metric(model, "loss.mean_loss", inputs=REPEATED, session=session)
    again = measure_metric(model, "loss.mean_loss", inputs=REPEATED, session=session)
    assert again is first and session.forward_count == 1
    other = measure_metric(model, "loss.mean_loss", inputs={"repeated_random": {**REPEATED["repeated_random"], "seed": 1}}, session=session)
    assert other is not first and session.forward_count == 2


def test_two_models_under_one_name_do_not_share_cache_entries() -> None:
    session = Session()
    one, two = ad_hoc_handle(random_hooked(1), "same"), ad_hoc_handle(random_hooked(2), "same")
    assert one.identity.key != two.identity.key
    loss_one = measure_metric(one, "loss.mean_loss", inputs=REPEATED, session=session).value
    loss_two = measure_metric(two, "loss.mean_loss", inputs=REPEATED, session=session).value
    assert loss_one != loss_two


def test_ad_hoc_identity_follows_the_weights() -> None:
    model = random_hooked(3)
    before = ad_hoc_handle(model).identity.weights_sha256
    assert ad_hoc_handle(random_hooked(3)).identity.weights_sha256 == before
    with torch.no_grad():
        model.W_E[0, 0] += 1.0
    assert ad_hoc_handle(model).identity.weights_sha256 != before
