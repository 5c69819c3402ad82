"""The declared shape of a toy model of superposition (no torch): what specs are checked against.

A toy model is not a transformer: it has ``n_inst`` independent instances, each embedding
``n_features`` features in ``d_hidden`` dimensions. It has no layers and no heads, so a claim that
names a head on it is refused at load time (``n_layers`` and ``n_heads`` are 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ToyKind = Literal["relu_output", "relu_hidden", "abs_computation"]
"""``relu_output``: x' = ReLU(Wᵀ W x + b) (the course's ToyModel); ``relu_hidden``: x' =
ReLU(Wᵀ ReLU(W x) + b) (its NeuronModel, a privileged hidden basis); ``abs_computation``: x' =
ReLU(W2 ReLU(W1 x) + b) with untied W1 [d_hidden, n_features] and W2 [n_features, d_hidden], trained to
output |x| (its NeuronComputationModel, computation in superposition)."""


class _NoTransformerLayers:
    """A model without transformer layers or heads: head and layer keys are out of range on it."""

    @property
    def n_layers(self) -> int:
        return 0

    @property
    def n_heads(self) -> int:
        return 0


@dataclass(frozen=True)
class ToyShape(_NoTransformerLayers):
    """``n_inst`` instances of W [d_hidden, n_features] and b_final [n_features]."""

    n_inst: int
    n_features: int
    d_hidden: int
    kind: ToyKind = "relu_output"


@dataclass(frozen=True)
class SaeShape(_NoTransformerLayers):
    """A sparse autoencoder on a toy model's hidden space: ``n_inst`` instances of d_in -> d_sae -> d_in."""

    n_inst: int
    d_in: int
    d_sae: int
