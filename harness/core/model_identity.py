"""What names a model and what a spec is checked against, without torch or TransformerLens.

:class:`ModelShape` is declared in the model table, so ``claims validate`` checks heads and
vocabulary sizes without building a model; :class:`ModelIdentity` is recorded with every result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The dimensions a spec can be checked against without loading weights."""

    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int


@dataclass(frozen=True)
class ModelIdentity:
    """Everything that makes two loaded models the same model.

    Two handles with equal identities give equal measurements; cache keys use ``key``.
    """

    name: str
    source: str
    weights_sha256: str | None
    config_sha256: str | None
    processing: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    #: Where the weights were read from (a path, ``repo/file``, a package); provenance only,
    #: not part of :attr:`key` (the same bytes from another place are the same model).
    origin: str | None = None

    @property
    def key(self) -> str:
        """A string that differs whenever any part of the identity differs."""
        flags = ",".join(f"{k}={self.processing[k]}" for k in sorted(self.processing))
        return f"{self.name}|{self.source}|{self.weights_sha256}|{self.config_sha256}|{flags}|{self.dtype}|{self.device}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "weights_sha256": self.weights_sha256,
            "config_sha256": self.config_sha256,
            "processing": dict(self.processing),
            "dtype": self.dtype,
            "device": self.device,
            "origin": self.origin,
        }
