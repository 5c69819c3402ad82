"""Plots of the modular-addition model (ARENA 1.5.2 grokking) for the HTML report.

- :func:`frequency_energy_bars`: the embedding's energy per Fourier frequency k = 0..K (the
  course's "norms of the embedding in the Fourier basis"), key frequencies highlighted; reads
  :class:`~harness.core.details.FrequencyEnergy`.
- :func:`grokking_loss_curves`: train and test loss over a run's snapshots on a log scale, the
  grokking window shaded; reads :class:`~harness.core.details.LossCurves`.
- :func:`cluster_size_bars`: neurons per frequency cluster and the unexplained ones; reads
  :class:`~harness.core.details.ClusterSizes`.
- :func:`snapshot_series_curve`: a quantity over a run's snapshots on its scale, the epoch the
  claim reads its share of the rise at marked and the steepest interval shaded; reads
  :class:`~harness.core.details.SnapshotSeries`.
"""

from __future__ import annotations

import re
from typing import Any

from reports.values import finite_numbers

CLUSTER_KEY = re.compile(r"k=(\d+)")


def frequency_energy_bars(entry: dict[str, Any]) -> str | None:
    """Bars of the energy per frequency (k = 0 is the constant), the key frequencies in a second colour."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    energy = finite_numbers(details.get("energy"))
    if energy is None:
        return None
    keys = {k for k in details.get("key_frequencies") or [] if isinstance(k, int)}
    figure, axes = _figure(6.0, 2.4)
    colours = ["tab:orange" if k in keys else "tab:blue" for k in range(len(energy))]
    axes.bar(range(len(energy)), energy, color=colours, width=0.8)
    for k in sorted(keys):
        if 0 <= k < len(energy):
            axes.text(k, energy[k], str(k), ha="center", va="bottom", fontsize=6)
    axes.set_xlabel("frequency k (0: constant)")
    axes.set_ylabel("squared norm")
    axes.set_title(f"{entry.get('model', '?')}: embedding energy per Fourier frequency (key frequencies in orange)")
    return _svg(figure)


def grokking_loss_curves(entry: dict[str, Any]) -> str | None:
    """Train and test loss (log scale) at each snapshot; the window [start, end] shaded."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    epochs = finite_numbers(details.get("epochs"))
    train, test = finite_numbers(details.get("train_loss")), finite_numbers(details.get("test_loss"))
    if epochs is None or train is None or test is None or not len(epochs) == len(train) == len(test):
        return None
    if any(v <= 0 for v in train + test):
        return None  # a log axis cannot draw a zero loss
    figure, axes = _figure(6.0, 2.8)
    axes.plot(epochs, train, marker=".", label="train")
    axes.plot(epochs, test, marker=".", label="test")
    window = finite_numbers(details.get("window"))
    if window is not None and len(window) == 2 and window[0] <= window[1]:
        axes.axvspan(window[0], window[1], color="0.85", zorder=0, label="grokking window")
    axes.set_yscale("log")
    axes.set_xlabel("epoch (snapshots)")
    axes.set_ylabel("float64 cross-entropy")
    axes.legend(loc="lower left", fontsize=7)
    axes.set_title(f"{entry.get('model', '?')}: loss over training")
    return _svg(figure)


def cluster_size_bars(entry: dict[str, Any]) -> str | None:
    """Bars of the neurons in each frequency cluster, then the unexplained ones."""
    from reports.plots import _details, _figure, _svg

    sizes = _details(entry).get("sizes")
    if not isinstance(sizes, dict) or not sizes:
        return None
    clusters = sorted((int(m.group(1)), key) for key in sizes if (m := CLUSTER_KEY.fullmatch(str(key))))
    labels = [key for _, key in clusters] + (["unexplained"] if "unexplained" in sizes else [])
    counts = finite_numbers([sizes[key] for key in labels])
    if counts is None:
        return None
    figure, axes = _figure(max(3.0, 0.5 * len(labels) + 1.5), 2.4)
    axes.bar(range(len(labels)), counts, color=["tab:blue"] * len(clusters) + ["0.6"] * (len(labels) - len(clusters)))
    axes.set_xticks(range(len(labels)), labels)
    for i, n in enumerate(counts):
        axes.text(i, n, f"{n:g}", ha="center", va="bottom", fontsize=7)
    axes.set_ylabel("neurons")
    axes.set_title(f"{entry.get('model', '?')}: neuron clusters by frequency")
    return _svg(figure)


def snapshot_series_curve(entry: dict[str, Any]) -> str | None:
    """The quantity at each snapshot (log or linear axis), ``until_epoch`` dashed, the steepest interval shaded."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    epochs, values = finite_numbers(details.get("epochs")), finite_numbers(details.get("values"))
    if epochs is None or values is None or len(epochs) != len(values) or len(epochs) < 2:
        return None
    log = details.get("scale") == "log"
    if log and any(v <= 0 for v in values):
        return None  # a log axis cannot draw a zero or negative value
    figure, axes = _figure(6.0, 2.8)
    axes.plot(epochs, values, marker=".", label=str(details.get("quantity", "quantity")))
    peak = finite_numbers(details.get("peak_interval"))
    if peak is not None and len(peak) == 2 and peak[0] < peak[1]:
        axes.axvspan(peak[0], peak[1], color="0.85", zorder=0, label="steepest interval")
    until = finite_numbers([details.get("until_epoch")])
    if until is not None:
        axes.axvline(until[0], color="0.4", linestyle="--", linewidth=0.8, label="until_epoch")
    if log:
        axes.set_yscale("log")
    axes.set_xlabel("epoch (snapshots)")
    axes.set_ylabel(str(details.get("quantity", "")))
    axes.legend(loc="upper left", fontsize=7)
    axes.set_title(f"{entry.get('model', '?')}: {details.get('quantity', '?')} over training")
    return _svg(figure)
