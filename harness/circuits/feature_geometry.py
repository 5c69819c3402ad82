"""Feature geometry in any hidden dimension (ARENA 1.5.4's 200 features in 20 dimensions), on one
instance's W [d_hidden, n_features] (torch).

The 2-D geometry (polygons, angles) is in :mod:`harness.circuits.superposition`; here the hidden space
has any dimension, so a feature's geometry is read from two numbers:

- its **antipodal partners**: the other represented features j with cos(W_i, W_j) < ``cos_below``
  (−0.99 by default). An antipodal pair spans one dimension between two features;
- its **dimensionality** D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² (:func:`~harness.circuits.superposition.dimensionality`),
  which for a feature in a regular geometry is a simple fraction: 1 (a dimension of its own), 3/4 (a
  tetrahedron, 4 features in 3 dimensions), 2/3 (a triangle, 3 in 2), 1/2 (an antipodal pair, 2 in 1),
  2/5 (a pentagon, 5 in 2), 3/8 (a square antiprism, 8 in 3), 1/3 (3 in 1 or 6 in 2) and 3/20. The
  course's dimensionality plot draws lines at 1/2, 2/3, 2/5, 3/4, 3/8 and 3/20 (utils.py:950-964).

:func:`fraction_clusters` assigns each represented feature to the nearest of :data:`FRACTIONS` within a
tolerance (or to none), so an instance's features can be counted per fraction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.circuits import superposition as sp

FRACTIONS: tuple[tuple[str, float], ...] = (
    ("1", 1.0), ("3_4", 3 / 4), ("2_3", 2 / 3), ("1_2", 1 / 2), ("2_5", 2 / 5), ("3_8", 3 / 8), ("1_3", 1 / 3),
    ("3_20", 3 / 20),
)
"""The fractions D clusters at, keyed ``P_Q`` for P/Q (``1_2`` is 1/2); 1 and 1/3 besides the plot's lines."""


def antipodal_partners(W: Tensor, represented: Tensor, cos_below: float = sp.ANTIPODAL_COS) -> Tensor:
    """#{j ≠ i represented : cos(W_i, W_j) < cos_below} [n_features] (long) for each represented feature i,
    0 for a feature not represented; ``represented`` [n_features] is bool."""
    cos = sp.cosines(W)
    both = represented[:, None] & represented[None, :]
    both.fill_diagonal_(False)
    return ((cos < cos_below) & both).sum(dim=1)


def antipodal_pair_count(W: Tensor, represented: Tensor, cos_below: float = sp.ANTIPODAL_COS,
                         partners: Tensor | None = None) -> int:
    """The number of unordered pairs {i, j} of represented features with cos(W_i, W_j) < cos_below
    (half the sum of the partner counts); ``partners`` [n_features]: :func:`antipodal_partners` of the
    same arguments where the caller has them already."""
    partners = antipodal_partners(W, represented, cos_below) if partners is None else partners
    return int(partners.sum()) // 2


def nearest_fraction(dims: Tensor, tolerance: float) -> Tensor:
    """[n] (long): the index in :data:`FRACTIONS` of the fraction nearest each D in ``dims`` [n] when it is
    within ``tolerance``, else −1 (ties go to the larger fraction, the first listed)."""
    values = torch.tensor([value for _, value in FRACTIONS], dtype=dims.dtype)
    distance = (dims[:, None] - values[None, :]).abs()
    best = distance.min(dim=1)
    return torch.where(best.values <= tolerance, best.indices, torch.full_like(best.indices, -1))


@dataclass(frozen=True)
class FractionClusters:
    """How many represented features lie near each fraction of :data:`FRACTIONS`."""

    counts: dict[str, int]
    represented: int

    @property
    def clustered(self) -> int:
        """Represented features near some fraction."""
        return sum(self.counts.values())

    @property
    def clustered_share(self) -> float:
        """clustered / represented (0 when none is represented)."""
        return self.clustered / self.represented if self.represented else 0.0

    def top(self) -> tuple[float, int]:
        """(the fraction holding most represented features, how many); (0, 0) when none is near a fraction."""
        name, count = max(self.counts.items(), key=lambda item: item[1])
        return (dict(FRACTIONS)[name], count) if count else (0.0, 0)


def fraction_clusters(W: Tensor, represented: Tensor, tolerance: float, dims: Tensor | None = None) -> FractionClusters:
    """Counts of the represented features (``represented`` [n_features], bool) of W whose dimensionality
    lies within ``tolerance`` of each fraction (each feature counted once, at its nearest fraction);
    ``dims`` [n_features]: W's dimensionalities where the caller has them already."""
    dims = sp.dimensionality(W) if dims is None else dims
    nearest = nearest_fraction(dims[represented], tolerance)
    counts = {name: int((nearest == k).sum()) for k, (name, _) in enumerate(FRACTIONS)}
    return FractionClusters(counts, int(represented.sum()))


def longest_run(flags: list[bool]) -> tuple[int, int]:
    """(length, start) of the longest run of consecutive True in ``flags`` ((0, −1) when there is none;
    the first run wins a tie)."""
    best, best_start, start = 0, -1, None
    for k, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = k
        elif not flag and start is not None:
            if k - start > best:
                best, best_start = k - start, start
            start = None
    return best, best_start
