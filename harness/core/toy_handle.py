"""A loaded toy model of superposition as metrics see it (torch, no TransformerLens).

:class:`ToyModelHandle` holds the weights of ``n_inst`` independent instances,

- W [n_inst, d_hidden, n_features], column ``W[k, :, i]`` is feature i's direction in instance k;
- b_final [n_inst, n_features];

and, from the recipe that trained it, each instance's feature probabilities [n_inst, n_features]
and the features' importance [n_features]. The forward pass is
``x' = ReLU(Wᵀ W x + b_final)`` (``relu_output``), ``x' = ReLU(Wᵀ ReLU(W x) + b_final)``
(``relu_hidden``) or ``x' = ReLU(W2 ReLU(W x) + b_final)`` (``abs_computation``, the course's
NeuronComputationModel: W is its W1 and W2 [n_inst, n_features, d_hidden] is untied).

The handle keeps its own copies of the weights, so nothing that reads them (a plot that sorts neurons,
as the course's ``plot_features_in_Nd`` does in place) can change the model a later metric measures.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from harness.core.model_identity import ModelIdentity
from harness.core.toy_shape import ToyShape


class ToyModelHandle:
    """A toy model: weights, per-instance data statistics, a forward pass."""

    def __init__(self, W: Tensor, b_final: Tensor, identity: ModelIdentity, shape: ToyShape, *,
                 feature_probability: Tensor, importance: Tensor, recipe: str | None = None,
                 W2: Tensor | None = None) -> None:
        expected = (shape.n_inst, shape.d_hidden, shape.n_features)
        if tuple(W.shape) != expected or tuple(b_final.shape) != (shape.n_inst, shape.n_features):
            raise ValueError(f"toy model {identity.name!r}: W {tuple(W.shape)} and b_final {tuple(b_final.shape)} "
                             f"do not fit {shape} (W wants {expected})")
        untied = shape.kind == "abs_computation"
        if untied != (W2 is not None) or (untied and tuple(W2.shape) != (shape.n_inst, shape.n_features, shape.d_hidden)):
            raise ValueError(f"toy model {identity.name!r}: a {shape.kind} model {'needs' if untied else 'has no'} W2 "
                             f"[n_inst, n_features, d_hidden]; got {None if W2 is None else tuple(W2.shape)}")
        self.W = W.detach().float().clone()
        #: The untied output weights [n_inst, n_features, d_hidden] of an ``abs_computation`` model, else None.
        self.W2 = None if W2 is None else W2.detach().float().clone()
        self.b_final = b_final.detach().float().clone()
        self.identity = identity
        self.shape = shape
        self.feature_probability = feature_probability.detach().float()
        self.importance = importance.detach().float()
        #: The name of the recipe that trained it (its data generator), where it has one.
        self.recipe = recipe

    @property
    def n_inst(self) -> int:
        return self.shape.n_inst

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """``W``, ``W2`` (``abs_computation`` only) and ``b_final`` (detached)."""
        yield "W", self.W
        if self.W2 is not None:
            yield "W2", self.W2
        yield "b_final", self.b_final

    def check_instance(self, instance: int) -> int:
        """``instance``, or ``ValueError`` naming the model's instance range."""
        if not 0 <= instance < self.n_inst:
            raise ValueError(f"instance {instance} is outside model {self.identity.name!r} (instances 0 to {self.n_inst - 1})")
        return instance

    def hidden(self, x: Tensor) -> Tensor:
        """Hidden vectors [batch, n_inst, d_hidden] of x [batch, n_inst, n_features] (after the ReLU unless ``relu_output``)."""
        h = torch.einsum("kdf,bkf->bkd", self.W, x)
        return h if self.shape.kind == "relu_output" else torch.relu(h)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs x' [batch, n_inst, n_features] of x [batch, n_inst, n_features]."""
        if self.W2 is not None:
            return torch.relu(torch.einsum("kfd,bkd->bkf", self.W2, self.hidden(x)) + self.b_final)
        return torch.relu(torch.einsum("kdf,bkd->bkf", self.W, self.hidden(x)) + self.b_final)
