"""Landmarks of a grokking run from its snapshots' losses (harness.metrics.modular_dynamics.window_epochs)."""

from __future__ import annotations

import pytest

from harness.metrics.modular_dynamics import window_epochs

# (train, test) loss per snapshot epoch: memorised by 300, test peaks at 1000, crashes 5000-7000
RUN = {0: (4.7, 4.7), 100: (3.1, 7.0), 300: (9e-3, 19.7), 1000: (5e-6, 29.0), 3000: (3e-7, 20.0),
       5000: (2e-7, 2.0), 6000: (1e-7, 1e-3), 7000: (1e-7, 5e-7)}


def test_window_of_a_planted_run() -> None:
    marks = window_epochs(RUN, memorised_below=1e-2, start_drop=1.0, end_below=1e-5)
    assert marks == {"memorised": 300, "peak": 1000, "start": 5000, "end": 7000}


def test_landmarks_that_never_come_lie_past_the_last_snapshot() -> None:
    stalled = {e: v for e, v in RUN.items() if e <= 3000}
    marks = window_epochs(stalled, memorised_below=1e-2, start_drop=1.0, end_below=1e-5)
    assert marks["start"] == 5000 and marks["end"] == 5000  # 3000 + the last spacing: not within the run
    assert window_epochs(RUN, memorised_below=1e-9, start_drop=1.0, end_below=1e-5)["memorised"] == 8000


def test_one_all_pairs_pass_serves_every_quantity_of_a_snapshot() -> None:
    from fixtures.grokking_model import initial_state_dict
    from harness.metrics import modular_dynamics as D
    from harness.metrics._modular import run_all_pairs, split_loss, trig_energy, trig_ratio
    from harness.metrics.modular_logits import restricted_logits
    from tests.test_metrics_modular import handle_of

    model = handle_of(initial_state_dict(7), "dyn-grok")
    run = run_all_pairs(model, pre=True)
    assert D.measure(model, "test_loss", None) == split_loss(run.logits, "test")
    summary = D._SUMMARIES[(model.identity.key, True)]
    assert D.measure(model, "attention_gap", None) == summary.attention_gap
    for freqs in ([14, 35], [1, 3, 4, 5, 6]):  # any frequency set, from the summary alone, as from the logits
        assert D.measure(model, "restricted_loss", freqs) == split_loss(restricted_logits(run.logits, freqs, True), "all")
    assert D._SUMMARIES[(model.identity.key, True)] is summary  # nothing run again
    for quantity, tensor in (("neuron_pre", run.neurons_pre), ("neuron_post", run.neurons), ("logit", run.logits)):
        assert D.measure(model, f"{quantity}_trig_ratio", [5, 9]) == trig_ratio(*trig_energy(tensor), [5, 9])


@pytest.mark.slow  # four all-pairs passes, about 2 s of CPU
def test_the_one_pass_all_pairs_run_equals_a_pass_per_kind() -> None:
    """run_all_pairs reads logits, neurons and pattern from one pass: bit for bit what three passes give."""
    import torch
    from fixtures.grokking_model import initial_state_dict
    from fixtures.modular_task import P, all_data
    from harness.metrics._modular import run_all_pairs
    from tests.test_metrics_modular import handle_of

    model = handle_of(initial_state_dict(3), "dyn-grok-3")
    run = run_all_pairs(model)
    tokens = all_data().tokens
    assert torch.equal(run.logits, model.run_with_cache(tokens).logits[:, -1, :P].double())
    assert torch.equal(run.neurons, model.run_with_cache(tokens).activations[("post", 0)][:, -1].double())
    assert torch.equal(run.attention, model.run_with_cache(tokens).activations[("pattern", 0)][:, :, -1, :].double())


def test_the_weight_norm_runs_no_pass_and_a_kept_snapshot_is_not_loaded_again(monkeypatch) -> None:
    import dataclasses

    from fixtures.registry import get_model_entry
    from harness.metrics import modular_dynamics as D

    def no_pass(*_args: object) -> None:
        raise AssertionError("the weight norm needs no forward pass")

    name = "grokking-repro@epoch=0"
    D._SUMMARIES.clear()
    monkeypatch.setattr(D, "run_all_pairs", no_pass)
    norm = D.snapshot_summary(name, of_pass=False).quantity("weight_norm", None)
    model = get_model_entry(name).load()
    assert norm == sum(float(p.double().pow(2).sum()) for _, p in model.named_parameters())

    def no_load() -> None:
        raise AssertionError("a snapshot whose file is unchanged is not loaded again")

    entry = dataclasses.replace(get_model_entry(name), load=no_load)
    monkeypatch.setattr(D, "get_model_entry", lambda _name: entry)
    assert D.snapshot_summary(name, of_pass=False).quantity("weight_norm", None) == norm
    D._SUMMARIES.clear()
