"""Feature geometry in any hidden dimension (ARENA 1.5.4, E8): antipodal partners and the fractions D
clusters at, against planted geometries with known answers and a dense reference."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.circuits import feature_geometry as fg
from harness.context import MetricContext
from harness.core.model_identity import ModelIdentity
from harness.core.toy_handle import ToyModelHandle
from harness.core.toy_shape import ToyShape
from harness.metrics.feature_geometry import _geometry, geometry_nd_by_instance, plateau, share_of_instances
from harness.session import Session


def regular_polygon(k: int) -> torch.Tensor:
    """W [2, k]: the k unit vertices of a regular k-gon."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    return torch.stack([angles.cos(), angles.sin()])


def tetrahedron() -> torch.Tensor:
    """W [3, 4]: a regular tetrahedron's unit vertices (every cos −1/3, so D = 1/(1 + 3/9) = 3/4)."""
    return torch.tensor([[1, 1, -1, -1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64) / math.sqrt(3)


def cube() -> torch.Tensor:
    """W [3, 8]: a cube's unit vertices, four antipodal pairs; a tight frame, so D = 3/8."""
    return torch.tensor(list(itertools.product([-1, 1], repeat=3)), dtype=torch.float64).T / math.sqrt(3)


def block_diagonal(d_hidden: int, n_features: int, *blocks: torch.Tensor) -> torch.Tensor:
    """W [d_hidden, n_features] with the blocks on orthogonal coordinates, the remaining features zero."""
    W = torch.zeros(d_hidden, n_features, dtype=torch.float64)
    row = column = 0
    for block in blocks:
        W[row:row + block.shape[0], column:column + block.shape[1]] = block
        row, column = row + block.shape[0], column + block.shape[1]
    return W


def antipodal_pairs_20d() -> torch.Tensor:
    """W [20, 200]: 20 antipodal pairs ±e_k (40 features of norm 1) and 160 zero features: the 1/2 plateau."""
    return block_diagonal(20, 200, *[torch.tensor([[1.0, -1.0]], dtype=torch.float64)] * 20)


def dense_partners(W: torch.Tensor, represented: torch.Tensor, cos_below: float) -> list[int]:
    """Antipodal partners by explicit loops (the reference)."""
    n = W.shape[1]
    out = []
    for i in range(n):
        count = 0
        for j in range(n):
            if i != j and bool(represented[i]) and bool(represented[j]):
                cos = float(W[:, i] @ W[:, j]) / (float(W[:, i].norm()) * float(W[:, j].norm()))
                count += cos < cos_below
        out.append(count)
    return out


def dense_clusters(W: torch.Tensor, represented: torch.Tensor, tolerance: float) -> dict[str, int]:
    """Features per fraction by explicit loops (the reference): D_i from its definition, nearest fraction."""
    counts = {name: 0 for name, _ in fg.FRACTIONS}
    for i in range(W.shape[1]):
        if not bool(represented[i]):
            continue
        unit = W[:, i] / W[:, i].norm()
        D = float(W[:, i].norm()) ** 2 / sum(float(unit @ W[:, j]) ** 2 for j in range(W.shape[1]))
        name, value = min(fg.FRACTIONS, key=lambda item: abs(D - item[1]))
        if abs(D - value) <= tolerance:
            counts[name] += 1
    return counts


def test_antipodal_pairs_in_20d_are_the_half_plateau() -> None:
    g = _geometry(antipodal_pairs_20d(), 0.5, 0.15, -0.99, 0.03)
    assert (g["represented"], g["dropped"], g["between"], g["paired"], g["antipodal_pairs"]) == (40, 160, 0, 40, 20)
    assert g["dropped_or_paired"] == 200 and g["unpaired_represented"] == 0 and g["paired_share"] == 1.0
    assert g["at_1_2"] == 40 and g["clustered_share"] == 1.0 and g["top_fraction"] == 0.5 and g["top_share"] == 1.0
    # ‖W‖_F² = 40 = the represented count; d_hidden / ‖W‖_F² = 1/2
    assert g["frobenius_gap"] == 0.0 and g["dims_per_feature"] == pytest.approx(0.5)
    assert g["median_dimensionality_represented"] == pytest.approx(0.5)


@pytest.mark.parametrize("W, name, value", [
    (tetrahedron(), "3_4", 3 / 4), (regular_polygon(3), "2_3", 2 / 3), (regular_polygon(5), "2_5", 2 / 5),
    (cube(), "3_8", 3 / 8), (torch.eye(4, dtype=torch.float64), "1", 1.0),
])
def test_planted_geometries_have_their_fraction(W: torch.Tensor, name: str, value: float) -> None:
    """A unit-norm tight frame of n vectors in d dimensions has Σ_j cos² = n/d, so D = d/n for each."""
    from harness.circuits.superposition import dimensionality

    assert dimensionality(W).tolist() == pytest.approx([value] * W.shape[1])
    clusters = fg.fraction_clusters(W, torch.ones(W.shape[1], dtype=torch.bool), 0.005)
    assert clusters.counts[name] == W.shape[1] and clusters.clustered_share == 1.0 and clusters.top() == (pytest.approx(value), W.shape[1])


def test_antipodal_partners_need_cos_near_minus_one() -> None:
    everything = lambda W: torch.ones(W.shape[1], dtype=torch.bool)  # noqa: E731
    assert fg.antipodal_partners(tetrahedron(), everything(tetrahedron())).tolist() == [0] * 4  # cos −1/3
    assert fg.antipodal_partners(regular_polygon(5), everything(regular_polygon(5))).tolist() == [0] * 5  # cos 144° = −0.81
    assert fg.antipodal_partners(cube(), everything(cube())).tolist() == [1] * 8  # each vertex and its opposite
    assert fg.antipodal_pair_count(cube(), everything(cube())) == 4
    assert fg.antipodal_pair_count(cube(), everything(cube()), partners=fg.antipodal_partners(cube(), everything(cube()))) == 4
    W = regular_polygon(6)  # a hexagon: three antipodal pairs, D = 1/3
    assert fg.antipodal_partners(W, everything(W)).tolist() == [1] * 6
    assert fg.antipodal_partners(W, torch.tensor([True, True, True, False, True, True])).tolist() == [0, 1, 1, 0, 1, 1]  # vertex 0 loses its opposite, 3


def test_mixed_planted_instance_counts_each_geometry() -> None:
    """A tetrahedron, a pentagon, an antipodal pair and two orthogonal features on orthogonal coordinates
    (3 + 2 + 1 + 2 = 8 of 20 dimensions), 30 features with 17 zero ones."""
    W = block_diagonal(20, 30, tetrahedron(), regular_polygon(5), torch.tensor([[1.0, -1.0]], dtype=torch.float64),
                       torch.eye(2, dtype=torch.float64))
    g = _geometry(W, 0.5, 0.15, -0.99, 0.03)
    assert (g["at_3_4"], g["at_2_5"], g["at_1_2"], g["at_1"], g["clustered"]) == (4, 5, 2, 2, 13)
    assert (g["represented"], g["paired"], g["antipodal_pairs"], g["dropped"]) == (13, 2, 1, 17)
    assert g["top_fraction"] == 0.4 and g["top_share"] == pytest.approx(5 / 13)
    # D sums to the dimensions used: 4·3/4 + 5·2/5 + 2·1/2 + 2·1 = 8
    assert 4 * 0.75 + 5 * 0.4 + 2 * 0.5 + 2 == pytest.approx(8.0)


def test_nearest_fraction_takes_the_nearest_within_tolerance() -> None:
    dims = torch.tensor([0.39, 0.38, 0.345, 0.58, 0.97, 0.0])
    names = [fg.FRACTIONS[k][0] if k >= 0 else None for k in fg.nearest_fraction(dims, 0.03).tolist()]
    assert names == ["2_5", "3_8", "1_3", None, "1", None]


def test_partners_and_clusters_match_dense_reference() -> None:
    """Random features in 20 dimensions with planted noisy antipodal pairs, against the loop references."""
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(20, 60, generator=generator, dtype=torch.float64) * 0.3
    for k in range(0, 20, 2):
        W[:, k + 1] = -W[:, k] + 0.001 * torch.randn(20, generator=generator, dtype=torch.float64)
    W[:, 50:] *= 0.05
    represented = W.norm(dim=0) > 0.5
    for cos_below in (-0.99, -0.5, -0.1):
        assert fg.antipodal_partners(W, represented, cos_below).tolist() == dense_partners(W, represented, cos_below)
    for tolerance in (0.01, 0.03, 0.06):
        assert fg.fraction_clusters(W, represented, tolerance).counts == dense_clusters(W, represented, tolerance)


def test_longest_run() -> None:
    assert fg.longest_run([]) == (0, -1)
    assert fg.longest_run([False, True, True, False, True, True, True]) == (3, 4)
    assert fg.longest_run([True, True, False, True, True]) == (2, 0)


def _handle(W: torch.Tensor, p: list[float]) -> ToyModelHandle:
    n_inst, d_hidden, n_features = W.shape
    identity = ModelIdentity(name="planted-geometry", source="toy", weights_sha256=None, config_sha256=None)
    return ToyModelHandle(W, torch.zeros(n_inst, n_features), identity, ToyShape(n_inst, n_features, d_hidden, "relu_output"),
                          feature_probability=torch.tensor(p)[:, None].expand(n_inst, n_features).clone(),
                          importance=torch.ones(n_features))


def test_metrics_across_instances() -> None:
    """Instances: orthogonal (D = 1, ‖W‖_F² = 20), two with 20 antipodal pairs, and a dense untrained-like one."""
    orthogonal = block_diagonal(20, 200, torch.eye(20, dtype=torch.float64))
    noise = torch.randn(20, 200, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.016
    W = torch.stack([orthogonal, antipodal_pairs_20d(), antipodal_pairs_20d(), noise]).float()
    ctx = MetricContext(_handle(W, [1.0, 0.5, 0.3, 0.1]), None, Session())
    curve = geometry_nd_by_instance(ctx).value
    assert [point["dims_per_feature"] for point in curve][:3] == pytest.approx([1.0, 0.5, 0.5])
    assert [point["at_1"] for point in curve] == [20, 0, 0, 0] and curve[3]["represented"] == 0
    assert plateau(ctx, field="dims_per_feature", target=0.5, tolerance=0.01).value == 2.0
    assert plateau(ctx, field="dims_per_feature", target=1.0, tolerance=0.01).value == 1.0
    assert plateau(ctx, field="at_1", target=7, tolerance=0.5).value == 0.0
    assert share_of_instances(ctx, field="paired_share", at_least=1.0).value == 0.5
    assert share_of_instances(ctx, field="paired_share", at_least=1.0, p_min=0.2, p_max=0.6).value == 1.0
    assert share_of_instances(ctx, field="frobenius_gap", at_most=0.15, p_min=0.2).value == 1.0
    with pytest.raises(ValueError, match="no instance"):
        share_of_instances(ctx, field="clustered", at_least=1, p_min=0.6, p_max=0.9)
    with pytest.raises(ValueError, match="at_least, at_most"):
        share_of_instances(ctx, field="clustered")
