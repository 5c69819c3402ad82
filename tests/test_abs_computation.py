"""Computation in superposition (ARENA 1.5.4's NeuronComputationModel computing |x|): model, data, metrics."""

from __future__ import annotations

import pytest
import torch

from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, initial_params, instance_losses, reconstruct, schedules, target
from harness.circuits import abs_computation as ac
from harness.context import MetricContext
from harness.core.model_identity import ModelIdentity
from harness.core.toy_handle import ToyModelHandle
from harness.core.toy_shape import ToyShape
from harness.session import Session

E7 = RECIPES["tms-abs-10f10d"]


def _ideal(n_features: int = 6, pairs: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """W1 [2·pairs, n_features], W2 [n_features, 2·pairs]: neurons 2f, 2f+1 compute ReLU(x_f), ReLU(−x_f), both written to f."""
    W1 = torch.zeros(2 * pairs, n_features)
    W2 = torch.zeros(n_features, 2 * pairs)
    for f in range(pairs):
        W1[2 * f, f], W1[2 * f + 1, f] = 1.0, -1.0
        W2[f, 2 * f] = W2[f, 2 * f + 1] = 1.0
    return W1, W2


def _handle(W1: torch.Tensor, W2: torch.Tensor, recipe: str | None = None) -> ToyModelHandle:
    d, n = W1.shape
    identity = ModelIdentity(name="t-abs", source="toy", weights_sha256=None, config_sha256=None)
    return ToyModelHandle(W1[None], torch.zeros(1, n), identity, ToyShape(1, n, d, "abs_computation"),
                          feature_probability=torch.full((1, n), 0.5), importance=torch.ones(n), recipe=recipe, W2=W2[None])


def test_forward_data_and_loss_are_the_course_model() -> None:
    """SP33: x' = ReLU(W2 ReLU(W1 x) + b) per instance, data U[−1, 1] kept with probability p, target |x|."""
    generator = torch.Generator().manual_seed(0)
    params = initial_params(E7, generator)
    params["b_final"] = torch.randn(E7.n_inst, E7.n_features, generator=generator) * 0.1
    p, importance = schedules(E7)
    x = generate_batch(E7, p, 64, generator)
    out = reconstruct(E7, params["W"], params["b_final"], x, params["W2"])
    for k in range(E7.n_inst):
        explicit = torch.relu(torch.relu(x[:, k] @ params["W"][k].T) @ params["W2"][k].T + params["b_final"][k])
        assert torch.allclose(out[:, k], explicit, atol=1e-6)
    expected = (importance * (x.abs() - out) ** 2).mean(dim=(0, 2))
    assert torch.allclose(instance_losses(E7, params["W"], params["b_final"], x, importance, params["W2"]), expected)
    assert torch.equal(target(E7, x), x.abs())
    with pytest.raises(ValueError, match="needs W2"):
        reconstruct(E7, params["W"], params["b_final"], x)


def test_abs_data_is_symmetric_with_marginal_p() -> None:
    p, _ = schedules(E7)
    x = generate_batch(E7, p, 50_000, torch.Generator().manual_seed(1))
    on = x != 0
    assert float((on.float().mean(0) - p).abs().max()) < 0.01
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float((x[on] < 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_kaiming_init_bound_and_order() -> None:
    """Both weights ``kaiming_uniform_`` with fan_in d_hidden·n_features (bound 0.039 for E5), W1 drawn first."""
    recipe = RECIPES["tms-abs-100f40d"]
    assert recipe.kaiming_bound == pytest.approx(0.0387, abs=1e-4)
    params = initial_params(recipe, torch.Generator().manual_seed(0))
    for name in ("W", "W2"):
        assert float(params[name].abs().max()) <= recipe.kaiming_bound
        assert float(params[name].abs().max()) > 0.95 * recipe.kaiming_bound
    first = torch.empty(recipe.n_inst, recipe.d_hidden, recipe.n_features)
    torch.nn.init.kaiming_uniform_(first, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, params["W"]) and float(params["b_final"].abs().max()) == 0.0


def test_ideal_abs_circuit_computes_abs_and_counts_as_pairs() -> None:
    W1, W2 = _ideal()
    handle = _handle(W1, W2)
    x = torch.rand(100, 1, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(handle.forward(x)[..., :3], x.abs()[..., :3], atol=1e-6)
    found = ac.abs_neurons(W1, W2)
    assert (found.monosemantic, found.positive_w2, found.features, found.both_signs_features, found.pair_features) == (6, 6, 3, 3, 3)
    assert found.min_gain == pytest.approx(1.0) and found.max_gain == pytest.approx(1.0)
    assert found.both_signs_fraction == 1.0 and found.motif_neurons == 0


def test_one_sided_or_negative_writes_are_not_pairs() -> None:
    W1, W2 = _ideal()
    W1[1, 0] = 1.0                      # both of feature 0's neurons now compute ReLU(x_0)
    W2[1, 2] = -1.0                     # feature 1's second neuron writes negatively
    found = ac.abs_neurons(W1, W2)
    assert found.both_signs_features == 2 and found.pair_features == 1 and found.positive_w2 == 5


def test_asymmetric_motif_is_found_only_where_planted() -> None:
    W1, W2 = _ideal()
    assert not bool(ac.motif_neurons(W1, W2).any())
    W1[0, 4] = 0.3                      # neuron 0 reads f0 (1.0) and a little f4 (0.3)...
    W2[:, 0] = 0.0
    W2[4, 0] = 1.2                      # ...and writes f4, not f0
    found = ac.motif_neurons(W1, W2)
    assert found.tolist() == [True, False, False, False, False, False]
    assert not bool(ac.motif_neurons(W1, W2, ratio=4.0).any())          # the read ratio is 1/0.3 = 3.3
    assert not bool(ac.motif_neurons(W1 * 0.4, W2, min_weight=0.5).any())  # an init-sized weight is no motif


def test_reordering_w1_alone_corrupts_a_model_and_a_relabelling_does_not() -> None:
    """The course's plot sorts neurons by monosemanticity in place: on an untied model W1 loses its W2."""
    from harness.metrics.abs_computation import neuron_reorder

    W1, W2 = _ideal(n_features=E7.n_features, pairs=5)
    W1 = W1.flip(0).contiguous()        # neurons in an order the sort changes
    W2 = W2.flip(1).contiguous()
    W1[0, 9] = 0.2                      # one less monosemantic neuron, sorted last
    handle = _handle(W1, W2, recipe=E7.name)
    found = neuron_reorder(MetricContext(handle, None, Session()), batch=4000, seed=0).value
    assert found["consistent_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert found["w1_only_ratio"] > 1.5


def test_handle_keeps_its_own_copy_of_the_weights() -> None:
    W1, W2 = _ideal()
    handle = _handle(W1, W2)
    W1.zero_()
    W2.zero_()
    assert float(handle.W.abs().sum()) == 6.0 and float(handle.W2.abs().sum()) == 6.0


def test_abs_handle_needs_w2_of_its_shape() -> None:
    W1, W2 = _ideal()
    with pytest.raises(ValueError, match="needs W2"):
        _handle(W1, W2[:, :2])
    identity = ModelIdentity(name="t", source="toy", weights_sha256=None, config_sha256=None)
    with pytest.raises(ValueError, match="has no W2"):
        ToyModelHandle(W1[None], torch.zeros(1, 6), identity, ToyShape(1, 6, 6, "relu_hidden"),
                       feature_probability=torch.ones(1, 6), importance=torch.ones(6), W2=W2[None])


def test_abs_metrics_refuse_a_tied_model() -> None:
    from harness.metrics.abs_computation import abs_neurons

    identity = ModelIdentity(name="tied", source="toy", weights_sha256=None, config_sha256=None)
    tied = ToyModelHandle(torch.ones(1, 2, 3), torch.zeros(1, 3), identity, ToyShape(1, 3, 2, "relu_hidden"),
                          feature_probability=torch.ones(1, 3), importance=torch.ones(3))
    with pytest.raises(ValueError, match="abs_computation"):
        abs_neurons(MetricContext(tied, None, Session()))
