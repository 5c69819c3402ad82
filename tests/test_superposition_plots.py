"""The toy-model plots draw from their typed details and decline what they cannot draw."""

from __future__ import annotations

from pathlib import Path

from reports.plot_cache import PlotCache
from reports.plots import PLOTS, draw_plots, plots_for
from reports.superposition_plots import dimensionality_scatter, feature_directions, gram_heatmap, latent_feature_matches

KINDS = ["DimensionalityPoints"]


def test_feature_directions_draws_2d_and_declines_3d() -> None:
    entry = {"metric": "superposition.feature_norms", "details_kinds": ["FeatureDirections"],
             "details": {"instance": 7, "p": 0.02, "directions": [[1.0, 0.0], [0.3, 0.95], [-0.8, 0.6]], "importance": [1, 0.9, 0.81]}}
    assert feature_directions(entry).startswith("<svg")
    assert len(plots_for(entry)) == 2  # the 2-D arrows and the WᵀW heatmap
    entry["details"]["directions"] = [[1.0, 0.0, 0.0]]
    assert feature_directions(entry) is None
    entry["details"]["directions"] = [[1.0, "NaN"]]
    assert feature_directions(entry) is None


def test_dimensionality_scatter() -> None:
    entry = {"metric": "superposition.by_instance", "details_kinds": ["DimensionalityPoints"],
             "details": {"p": [1.0, 0.1], "dims": [[1.0, 1.0, 0.0], [0.4, 0.4, 0.4]]}}
    assert dimensionality_scatter(entry).startswith("<svg")
    assert dimensionality_scatter({"details": {"p": [1.0], "dims": []}}) is None
    assert PLOTS["dimensionality_scatter"].applies_to(entry) and not PLOTS["feature_directions"].applies_to(entry)


def test_gram_heatmap_any_hidden_size() -> None:
    entry = {"metric": "superposition.feature_norms", "details_kinds": ["FeatureDirections"],
             "details": {"instance": 0, "directions": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]], "importance": [1, 1, 1]}}
    assert gram_heatmap(entry).startswith("<svg")
    assert feature_directions(entry) is None  # 3-D: no arrows, but the heatmap
    entry["details"]["directions"] = [[1.0, 0.0], [1.0]]
    assert gram_heatmap(entry) is None


def test_latent_feature_matches() -> None:
    entry = {"metric": "toy_sae.summary", "details_kinds": ["LatentFeatureCosines"],
             "details": {"instance": 3, "threshold": 0.95, "cosines": [[0.99, 0.1], [-0.2, 0.3]]}}
    assert latent_feature_matches(entry).startswith("<svg")
    assert PLOTS["latent_feature_matches"].applies_to(entry) and not PLOTS["gram_heatmap"].applies_to(entry)
    assert latent_feature_matches({"details": {"cosines": [[0.5]]}}) is None


def test_a_picture_shared_by_several_claims_is_drawn_once(tmp_path: Path) -> None:
    """Plots read the details alone: claims with equal details get the same SVG, drawn once; different
    details a new one."""
    details = {"p": [1.0, 0.2], "dims": [[1.0, 0.5], [0.5, 0.5]]}
    entries = [{"id": "a", "details_kinds": KINDS, "details": dict(details)},
               {"id": "b", "expect": {">=": 1}, "details_kinds": KINDS, "details": dict(details)},
               {"id": "c", "details_kinds": KINDS, "details": {**details, "p": [1.0, 0.1]}}]
    cache = PlotCache(tmp_path, "salt")
    (first,), (again,), (other,) = draw_plots(entries, cache, workers=1)
    assert first == again and first.startswith("<svg") and other != first
    assert cache.drawn == 2
