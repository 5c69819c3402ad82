"""The maths of toy models of superposition, on one instance's W [d_hidden, n_features] (torch).

Column i of W is feature i's direction W_i; Ŵ_i = W_i / ‖W_i‖ (0 for a zero column, ‖W_i‖ < EPS).

- feature norm ‖W_i‖;
- interference  s_i² = Σ_{j≠i} (Ŵ_i·W_j)²  (the course's bar colour is s_i, ARENA 1.5.4 utils.py:131-149);
- dimensionality  D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²  (j = i included; the course's
  ``compute_dimensionality``), 1 for a feature orthogonal to all others, 1/k for k parallel
  features of equal norm, Σ_i D_i ≤ d_hidden; D_i = 0 for a zero column (the course's code gives
  0/0 = NaN there);
- dimensions per feature  d_hidden / ‖W‖_F²  (one number per instance);
- neuron monosemanticity  m_n = max_i |W[n,i]| / √(Σ_i W[n,i]² + 1e-6)  (utils.py:62-80);
- 2-D geometry: the polar angles of the represented features, the gaps between them in angular order,
  antipodal (cos < −0.99) and orthogonal (|cos| < 0.1) pairs, and whether the represented features
  form a regular polygon (every gap within a tolerance of 360°/k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-8
ANTIPODAL_COS = -0.99
ORTHOGONAL_ABS_COS = 0.1


def feature_norms(W: Tensor) -> Tensor:
    """‖W_i‖ [n_features] of W [d_hidden, n_features]."""
    return W.norm(dim=0)


def unit_directions(W: Tensor) -> Tensor:
    """Ŵ [d_hidden, n_features]: unit columns, zero where ‖W_i‖ < EPS."""
    norms = feature_norms(W)
    return torch.where(norms > EPS, W / norms.clamp_min(EPS), torch.zeros_like(W))


def projections(W: Tensor) -> Tensor:
    """P [n_features, n_features] with P[i, j] = Ŵ_i·W_j."""
    return unit_directions(W).T @ W


def interference(W: Tensor) -> Tensor:
    """Σ_{j≠i} (Ŵ_i·W_j)² [n_features]."""
    squared = projections(W) ** 2
    return squared.sum(dim=1) - squared.diagonal()


def dimensionality(W: Tensor) -> Tensor:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² [n_features]; 0 for a zero column."""
    norms = feature_norms(W)
    denominator = (projections(W) ** 2).sum(dim=1)
    return torch.where(norms > EPS, norms ** 2 / denominator.clamp_min(EPS * EPS), torch.zeros_like(norms))


def dimensions_per_feature(W: Tensor) -> float:
    """d_hidden / ‖W‖_F² (the course's M4)."""
    return W.shape[0] / max(float((W ** 2).sum()), EPS)


def cosines(W: Tensor) -> Tensor:
    """cos(W_i, W_j) [n_features, n_features] (0 where a column is zero)."""
    U = unit_directions(W)
    return U.T @ U


def monosemanticity(W: Tensor) -> Tensor:
    """m_n = max_i |W[n,i]| / √(Σ_i W[n,i]² + 1e-6) [d_hidden] over the rows (neurons) of W."""
    return W.abs().max(dim=1).values / torch.sqrt((W ** 2).sum(dim=1) + 1e-6)


def features_per_neuron(W: Tensor, share: float) -> Tensor:
    """#{i : W[n,i]² ≥ share · Σ_i W[n,i]²} [d_hidden]: how many features a neuron reads with a
    weight carrying at least ``share`` of its squared norm (0 for a dead neuron, norm < 1e-3)."""
    squared = W ** 2
    total = squared.sum(dim=1, keepdim=True)
    counts = (squared >= share * total).sum(dim=1)
    return torch.where(total.squeeze(1) > 1e-6, counts, torch.zeros_like(counts))


@dataclass(frozen=True)
class PlaneGeometry:
    """The represented features of a 2-D instance, in angular order."""

    features: list[int]
    angles_deg: list[float]
    gaps_deg: list[float]
    antipodal_pairs: int
    orthogonal_pairs: int

    @property
    def count(self) -> int:
        return len(self.features)

    def gap_deviation_deg(self) -> float:
        """max |gap − 360/k| over the k gaps (180 when fewer than 2 features are represented)."""
        if self.count < 2:
            return 180.0
        regular = 360.0 / self.count
        return max(abs(gap - regular) for gap in self.gaps_deg)

    def regular_polygon(self, tolerance_deg: float) -> int:
        """k when the k ≥ 3 represented features are the vertices of a regular k-gon within
        ``tolerance_deg`` (every gap 360/k ± tolerance), else 0."""
        return self.count if self.count >= 3 and self.gap_deviation_deg() <= tolerance_deg else 0


def plane_geometry(W: Tensor, represented: Tensor) -> PlaneGeometry:
    """The geometry of the features ``represented`` [n_features] (bool) of W [2, n_features]."""
    if W.shape[0] != 2:
        raise ValueError(f"2-D geometry needs d_hidden = 2, got {W.shape[0]}")
    features = [int(i) for i in torch.nonzero(represented).flatten()]
    angles = {i: math.degrees(math.atan2(float(W[1, i]), float(W[0, i]))) % 360.0 for i in features}
    order = sorted(features, key=lambda i: angles[i])
    ordered = [angles[i] for i in order]
    gaps = [(ordered[(k + 1) % len(ordered)] - ordered[k]) % 360.0 for k in range(len(ordered))] if len(ordered) > 1 else []
    cos = cosines(W)
    pairs = [(a, b) for n, a in enumerate(features) for b in features[n + 1:]]
    antipodal = sum(1 for a, b in pairs if float(cos[a, b]) < ANTIPODAL_COS)
    orthogonal = sum(1 for a, b in pairs if abs(float(cos[a, b])) < ORTHOGONAL_ABS_COS)
    return PlaneGeometry(order, ordered, gaps, antipodal, orthogonal)


def pair_cosines(W: Tensor, n_pairs: int) -> tuple[Tensor, Tensor]:
    """(within [n_pairs], cross [n_cross]): cos of each pair (2p, 2p+1), and cos of every two
    features in different pairs, over the first 2·n_pairs features."""
    cos = cosines(W[:, : 2 * n_pairs])
    within = torch.stack([cos[2 * p, 2 * p + 1] for p in range(n_pairs)])
    cross = [cos[a, b] for a in range(2 * n_pairs) for b in range(a + 1, 2 * n_pairs) if a // 2 != b // 2]
    return within, torch.stack(cross) if cross else torch.zeros(0)
