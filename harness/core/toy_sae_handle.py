"""A loaded toy SAE as metrics see it (torch, no TransformerLens): the SAE and the base model it reads.

``params``: W_enc [n_inst, d_in, d_sae], W_dec [n_inst, d_sae, d_in] (rows normalised in the forward
pass), b_enc [n_inst, d_sae], b_dec [n_inst, d_in]; ``base_W`` [d_in, n_features] is the base model
instance whose hidden vectors h = base_W x every SAE instance reads, with feature probability ``p``.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from harness.core.model_identity import ModelIdentity
from harness.core.toy_shape import SaeShape


class ToySaeHandle:
    """A toy SAE: parameters, the base model's directions, a forward pass."""

    def __init__(self, params: dict[str, Tensor], base_W: Tensor, p: float, identity: ModelIdentity, shape: SaeShape,
                 *, training_activity: Tensor | None = None) -> None:
        if tuple(params["W_enc"].shape) != (shape.n_inst, shape.d_in, shape.d_sae) or base_W.shape[0] != shape.d_in:
            raise ValueError(f"toy SAE {identity.name!r}: W_enc {tuple(params['W_enc'].shape)} and base W {tuple(base_W.shape)} do not fit {shape}")
        self.params = {k: params[k].detach().float() for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
        self.base_W = base_W.detach().float()
        self.p = p
        self.identity = identity
        self.shape = shape
        #: Each latent's firing rate [window, n_inst, d_sae] over the last steps of training (None for an untrained SAE).
        self.training_activity = None if training_activity is None else training_activity.detach().float()

    @property
    def n_inst(self) -> int:
        return self.shape.n_inst

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.params.items()
        yield "base_W", self.base_W

    def check_instance(self, instance: int) -> int:
        if not 0 <= instance < self.n_inst:
            raise ValueError(f"instance {instance} is outside SAE {self.identity.name!r} (instances 0 to {self.n_inst - 1})")
        return instance

    def decoder_directions(self) -> Tensor:
        """Unit decoder rows [n_inst, d_sae, d_in]."""
        W_dec = self.params["W_dec"]
        return W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-8)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(z [batch, n_inst, d_sae], h' [batch, n_inst, d_in]) for h [batch, n_inst, d_in]."""
        p = self.params
        z = torch.relu(torch.einsum("bki,kis->bks", h - p["b_dec"], p["W_enc"]) + p["b_enc"])
        return z, torch.einsum("bks,ksi->bki", z, self.decoder_directions()) + p["b_dec"]
