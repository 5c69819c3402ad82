"""The grokking reproduction's task, model config and lean training forward pass."""

from __future__ import annotations

import pytest
import torch

from fixtures.grokking_model import hooked_config, initial_state_dict, lean_logits
from fixtures.modular_task import P, all_data, split_data, split_pairs, train_mask
from fixtures.train_grokking import GrokTrainConfig, loss_f64, main, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a 12,769-row forward pass of a small model: one thread is cheaper in CPU time


def test_split_is_the_papers() -> None:
    train, test = split_pairs()
    assert len(train) == 3830 and len(test) == 12769 - 3830
    assert len(set(train) | set(test)) == P * P
    # random.seed(0); random.shuffle(row-major pairs): the first pairs of that stream
    assert train[:3] == [(18, 34), (10, 83), (55, 28)]
    mask = train_mask()
    assert int(mask.sum()) == 3830 and bool(mask[18 * P + 34]) and not bool(mask[test[0][0] * P + test[0][1]])
    mask[:] = False  # the caller's own copy: the next call's mask is whole
    assert int(train_mask().sum()) == 3830


def test_labels_and_equals_token() -> None:
    data = all_data()
    assert data.tokens.shape == (P * P, 3)
    assert bool((data.tokens[:, 2] == P).all())
    assert bool((data.labels == (data.x + data.y) % P).all())
    assert int(data.x[P + 5]) == 1 and int(data.y[P + 5]) == 5


def test_lean_forward_equals_transformer_lens() -> None:
    from transformer_lens import HookedTransformer

    torch.manual_seed(1)
    state = initial_state_dict(0)
    state = {k: v + 0.05 * torch.randn_like(v) if v.abs().max() == 0 and k.endswith(("b_in", "b_out")) else v for k, v in state.items()}
    model = HookedTransformer(hooked_config())
    model.load_state_dict(state, strict=False)
    data = all_data()
    with torch.no_grad():
        ref = model(data.tokens)[:, -1]
        lean = lean_logits(state, data.x, data.y)
    assert torch.allclose(ref, lean, atol=2e-6, rtol=1e-5)


def test_lean_forward_with_a_trained_scale_model() -> None:
    """Weights 10x the init scale: attention patterns far from uniform still agree."""
    from transformer_lens import HookedTransformer

    state = {k: v * 4 for k, v in initial_state_dict(3).items()}
    model = HookedTransformer(hooked_config())
    model.load_state_dict(state, strict=False)
    train, _ = split_data()
    with torch.no_grad():
        ref = model(train.tokens)[:, -1]
        lean = lean_logits(state, train.x, train.y)
    assert float((ref - lean).abs().max() / ref.abs().max()) < 1e-5


def test_loss_is_float64_over_number_logits() -> None:
    logits = torch.zeros(2, P + 1)
    logits[:, P] = 100.0  # the "=" logit is dropped
    loss = loss_f64(logits, torch.tensor([0, 5]))
    assert loss.dtype == torch.float64
    assert abs(loss.item() - torch.log(torch.tensor(float(P), dtype=torch.float64)).item()) < 1e-12


def test_a_few_epochs_are_deterministic_and_reduce_the_loss() -> None:
    """Five epochs (inside the 10-step warm-up; the loss falls from 4.7330 to 4.7242): the same
    path and checks as a longer prefix, a third of the CPU of 15."""
    cfg = GrokTrainConfig()
    a = train(cfg, None, epochs=5)
    b = train(cfg, None, epochs=5)
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert a["log"]["train_loss"][-1] < a["log"]["train_loss"][0]
    assert a["state"]["blocks.0.attn.b_Q"].abs().max() == 0 and a["state"]["unembed.b_U"].abs().max() == 0


def test_training_leaves_the_callers_torch_settings_as_they_were() -> None:
    """A run sets one thread and deterministic algorithms for itself only (it ran inside the test
    session before and left every later test on one thread)."""
    torch.set_num_threads(2)  # the caller's setting; the run's is its default, one thread (a run on more threads than
    try:  # the caller's would cost several times the CPU on a loaded machine, for the same check)
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        cfg = GrokTrainConfig()
        assert cfg.threads != threads
        train(cfg, None, epochs=1)
        assert torch.get_num_threads() == threads
        assert torch.are_deterministic_algorithms_enabled() == deterministic
    finally:
        torch.set_num_threads(1)  # the module's setting (one_torch_thread)


def test_subnormals_are_flushed_by_default_and_the_cli_can_keep_them(tmp_path) -> None:
    """``flush_denormal`` is on by default (config and CLI); ``--no-flush-denormal`` turns it off."""
    import json

    assert GrokTrainConfig().flush_denormal is True
    for flag, expected in (([], True), (["--no-flush-denormal"], False)):
        work = tmp_path / str(expected)
        assert main(["train", "--work", str(work), "--max-epochs", "2", *flag]) == 0
        assert json.loads((work / "log.json").read_text())["config"]["flush_denormal"] is expected
