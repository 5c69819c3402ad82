"""The toy models' fast training step (fixtures.tms.fast_step) against the autograd loop it replaces, and one
retrain in the default run: ``tms-5f2d`` seed 0 retrained from its recipe equals its committed weights on the
kernels that trained them, and keeps every claim's verdict on any CPU."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures.sources.tms import MANIFEST, retrained_handle
from fixtures.tms import fast_step
from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, initial_params, instance_losses, schedules, train, train_autograd, weights_file
from tests.retrain_support import assert_bitwise_where_trained, assert_claims_hold_on_retrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread is several times cheaper in CPU time

KINDS = ["tms-5f2d", "tms-4f2d-corr", "tms-4f2d-anti", "tms-10f5d-neuron", "tms-abs-10f10d"]
"""One recipe per generator and model kind: independent, correlated and anticorrelated features; a hidden
ReLU; the |x| model with its own W2."""


@pytest.mark.parametrize("name", KINDS)
def test_batches_drawn_many_steps_at_once_equal_the_per_step_draws(name: str) -> None:
    recipe = RECIPES[name]
    p, _ = schedules(recipe)
    generator = torch.Generator().manual_seed(3)
    per_step = [generate_batch(recipe, p, 64, generator) for _ in range(5)]
    chunked = list(fast_step.draw_batches(recipe, p, 64, torch.Generator().manual_seed(3), 5, chunk=2))
    assert len(chunked) == 5
    for a, b in zip(per_step, chunked):
        assert torch.equal(a, b) and a.shape == b.shape
    assert bool((chunked[0] == 0).any()) and bool((chunked[0] != 0).any())


@pytest.mark.parametrize("name", KINDS)
def test_gradient_by_hand_equals_autograd_bit_for_bit(name: str) -> None:
    """∂L/∂θ of :func:`fast_step.loss_grads` against ``backward()`` of the course's loss, at the init and at a
    perturbed point (so that some outputs and hidden units are cut by their ReLU and others are not)."""
    recipe = RECIPES[name]
    generator = torch.Generator().manual_seed(1)
    p, importance = schedules(recipe)
    coefficient = fast_step.output_coefficient(importance, recipe.batch_size, recipe.n_inst, recipe.n_features)
    params = initial_params(recipe, generator)
    for shift in (0.0, 0.05):
        point = {k: v + shift * torch.randn(v.shape, generator=generator) for k, v in params.items()}
        x = generate_batch(recipe, p, recipe.batch_size, generator)
        leaves = {k: v.clone().requires_grad_(True) for k, v in point.items()}
        instance_losses(recipe, leaves["W"], leaves["b_final"], x, importance, leaves.get("W2")).sum().backward()
        grads, out, _ = fast_step.loss_grads(recipe, point, x, coefficient)
        assert set(grads) == set(point)
        for key, grad in grads.items():
            assert torch.equal(grad, leaves[key].grad), (key, float((grad - leaves[key].grad).abs().max()))
        assert 0 < float((out > 0).float().mean()) < 1


def test_adam_equals_torch_adam_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 2, 5), (3, 5)]
    mine = [torch.randn(s, generator=generator) for s in shapes]
    theirs = [t.clone().requires_grad_(True) for t in mine]
    adam, reference = fast_step.Adam(mine, lr=1e-3), torch.optim.Adam(theirs, lr=1e-3)
    for _ in range(30):
        grads = [torch.randn(s, generator=generator) for s in shapes]
        adam.step(grads)
        for t, g in zip(theirs, grads):
            t.grad = g.clone()
        reference.step()
    assert all(torch.equal(a, b.detach()) for a, b in zip(mine, theirs))
    assert not torch.equal(mine[0], theirs[0].detach() + 1e-3)


@pytest.mark.parametrize("name", KINDS)
def test_fast_training_equals_the_autograd_loop(name: str) -> None:
    recipe = RECIPES[name]
    fast, reference = train(recipe, 2, steps=25), train_autograd(recipe, 2, steps=25)
    assert set(fast) == set(reference)
    for key in reference:
        assert torch.equal(fast[key], reference[key]), key


def test_retraining_tms_5f2d_reproduces_its_committed_weights() -> None:
    """Retrain ``tms-5f2d`` seed 0 (5000 steps, one thread; a few seconds of CPU) and compare it with the
    committed file: bit for bit where torch, the vector unit and the CPU model are those the manifest records for
    it (:func:`fixtures.tms.train.kernels`: the same floating-point operations in the same order); on any CPU, every
    claim on the model keeps its expected verdict on the retrained weights (:mod:`tests.retrain_support`)."""
    from safetensors.torch import load_file

    recipe = RECIPES["tms-5f2d"]
    row = json.loads(MANIFEST.read_text())["models"]["tms-5f2d@seed=0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(row["threads"])  # as trained (1); the worker's setting is restored after
    try:
        trained = train(recipe, 0)
    finally:
        torch.set_num_threads(threads)
    assert_bitwise_where_trained(trained, load_file(str(weights_file(recipe, 0))), row)
    assert_claims_hold_on_retrained("tms-5f2d", retrained_handle("tms-5f2d", recipe, 0, trained), at_least=20)


def test_the_claims_check_on_retrained_weights_fails_on_an_untrained_model() -> None:
    """The control for the check above: the recipe's seeded init (no training) under ``tms-5f2d``'s names
    breaks at least one claim on the model, so a retrain that trained nothing would not pass."""
    recipe = RECIPES["tms-5f2d"]
    untrained = initial_params(recipe, torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError, match=r"1\.5\.4\."):  # names the claim whose verdict changed
        assert_claims_hold_on_retrained("tms-5f2d", retrained_handle("tms-5f2d", recipe, 0, untrained))
