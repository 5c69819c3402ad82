"""Head references: ``"L.H"`` strings (layer ``L``, head ``H``), as the course writes them."""

from __future__ import annotations

import re
from typing import Annotated, NamedTuple

from pydantic import StringConstraints

HEAD_PATTERN = r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$"
_HEAD_RE = re.compile(HEAD_PATTERN)

HeadName = Annotated[str, StringConstraints(pattern=HEAD_PATTERN)]
"""A head written ``"L.H"``; metric parameters annotated with it are range-checked against the model."""


class Head(NamedTuple):
    """One attention head: ``layer`` and ``head`` index, both zero-based."""

    layer: int
    head: int

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @classmethod
    def parse(cls, text: str) -> "Head":
        """Parse ``"1.10"`` into ``Head(1, 10)``; raise ``ValueError`` on anything else."""
        match = _HEAD_RE.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not a head: write 'LAYER.HEAD', e.g. '1.4'")
        return cls(int(match.group(1)), int(match.group(2)))


def head_names(n_layers: int, n_heads: int) -> list[str]:
    """Every head of a model in layer-major order: ``["0.0", "0.1", ..., "L-1.H-1"]``."""
    return [str(Head(layer, head)) for layer in range(n_layers) for head in range(n_heads)]


def sort_heads(names: list[str]) -> list[str]:
    """Sort head names numerically (``"1.4"`` before ``"1.10"``)."""
    return sorted(names, key=Head.parse)
