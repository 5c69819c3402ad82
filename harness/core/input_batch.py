"""The input batch type: token ids and what they are (built by :mod:`fixtures.inputs`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


@dataclass(frozen=True)
class InputBatch:
    """Token ids [batch, pos] and what they are."""

    tokens: Tensor
    kind: str
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Identifies the inputs within one model (cache key part)."""
        items = ",".join(f"{k}={self.params[k]!r}" for k in sorted(self.params))
        return f"{self.kind}({items})"
