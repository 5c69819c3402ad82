"""The grokking plots draw from their typed details and decline what they cannot draw."""

from __future__ import annotations

from reports.modular_plots import cluster_size_bars, frequency_energy_bars, grokking_loss_curves
from reports.plots import PLOTS, plots_for


def test_frequency_energy_bars() -> None:
    entry = {"metric": "modular.embed_fourier_energy", "model": "m", "details_kinds": ["FrequencyEnergy"],
             "details": {"energy": [0.1] + [0.01] * 55 + [3.0], "key_frequencies": [56]}}
    assert frequency_energy_bars(entry).startswith("<svg")
    assert len(plots_for(entry)) == 1 and PLOTS["frequency_energy_bars"].applies_to(entry)
    assert frequency_energy_bars({"details": {"energy": [1.0, "NaN"], "key_frequencies": []}}) is None
    assert frequency_energy_bars({"details": {"energy": []}}) is None


def test_grokking_loss_curves_shade_the_window_and_decline_bad_data() -> None:
    details = {"epochs": [0, 1000, 5000, 6000], "train_loss": [4.7, 1e-6, 1e-7, 1e-7], "test_loss": [4.7, 29.0, 1e-2, 1e-7],
               "window": [5000, 6000]}
    entry = {"metric": "modular.grokking_window", "model": "m", "details_kinds": ["LossCurves"], "details": details}
    svg = grokking_loss_curves(entry)
    assert svg.startswith("<svg") and "grokking window" in svg
    assert len(plots_for(entry)) == 1
    assert grokking_loss_curves({"details": dict(details, test_loss=[1.0, 2.0])}) is None  # lengths differ
    assert grokking_loss_curves({"details": dict(details, train_loss=[4.7, 0.0, 1e-7, 1e-7])}) is None  # no log of 0


def test_cluster_size_bars_order_clusters_by_frequency() -> None:
    entry = {"metric": "modular.neuron_clusters", "model": "m", "details_kinds": ["ClusterSizes"],
             "details": {"sizes": {"k=26": 74.0, "k=9": 65.0, "unexplained": 266.0}}}
    svg = cluster_size_bars(entry)
    assert svg.startswith("<svg") and svg.index("k=9") < svg.index("k=26") < svg.index("unexplained")
    assert cluster_size_bars({"details": {"sizes": {}}}) is None
    assert not PLOTS["cluster_size_bars"].applies_to({"details_kinds": ["FrequencyEnergy"]})


def test_snapshot_series_curve_marks_the_reading_and_declines_bad_data() -> None:
    from reports.modular_plots import snapshot_series_curve

    details = {"epochs": [1000, 3000, 14400, 17600], "values": [0.009, 0.016, 0.58, 0.98], "quantity": "logit_trig_ratio",
               "scale": "log", "until_epoch": 14400, "peak_interval": [3000, 14400]}
    entry = {"metric": "modular.series_rise", "model": "m", "details_kinds": ["SnapshotSeries"], "details": details}
    svg = snapshot_series_curve(entry)
    assert svg.startswith("<svg") and "steepest interval" in svg and "until_epoch" in svg
    assert len(plots_for(entry)) == 1
    assert snapshot_series_curve({"details": dict(details, values=[0.0, 0.1, 0.5, 0.9])}) is None  # no log of 0
    assert snapshot_series_curve({"details": dict(details, values=[0.0, 0.1, 0.5, 0.9], scale="linear")}).startswith("<svg")
    assert snapshot_series_curve({"details": dict(details, values=[0.1])}) is None  # lengths differ
