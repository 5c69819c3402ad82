"""A loaded toy SAE as metrics see it (torch, no TransformerLens): the SAE and the base model it reads.

``base_W`` [d_in, n_features] is the base model instance whose hidden vectors h = base_W x every SAE
instance reads, with feature probability ``p``. ``params`` by ``architecture`` (x̃ = h − b_dec):

- ``standard`` (the course's ToySAE): W_enc [n_inst, d_in, d_sae], W_dec [n_inst, d_sae, d_in], b_enc, b_dec;
  z = ReLU(x̃ W_enc + b_enc), h' = z Ŵ_dec + b_dec with unit decoder rows;
- ``gated`` (GatedToySAE): W_gate [n_inst, d_in, d_sae], b_gate, r_mag, b_mag [n_inst, d_sae], W_dec, b_dec;
  π = x̃ W_gate + b_gate, z = 1[π > 0] ⊙ ReLU(x̃ (e^{r_mag} ⊙ W_gate) + b_mag), h' = z W_dec + b_dec;
- ``jumprelu`` (JumpReLUToySAE, tied): W_enc, b_enc, log_theta [n_inst, d_sae], b_dec; a = ReLU(x̃ W_enc + b_enc),
  z = a ⊙ 1[a > θ] with θ = e^{log_theta}, h' = z W_encᵀ + b_dec (the tied decoder is not normalised).
"""

from __future__ import annotations

from typing import Iterator, Literal

import torch
from torch import Tensor

from harness.core.model_identity import ModelIdentity
from harness.core.toy_shape import SaeShape

Architecture = Literal["standard", "gated", "jumprelu"]
PARAMS: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "W_dec", "b_enc", "b_dec"),
    "gated": ("W_gate", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "log_theta", "b_dec"),
}
"""The parameters each architecture's handle keeps (a JumpReLU SAE's tied decoder is W_encᵀ)."""


class ToySaeHandle:
    """A toy SAE: parameters, the base model's directions, a forward pass."""

    def __init__(self, params: dict[str, Tensor], base_W: Tensor, p: float, identity: ModelIdentity, shape: SaeShape,
                 *, training_activity: Tensor | None = None, l0_log: Tensor | None = None, log_every: int = 100,
                 architecture: Architecture = "standard", activity_log: Tensor | None = None) -> None:
        if architecture not in PARAMS:
            raise ValueError(f"toy SAE {identity.name!r}: architecture {architecture!r} is not one of {sorted(PARAMS)}")
        missing = [k for k in PARAMS[architecture] if k not in params]
        if missing:
            raise ValueError(f"toy SAE {identity.name!r} ({architecture}): parameters {missing} are missing")
        encoder = params["W_gate" if architecture == "gated" else "W_enc"]
        if tuple(encoder.shape) != (shape.n_inst, shape.d_in, shape.d_sae) or base_W.shape[0] != shape.d_in:
            raise ValueError(f"toy SAE {identity.name!r}: encoder {tuple(encoder.shape)} and base W {tuple(base_W.shape)} do not fit {shape}")
        self.architecture = architecture
        self.params = {k: params[k].detach().float() for k in PARAMS[architecture]}
        self.base_W = base_W.detach().float()
        self.p = p
        self.identity = identity
        self.shape = shape
        #: Each latent's firing rate [window, n_inst, d_sae] over the last steps of training (None for an untrained SAE).
        self.training_activity = None if training_activity is None else training_activity.detach().float()
        #: Mean active latents per instance [n_logs, n_inst] every ``log_every`` steps of training (and at its last step).
        self.l0_log = None if l0_log is None else l0_log.detach().float()
        self.log_every = log_every
        #: Each latent's firing rate [n_blocks, n_inst, d_sae] over every block of ``log_every`` training steps
        #: (exactly 0 when it fired on no sample of the block); None for an SAE trained before the log existed.
        self.activity_log = None if activity_log is None else activity_log.detach().float()

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

    def decoder(self) -> Tensor:
        """The decoder rows [n_inst, d_sae, d_in] the forward pass uses (unit rows for ``standard``; W_encᵀ when tied)."""
        if self.architecture == "jumprelu":
            return self.params["W_dec"] if "W_dec" in self.params else self.params["W_enc"].transpose(-1, -2)
        if self.architecture == "gated":
            return self.params["W_dec"]
        W_dec = self.params["W_dec"]
        return W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-8)

    def decoder_directions(self) -> Tensor:
        """Unit decoder rows [n_inst, d_sae, d_in]."""
        W_dec = self.decoder()
        return W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-8)

    def encode(self, h: Tensor) -> Tensor:
        """The latents z [batch, n_inst, d_sae] of h [batch, n_inst, d_in] (module docstring)."""
        p = self.params
        x = h - p["b_dec"]
        if self.architecture == "gated":
            gate = torch.einsum("bki,kis->bks", x, p["W_gate"]) + p["b_gate"]
            magnitude = torch.relu(torch.einsum("bki,kis->bks", x, p["r_mag"].exp()[:, None, :] * p["W_gate"]) + p["b_mag"])
            return (gate > 0).float() * magnitude
        pre = torch.relu(torch.einsum("bki,kis->bks", x, p["W_enc"]) + p["b_enc"])
        if self.architecture == "jumprelu":
            return pre * (pre > p["log_theta"].exp()).float()
        return pre

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(z [batch, n_inst, d_sae], h' [batch, n_inst, d_in]) for h [batch, n_inst, d_in]."""
        z = self.encode(h)
        return z, torch.einsum("bks,ksi->bki", z, self.decoder()) + self.params["b_dec"]
