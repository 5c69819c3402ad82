"""The superposition maths against analytic ground truths and a dense reference (ARENA 1.5.4 metrics)."""

from __future__ import annotations

import math

import pytest
import torch

from harness.circuits import superposition as sp


def polygon(k: int, radius: float = 1.0) -> torch.Tensor:
    """W [2, k]: k unit... vectors of length ``radius`` at 360/k degree steps."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return radius * torch.stack([angles.cos(), angles.sin()])


def dense_dimensionality(W: torch.Tensor) -> list[float]:
    """D_i by explicit loops over features (the reference)."""
    out = []
    for i in range(W.shape[1]):
        norm = float(W[:, i].norm())
        if norm < 1e-8:
            out.append(0.0)
            continue
        unit = W[:, i] / norm
        out.append(norm ** 2 / sum(float(unit @ W[:, j]) ** 2 for j in range(W.shape[1])))
    return out


def test_orthogonal_embedding_has_no_interference_and_dimensionality_one() -> None:
    W = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    assert sp.interference(W).tolist() == [0.0, 0.0, 0.0]
    assert sp.dimensionality(W).tolist() == [1.0, 1.0, 0.0]  # a zero column has D = 0, not NaN
    assert sp.dimensions_per_feature(W) == pytest.approx(2 / 4.25)


def test_regular_pentagon() -> None:
    W = polygon(5)
    plane = sp.plane_geometry(W, torch.ones(5, dtype=torch.bool))
    assert plane.gaps_deg == pytest.approx([72.0] * 5)
    assert plane.regular_polygon(1.0) == 5 and plane.antipodal_pairs == 0 and plane.orthogonal_pairs == 0
    # Σ_j cos² = 1 + 2 cos² 72° + 2 cos² 144° = 5/2, so D = 2/5 and the interference is 3/2
    assert sp.dimensionality(W).tolist() == pytest.approx([0.4] * 5)
    assert sp.interference(W).tolist() == pytest.approx([1.5] * 5)
    assert float(sp.dimensionality(W).sum()) == pytest.approx(2.0)


def test_square_is_two_antipodal_pairs_with_dimensionality_half() -> None:
    W = polygon(4)
    plane = sp.plane_geometry(W, torch.ones(4, dtype=torch.bool))
    assert plane.regular_polygon(1.0) == 4 and plane.antipodal_pairs == 2 and plane.orthogonal_pairs == 4
    assert sp.dimensionality(W).tolist() == pytest.approx([0.5] * 4)


def test_irregular_polygon_is_not_regular() -> None:
    W = polygon(5)
    W[:, 0] = torch.tensor([math.cos(0.5), math.sin(0.5)], dtype=W.dtype)  # move one vertex by ~29°
    assert sp.plane_geometry(W, torch.ones(5, dtype=torch.bool)).regular_polygon(10.0) == 0


def test_k_parallel_equal_norm_features_share_a_dimension() -> None:
    W = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert sp.dimensionality(W).tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])


def test_dimensionality_matches_dense_reference_and_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    for d, n in [(2, 5), (5, 10), (20, 100)]:
        W = torch.randn(d, n, generator=generator, dtype=torch.float64)
        W[:, 1] = 0.0
        D = sp.dimensionality(W)
        assert D.tolist() == pytest.approx(dense_dimensionality(W), rel=1e-9, abs=1e-12)
        assert bool(((D >= 0) & (D <= 1 + 1e-12)).all()) and float(D.sum()) <= d + 1e-9


def test_interference_matches_dense_reference() -> None:
    W = torch.randn(3, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = [sum(float(W[:, i] / W[:, i].norm() @ W[:, j]) ** 2 for j in range(7) if j != i) for i in range(7)]
    assert sp.interference(W).tolist() == pytest.approx(expected, rel=1e-9)


def test_monosemanticity_and_features_per_neuron() -> None:
    W = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, -0.8], [0.0, 0.0, 0.0]])
    m = sp.monosemanticity(W)
    assert float(m[0]) == pytest.approx(1.0, abs=1e-5) and float(m[1]) == pytest.approx(0.8, abs=1e-5)
    assert sp.features_per_neuron(W, 0.1).tolist() == [1, 2, 0]


def test_pair_cosines() -> None:
    W = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    within, cross = sp.pair_cosines(W, 2)
    assert within.tolist() == pytest.approx([-1.0, 1.0]) and cross.abs().max() < 1e-9
