"""Plots for the HTML report, drawn with matplotlib (Agg) into inline SVG strings.

Each function takes one claim entry of the results record and returns an SVG string, or
``None`` when that kind of plot does not apply. matplotlib is imported lazily: the Markdown
report and the CLI never pay for it.
"""

from __future__ import annotations

import io
import re
from typing import Any, Callable

from harness.heads import sort_heads
from reports.curves import curve_points, stopped_early

HEAD_KEY = re.compile(r"^\d+\.\d+$")


def _figure(width: float = 6.0, height: float = 2.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 8})
    return plt.subplots(figsize=(width, height), dpi=100)


def _svg(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


MAX_BARS = 48
"""Above this many heads a per-head table is drawn as a layer x head grid instead of bars."""


def head_bars(entry: dict[str, Any]) -> str | None:
    """Per-head scores (bars, or a layer x head grid for large models), the detection threshold,
    detected or selected heads highlighted."""
    scores = _head_table(entry)
    if not scores:
        return None
    details = entry.get("details") or {}
    value = entry.get("value")
    marked = set(value) if isinstance(value, list) else {str(entry.get("select"))}
    if len(scores) > MAX_BARS:
        return _head_grid(entry, scores, marked)
    figure, axes = _figure(max(4.0, 0.22 * len(scores) + 1.5))
    names = list(scores)
    colors = ["#d62728" if name in marked else "#1f77b4" for name in names]
    axes.bar(range(len(names)), [scores[n] for n in names], color=colors)
    axes.set_xticks(range(len(names)), names, rotation=90)
    if isinstance(details.get("threshold"), (int, float)):
        axes.axhline(details["threshold"], color="black", linestyle="--", linewidth=1, label=f"threshold {details['threshold']}")
        axes.legend(loc="upper right")
    axes.set_ylabel(str(details.get("pattern", entry["metric"])))
    axes.set_title(f"{entry['metric']} per head")
    return _svg(figure)


def _head_table(entry: dict[str, Any]) -> dict[str, float] | None:
    """The per-head numbers behind ``entry``: ``details.scores``, its value, or the table its
    ``select`` picked from (``details.selected_from``)."""
    details = entry.get("details") or {}
    for table in (details.get("scores"), entry.get("value"), details.get("selected_from")):
        if (isinstance(table, dict) and table and all(HEAD_KEY.match(str(k)) for k in table)
                and all(isinstance(v, (int, float)) for v in table.values())):
            return table
    return None


def _head_grid(entry: dict[str, Any], scores: dict[str, float], marked: set[str]) -> str:
    """A layer x head heatmap of ``scores``, ``marked`` heads boxed."""
    import numpy as np

    heads = [tuple(int(x) for x in name.split(".")) for name in scores]
    n_layers, n_heads = max(h[0] for h in heads) + 1, max(h[1] for h in heads) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    for (layer, head), number in zip(heads, scores.values()):
        grid[layer, head] = number
    figure, axes = _figure(max(3.5, 0.35 * n_heads + 2.0), max(2.6, 0.18 * n_layers + 1.0))
    image = axes.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    for name in marked & set(scores):
        layer, head = (int(x) for x in name.split("."))
        axes.add_patch(_box(head, layer))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    details = entry.get("details") or {}
    bar = figure.colorbar(image, ax=axes, label=str(details.get("pattern", entry["metric"])))
    if isinstance(details.get("threshold"), (int, float)):
        bar.ax.axhline(details["threshold"], color="red", linewidth=1.5)  # the detection threshold
    axes.set_title(f"{entry['metric']} per head" + (" (boxed: detected or selected)" if marked & set(scores) else ""))
    return _svg(figure)


def _box(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)


def attention_patterns(entry: dict[str, Any]) -> str | None:
    """The first sequence's attention pattern of each flagged head (query rows, key columns)."""
    patterns = (entry.get("details") or {}).get("example_patterns")
    if not patterns:
        return None
    heads = list(patterns)[:6]
    figure, axes = _figure(2.4 * len(heads) + 0.4, 2.6)
    axes_list = [axes] if len(heads) == 1 else None
    if axes_list is None:
        figure.clf()
        axes_list = [figure.add_subplot(1, len(heads), i + 1) for i in range(len(heads))]
    for axis, head in zip(axes_list, heads):
        axis.imshow(patterns[head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"head {head}")
        axis.set_xlabel("key")
        axis.set_ylabel("query")
    return _svg(figure)


def composition_heatmap(entry: dict[str, Any]) -> str | None:
    """Composition scores "A->B" as a heatmap (rows: earlier head, columns: later head)."""
    value = entry.get("value")
    if not entry["metric"].startswith("composition.") or not isinstance(value, dict):
        return None
    pairs = [key.split("->") for key in value if "->" in key]
    if not pairs:
        return None
    rows = sort_heads(list({a for a, _ in pairs}))
    cols = sort_heads(list({b for _, b in pairs}))
    grid = [[value.get(f"{a}->{b}", float("nan")) for b in cols] for a in rows]
    figure, axes = _figure(0.35 * len(cols) + 2.5, 0.3 * len(rows) + 1.5)
    image = axes.imshow(grid, cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(len(cols)), cols, rotation=90)
    axes.set_yticks(range(len(rows)), rows)
    figure.colorbar(image, ax=axes)
    baseline = (entry.get("details") or {}).get("baseline")
    axes.set_title(f"{entry['metric']}" + (f" (baseline {baseline:.4f})" if isinstance(baseline, (int, float)) else ""))
    return _svg(figure)


def rank_curve(entry: dict[str, Any]) -> str | None:
    """Top-1/top-5 accuracy against rank; the model's heads as points; the selected point ringed."""
    value = curve_points(entry)
    if value is None:
        return None
    figure, axes = _figure(7.0, 3.0)
    trained = sorted((p for p in value if p.get("kind", "trained") == "trained"), key=lambda p: p["rank"])
    for key, style in (("top1", "-o"), ("top5", "--s")):
        points = [(p["rank"], p[key]) for p in trained if key in p]
        if points:
            axes.plot(*zip(*points), style, label=f"trained rank-r, {key}")
    unconverged = [p for p in trained if stopped_early(entry, p)]
    if unconverged:
        axes.scatter([p["rank"] for p in unconverged], [p.get("top1") for p in unconverged], s=110,
                     facecolors="none", edgecolors="0.4", linestyles="dotted", zorder=3,
                     label="stopped before converging (lower bound)")
    _head_points(axes, [p for p in value if p.get("kind") == "head"])
    selected = _selected_point(entry, value)
    if selected is not None:
        field = str(entry.get("select", "")).rpartition("/")[2]
        y = selected.get(field if field in ("top1", "top5") else "top1")
        axes.scatter([selected["rank"]], [y], s=220, facecolors="none", edgecolors="red", zorder=4,
                     label=f"selected: {entry.get('select')}")
    ranks = [p["rank"] for p in value if p.get("rank")]
    axes.set_xscale("log", base=2)
    if ranks:
        axes.set_xlim(min(ranks) / 1.5, max(ranks) * 1.5)
    axes.set_xlabel("rank r")
    axes.set_ylabel("top-k copying accuracy (full vocabulary)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    axes.set_title("full OV circuit copying accuracy against rank")
    return _svg(figure)


def _head_points(axes: Any, heads: list[dict[str, Any]]) -> None:
    """The model's heads as stars (top-1), one label per spot for groups that land together."""
    if heads:
        axes.scatter([p["rank"] for p in heads], [p.get("top1") for p in heads], marker="*", s=90,
                     color="tab:green", zorder=3, label="heads (top-1): their OV circuit's rank")
    spots: dict[tuple[int, float], list[str]] = {}
    for point in heads:
        spot = (point["rank"], round(float(point.get("top1") or 0.0) * 20) / 20)  # 5-point bins
        spots.setdefault(spot, []).append(str(point.get("label") or "+".join(point.get("heads", []))))
    for index, ((rank, top1), labels) in enumerate(sorted(spots.items())):
        lift = 6 + 10 * (index % 2)  # neighbours alternate heights so their labels do not overlap
        axes.annotate(", ".join(labels), (rank, top1), xytext=(0, lift if top1 < 0.5 else -lift - 6),
                      textcoords="offset points", ha="center", fontsize=7)


def _selected_point(entry: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any] | None:
    label = str(entry.get("select") or "").partition("/")[0]
    return next((p for p in points if p.get("label") == label), None) if label else None


def position_curve(entry: dict[str, Any]) -> str | None:
    """A per-position curve from the details (e.g. log-prob of the correct token)."""
    details = entry.get("details") or {}
    curve = details.get("per_position") or details.get("curve")
    if not isinstance(curve, list) or not curve or not all(isinstance(x, (int, float)) for x in curve):
        return None
    figure, axes = _figure(5.0, 2.4)
    axes.plot(range(len(curve)), curve)
    axes.set_xlabel("position")
    axes.set_title(f"{entry['metric']} per position")
    return _svg(figure)


PLOTS: list[Callable[[dict[str, Any]], str | None]] = [head_bars, attention_patterns, composition_heatmap, rank_curve, position_curve]


def plots_for(entry: dict[str, Any]) -> list[str]:
    """Every plot that applies to a claim entry (failures in one plot never break the report)."""
    svgs = []
    for plot in PLOTS:
        try:
            svg = plot(entry)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            svg = f"<p class='plot-error'>plot {plot.__name__} failed: {exc}</p>"
        if svg:
            svgs.append(svg)
    return svgs
