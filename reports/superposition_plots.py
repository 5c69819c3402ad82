"""Plots of toy models of superposition (ARENA 1.5.4) for the HTML report.

- :func:`feature_directions`: one instance's feature directions W_i in its 2-D hidden space, as
  arrows from the origin coloured by importance (the course's ``plot_features_in_2d``); reads
  :class:`~harness.core.details.FeatureDirections`.
- :func:`gram_heatmap`: WᵀW of one instance (feature i against feature j, the course's heatmap), for any
  hidden size; reads :class:`~harness.core.details.FeatureDirections`.
- :func:`latent_feature_matches`: a toy SAE instance's cos(latent decoder row, true feature) grid, matches
  (cos > threshold) marked; reads :class:`~harness.core.details.LatentFeatureCosines`.
- :func:`dimensionality_scatter`: every feature's dimensionality D_i against 1/p, one column of
  points per instance, with the fractions the course marks (1, 3/4, 2/3, 1/2, 2/5, 3/8, 1/3, 3/20)
  as lines; reads :class:`~harness.core.details.DimensionalityPoints`.
"""

from __future__ import annotations

import math
from typing import Any

from reports.values import as_number, finite_numbers

FRACTIONS = (1.0, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8, 1 / 3, 3 / 20)


def feature_directions(entry: dict[str, Any]) -> str | None:
    """Arrows W_i of a 2-D instance (``None`` when the hidden space is not 2-D)."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    directions = details.get("directions")
    if not isinstance(directions, list) or not directions:
        return None
    vectors = [finite_numbers(v) for v in directions]
    if any(v is None or len(v) != 2 for v in vectors):
        return None
    importance = finite_numbers(details.get("importance")) or [1.0] * len(vectors)
    figure, axes = _figure(2.8, 2.8)
    import matplotlib.cm as cm

    top = max(importance) or 1.0
    reach = max(1.0, max(math.hypot(*v) for v in vectors)) * 1.15  # type: ignore[misc]
    for i, (x, y) in enumerate(vectors):  # type: ignore[misc]
        colour = cm.viridis(importance[i] / top)
        axes.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1.5})
        axes.text(x * 1.08, y * 1.08, f"f{i}", fontsize=7, ha="center", va="center")
    axes.set_xlim(-reach, reach)
    axes.set_ylim(-reach, reach)
    axes.set_aspect("equal")
    axes.axhline(0, color="0.85", lw=0.5)
    axes.axvline(0, color="0.85", lw=0.5)
    p = as_number(details.get("p"))
    axes.set_title(f"instance {details.get('instance')}" + (f", p = {p:.3g}" if p is not None else ""))
    return _svg(figure)


def dimensionality_scatter(entry: dict[str, Any]) -> str | None:
    """D_i of every feature against 1/p (log axis), one column per instance."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    p = finite_numbers(details.get("p"))
    dims = details.get("dims")
    if p is None or not isinstance(dims, list) or len(dims) != len(p) or any(v <= 0 for v in p):
        return None
    figure, axes = _figure(5.0, 2.8)
    for fraction in FRACTIONS:
        axes.axhline(fraction, color="0.85", lw=0.6, zorder=0)
        axes.text(1 / min(p) * 1.05, fraction, f"{fraction:.3g}", fontsize=6, va="center")
    for prob, values in zip(p, dims):
        numbers = finite_numbers(values)
        if numbers is None:
            continue
        axes.scatter([1 / prob] * len(numbers), numbers, s=8, alpha=0.6)
    axes.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # no mathtext: the report's labels are plain text
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("1 / feature probability")
    axes.set_ylabel("dimensionality D_i")
    axes.set_ylim(-0.05, 1.1)
    axes.set_title("feature dimensionality per instance")
    return _svg(figure)


MAX_GRAM_FEATURES = 200


def gram_heatmap(entry: dict[str, Any]) -> str | None:
    """WᵀW [n_features, n_features] of one instance on a red-white-blue scale clipped to [−1, 1]."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    directions = details.get("directions")
    if not isinstance(directions, list) or not directions or len(directions) > MAX_GRAM_FEATURES:
        return None
    vectors = [finite_numbers(v) for v in directions]
    if any(v is None for v in vectors) or len({len(v) for v in vectors}) != 1:  # type: ignore[arg-type]
        return None
    import numpy as np

    matrix = np.asarray(vectors, dtype=float)                    # [n_features, d_hidden]
    gram = matrix @ matrix.T
    figure, axes = _figure(2.8, 2.6)
    image = axes.imshow(gram, cmap="RdBu", vmin=-1.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xlabel("feature j")
    axes.set_ylabel("feature i")
    axes.set_title(f"WᵀW, instance {details.get('instance')}")
    return _svg(figure)


def latent_feature_matches(entry: dict[str, Any]) -> str | None:
    """cos(latent j's decoder row, feature i), latents as rows; cells above the threshold are outlined."""
    from reports.plots import _details, _figure, _svg

    details = _details(entry)
    rows = details.get("cosines")
    threshold = as_number(details.get("threshold"))
    if not isinstance(rows, list) or not rows or threshold is None:
        return None
    grid = [finite_numbers(row) for row in rows]
    if any(row is None for row in grid) or len({len(row) for row in grid}) != 1:  # type: ignore[arg-type]
        return None
    figure, axes = _figure(2.8, 2.6)
    image = axes.imshow(grid, cmap="RdBu", vmin=-1.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    from matplotlib.patches import Rectangle

    for j, row in enumerate(grid):
        for i, value in enumerate(row):  # type: ignore[arg-type]
            if value > threshold:
                axes.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5))
    axes.set_xlabel("true feature")
    axes.set_ylabel("SAE latent")
    axes.set_title(f"latent-feature cos, instance {details.get('instance')}")
    return _svg(figure)
