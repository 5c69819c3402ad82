"""A deep double descent sweep as metrics see it (torch): one toy model per training-set size.

For each size b (``sizes``), ``W[s]`` [n_inst, d_hidden, n_features] and ``b_final[s]`` [n_inst, n_features] of
x' = ReLU(Wᵀ W x + b_final), trained on the fixed training set ``train[s]`` [b, n_inst, n_features]
(unit-norm points); the course keeps, per size, the instance with the lowest loss on its training set
(:meth:`DoubleDescentHandle.best_instance`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from harness.core.model_identity import ModelIdentity
from harness.core.toy_shape import ToyShape


class DoubleDescentHandle:
    """The sweep: per size its weights and training set, and the recipe that draws fresh test data."""

    def __init__(self, sizes: list[int], W: list[Tensor], b_final: list[Tensor], train: list[Tensor], identity: ModelIdentity,
                 shape: ToyShape, *, recipe: str) -> None:
        if not (len(sizes) == len(W) == len(b_final) == len(train)) or not sizes:
            raise ValueError(f"double descent sweep {identity.name!r}: {len(sizes)} sizes, {len(W)} weights, {len(train)} training sets")
        for size, W_s, x in zip(sizes, W, train):
            if tuple(W_s.shape) != (shape.n_inst, shape.d_hidden, shape.n_features) or tuple(x.shape) != (size, shape.n_inst, shape.n_features):
                raise ValueError(f"double descent sweep {identity.name!r}: size {size} has W {tuple(W_s.shape)} and training set "
                                 f"{tuple(x.shape)}, which do not fit {shape}")
        self.sizes = list(sizes)
        self.W = [w.detach().float().clone() for w in W]
        self.b_final = [b.detach().float().clone() for b in b_final]
        self.train = [x.detach().float() for x in train]
        self.identity = identity
        self.shape = shape
        #: The recipe (fixtures.tms.ddd_recipe) whose data distribution the test data is drawn from.
        self.recipe = recipe
        #: Measurements of the fixed sweep that several metrics share (harness/metrics/double_descent.py).
        self.curve_memo: dict[tuple, list[dict[str, float]]] = {}

    @property
    def n_inst(self) -> int:
        return self.shape.n_inst

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        for size, W, b in zip(self.sizes, self.W, self.b_final):
            yield f"b{size}.W", W
            yield f"b{size}.b_final", b

    def losses(self, index: int, x: Tensor) -> Tensor:
        """Per instance [n_inst]: mean over points and features of (x − ReLU(Wᵀ W x + b))², x [batch, n_inst, n_features]."""
        W, b = self.W[index], self.b_final[index]
        out = torch.relu(torch.einsum("kdf,bkd->bkf", W, torch.einsum("kdf,bkf->bkd", W, x)) + b)
        return ((x - out) ** 2).mean(dim=(0, 2))

    def best_instance(self, index: int) -> int:
        """The instance with the lowest loss on its own training set (the course's choice, S:864-871)."""
        return int(self.losses(index, self.train[index]).argmin())
