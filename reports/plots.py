"""Plots for the HTML report, drawn with matplotlib (Agg) into inline SVG strings.

Each function takes one claim entry of the results record and returns an SVG string, or
``None`` when that kind of plot does not apply: the entry lacks the data, or the data has not
the shape the plot draws (a pattern that is not a matrix, a table whose keys are not heads).
Numbers that cannot be drawn (NaN, infinity, written as strings in ``results.json``) are
left out of a plot, never drawn as if they were values. matplotlib is imported lazily: the Markdown
report and the CLI never pay for it.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
import warnings
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

from harness.core.details import (
    AttentionExamples, ClusterSizes, DimensionalityPoints, FeatureDirections, FrequencyEnergy, LatentFeatureCosines,
    LossCurves, NamedPositionAttention, PositionCurve, PositionGrid, SnapshotSeries,
)
from harness.core.heads import HEAD_PATTERN, Head, sort_heads
from harness.core.named_registry import NamedRegistry
from reports.plot_cache import PlotCache
from reports.plot_pool import map_in_processes
from reports.curves import curve_points, plottable_rank, point_bound, stopped_early
from reports.values import as_number
from reports.superposition_plots import dimensionality_scatter, feature_directions, gram_heatmap, latent_feature_matches
from reports.modular_plots import cluster_size_bars, frequency_energy_bars, grokking_loss_curves, snapshot_series_curve

HEAD_KEY = re.compile(HEAD_PATTERN)


STYLE = {"svg.fonttype": "none", "font.size": 8, "text.parse_math": False}  # "$" in a label is text
"""matplotlib settings of every plot, over its built-in defaults (``rcParamsDefault``; a matplotlibrc is not read)."""
SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
"""No ``<metadata>`` block: its date would make every drawing of a plot differ."""


class WouldDraw(Exception):
    """Raised by :func:`_figure` while probing (:func:`probe`): the plot applies and would now draw."""


_PROBING: ContextVar[bool] = ContextVar("plots_probing", default=False)


def _figure(width: float = 6.0, height: float = 2.6) -> tuple[Any, Any]:
    """A new figure and its axes (no pyplot: nothing global to close); every plot draws only after this call."""
    if _PROBING.get():
        raise WouldDraw
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    return figure, figure.add_subplot()


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    with warnings.catch_warnings():  # text the font cannot show is drawn as boxes; say nothing more
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        figure.tight_layout()
        figure.savefig(buffer, format="svg", metadata=SVG_METADATA)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


MAX_BARS = 48
"""Above this many heads a per-head table is drawn as a layer x head grid instead of bars."""
MAX_GRID_CELLS = 100_000
"""A per-head table spanning more layer x head cells than this is not drawn (no model is that large)."""
MAX_PATTERNS = 6
MAX_INCHES = 16.0
"""No figure side is longer than this, however many heads or points it draws."""


def _finite(value: Any) -> float:
    """``value`` as a float to draw: NaN for anything that is not a finite number."""
    number = as_number(value)
    return number if number is not None and math.isfinite(number) else math.nan


def _metric(entry: dict[str, Any]) -> str:
    return str(entry.get("metric") or "?")


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    details = entry.get("details")
    return details if isinstance(details, dict) else {}


def _threshold(details: dict[str, Any]) -> float | None:
    """The detection threshold of the details, when it is a finite number."""
    threshold = _finite(details.get("threshold"))
    return None if math.isnan(threshold) else threshold


def _marked_heads(entry: dict[str, Any]) -> set[str]:
    """The heads to highlight: the detected set (a list value), or the selected head."""
    value = entry.get("value")
    if isinstance(value, list):
        return {item for item in value if isinstance(item, str)}
    return {str(entry["select"])} if entry.get("select") else set()


def head_bars(entry: dict[str, Any]) -> str | None:
    """Per-head scores (bars, or a layer x head grid for large models), the detection threshold,
    detected or selected heads highlighted."""
    scores = _head_table(entry)
    if not scores:
        return None
    details = _details(entry)
    marked = _marked_heads(entry)
    if len(scores) > MAX_BARS:
        return _head_grid(entry, scores, marked)
    figure, axes = _figure(max(4.0, 0.22 * len(scores) + 1.5))
    names = list(scores)
    colors = ["#d62728" if name in marked else "#1f77b4" for name in names]
    axes.bar(range(len(names)), [scores[n] for n in names], color=colors)
    axes.set_xticks(range(len(names)), names, rotation=90)
    threshold = _threshold(details)
    if threshold is not None:
        axes.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {details['threshold']}")
        axes.legend(loc="upper right")
    axes.set_ylabel(str(details.get("pattern", _metric(entry))))
    axes.set_title(f"{_metric(entry)} per head")
    return _svg(figure)


def _head_table(entry: dict[str, Any]) -> dict[str, float] | None:
    """The per-head numbers behind ``entry``: ``details.scores``, its value, or the table its
    ``select`` picked from (``details.selected_from``); non-finite numbers as NaN. ``None`` when
    none of them is a table of numbers keyed by head names, or it would not fit a grid."""
    details = _details(entry)
    for table in (details.get("scores"), entry.get("value"), details.get("selected_from")):  # HeadScores first
        if (isinstance(table, dict) and table and all(HEAD_KEY.match(str(k)) for k in table)
                and all(as_number(v) is not None for v in table.values())):
            heads = [Head.parse(str(k)) for k in table]
            cells = (max(h.layer for h in heads) + 1) * (max(h.head for h in heads) + 1)
            return {str(k): _finite(v) for k, v in table.items()} if cells <= MAX_GRID_CELLS else None
    return None


def _head_grid(entry: dict[str, Any], scores: dict[str, float], marked: set[str]) -> str:
    """A layer x head heatmap of ``scores``, ``marked`` heads boxed."""
    import numpy as np

    heads = [Head.parse(name) for name in scores]
    n_layers, n_heads = max(h.layer for h in heads) + 1, max(h.head for h in heads) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    for head, number in zip(heads, scores.values()):
        grid[head.layer, head.head] = number
    figure, axes = _figure(min(MAX_INCHES, max(3.5, 0.35 * n_heads + 2.0)), min(MAX_INCHES, max(2.6, 0.18 * n_layers + 1.0)))
    image = axes.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    for name in sort_heads(list(marked & set(scores))):  # in head order: a set's order changes between processes
        head = Head.parse(name)
        axes.add_patch(_box(head.head, head.layer))
    axes.set_xlabel("head")
    axes.set_ylabel("layer")
    details = _details(entry)
    bar = figure.colorbar(image, ax=axes, label=str(details.get("pattern", _metric(entry))))
    threshold = _threshold(details)
    if threshold is not None:
        bar.ax.axhline(threshold, color="red", linewidth=1.5)  # the detection threshold
    axes.set_title(f"{_metric(entry)} per head" + (" (boxed: detected or selected)" if marked & set(scores) else ""))
    return _svg(figure)


def _box(x: int, y: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5)


def attention_patterns(entry: dict[str, Any]) -> str | None:
    """The first sequence's attention pattern of each flagged head (query rows, key columns);
    ``details.example_patterns`` maps a head to a matrix. Entries that are not matrices are left out."""
    patterns = _details(entry).get("example_patterns")
    if not isinstance(patterns, dict):
        return None
    matrices = [(str(head), matrix) for head, pattern in patterns.items() if (matrix := _matrix(pattern)) is not None]
    matrices = matrices[:MAX_PATTERNS]
    if not matrices:
        return None
    figure, _ = _figure(2.4 * len(matrices) + 0.4, 2.6)
    figure.clf()
    for index, (head, matrix) in enumerate(matrices):
        axis = figure.add_subplot(1, len(matrices), index + 1)
        axis.imshow(matrix, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(f"head {head}")
        axis.set_xlabel("key")
        axis.set_ylabel("query")
    return _svg(figure)


def _matrix(pattern: Any) -> Any | None:
    """``pattern`` as a 2-D float array (non-finite entries NaN), ``None`` when it is not a
    non-empty matrix of numbers (ragged rows, nested deeper, text, a scalar)."""
    import numpy as np

    if not isinstance(pattern, list) or not pattern or not all(isinstance(row, list) and row for row in pattern):
        return None
    if len({len(row) for row in pattern}) != 1 or not all(as_number(x) is not None for row in pattern for x in row):
        return None
    return np.array([[_finite(x) for x in row] for row in pattern], dtype=float)


def composition_heatmap(entry: dict[str, Any]) -> str | None:
    """Composition scores "A->B" as a heatmap (rows: earlier head, columns: later head): the
    claim's value, or the table its ``select`` picked from (``details.selected_from``)."""
    value = entry.get("value")
    if not isinstance(value, dict):
        value = _details(entry).get("selected_from")
    if not isinstance(value, dict):
        return None
    pairs = [pair for key, score in value.items() if (pair := _head_pair(key)) is not None and as_number(score) is not None]
    if not pairs:
        return None
    rows = sort_heads(list({a for a, _ in pairs}))
    cols = sort_heads(list({b for _, b in pairs}))
    grid = [[_finite(value.get(f"{a}->{b}")) for b in cols] for a in rows]
    figure, axes = _figure(min(MAX_INCHES, 0.35 * len(cols) + 2.5), min(MAX_INCHES, 0.3 * len(rows) + 1.5))
    image = axes.imshow(grid, cmap="viridis", interpolation="nearest")
    axes.set_xticks(range(len(cols)), cols, rotation=90)
    axes.set_yticks(range(len(rows)), rows)
    figure.colorbar(image, ax=axes)
    baseline = as_number(_details(entry).get("baseline"))
    axes.set_title(_metric(entry) + (f" (baseline {baseline:.4f})" if baseline is not None else ""))
    return _svg(figure)


def _head_pair(key: Any) -> tuple[str, str] | None:
    """``"0.7->1.4"`` as ``("0.7", "1.4")``; ``None`` for a key that is not two heads."""
    earlier, arrow, later = str(key).partition("->")
    if not arrow or not HEAD_KEY.match(earlier) or not HEAD_KEY.match(later):
        return None
    return earlier, later


def rank_curve(entry: dict[str, Any]) -> str | None:
    """Top-1/top-5 accuracy against rank; the model's heads as points; the selected point ringed;
    points that are bounds (their own ``bound``, or fits stopped on their budget) ringed dotted.
    Points without a positive finite rank cannot sit on the log axis and are left out."""
    curve = curve_points(entry)
    value = [p for p in curve or [] if plottable_rank(p) is not None]
    if not value:
        return None
    figure, axes = _figure(7.0, 3.0)
    trained = sorted((p for p in value if p.get("kind", "trained") == "trained"), key=plottable_rank)
    for key, style in (("top1", "-o"), ("top5", "--s")):
        points = [(plottable_rank(p), _finite(p[key])) for p in trained if key in p]
        if points:
            axes.plot(*zip(*points), style, label=f"trained rank-r, {key}")
    _bound_rings(axes, entry, value)
    _head_points(axes, [p for p in value if p.get("kind") == "head"])
    selected = _selected_point(entry, value)
    if selected is not None:
        field = str(entry.get("select", "")).rpartition("/")[2]
        y = _finite(selected.get(field if field in ("top1", "top5") else "top1"))
        axes.scatter([plottable_rank(selected)], [y], s=220, facecolors="none", edgecolors="red", zorder=4,
                     label=f"selected: {entry.get('select')}")
    ranks = [plottable_rank(p) for p in value]
    axes.set_xscale("log", base=2)
    axes.set_xlim(min(ranks) / 1.5, max(ranks) * 1.5)
    axes.set_xlabel("rank r")
    axes.set_ylabel("top-k copying accuracy (full vocabulary)")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
    axes.set_title("full OV circuit copying accuracy against rank")
    return _svg(figure)


def _bound_rings(axes: Any, entry: dict[str, Any], points: list[dict[str, Any]]) -> None:
    """Ring the points whose top-1 is a bound, one legend entry per kind of bound."""
    for bound in ("lower", "upper"):
        ringed = [p for p in points if point_bound(entry, p) == bound]
        if not ringed:
            continue
        label = f"{bound} bound"
        if all(stopped_early(entry, p) for p in ringed):
            label = f"stopped before converging ({label})"
        axes.scatter([plottable_rank(p) for p in ringed], [_finite(p.get("top1")) for p in ringed], s=110,
                     facecolors="none", edgecolors="0.4", linestyles="dotted" if bound == "lower" else "dashed",
                     zorder=3, label=label)


def _head_points(axes: Any, heads: list[dict[str, Any]]) -> None:
    """The model's heads as stars (top-1), one label per spot for groups that land together."""
    if heads:
        axes.scatter([plottable_rank(p) for p in heads], [_finite(p.get("top1")) for p in heads], marker="*", s=90,
                     color="tab:green", zorder=3, label="heads (top-1): their OV circuit's rank")
    spots: dict[tuple[float, float], list[str]] = {}
    for point in heads:
        top1 = _finite(point.get("top1"))
        if math.isnan(top1):
            continue  # nothing to label where no star is drawn
        spot = (plottable_rank(point), round(top1 * 20) / 20)  # 5-point bins
        spots.setdefault(spot, []).append(_point_label(point))
    for index, ((rank, top1), labels) in enumerate(sorted(spots.items())):
        lift = 6 + 10 * (index % 2)  # neighbours alternate heights so their labels do not overlap
        axes.annotate(", ".join(labels), (rank, top1), xytext=(0, lift if top1 < 0.5 else -lift - 6),
                      textcoords="offset points", ha="center", fontsize=7)


def _point_label(point: dict[str, Any]) -> str:
    """A head point's label, or its heads joined with ``+``."""
    heads = point.get("heads")
    return str(point.get("label") or ("+".join(map(str, heads)) if isinstance(heads, list) else "?"))


def _selected_point(entry: dict[str, Any], points: list[dict[str, Any]]) -> dict[str, Any] | None:
    label = str(entry.get("select") or "").partition("/")[0]
    return next((p for p in points if str(p.get("label")) == label), None) if label else None


def position_curve(entry: dict[str, Any]) -> str | None:
    """A per-position curve from the details (e.g. log-prob of the correct token); non-finite
    positions are gaps."""
    details = _details(entry)
    curve = details.get("curve")  # PositionCurve
    if not isinstance(curve, list) or not curve or not all(as_number(x) is not None for x in curve):
        return None
    figure, axes = _figure(5.0, 2.4)
    axes.plot(range(len(curve)), [_finite(x) for x in curve])
    axes.set_xlabel("position")
    axes.set_title(f"{_metric(entry)} per position")
    return _svg(figure)


def position_grid(entry: dict[str, Any]) -> str | None:
    """A layer x position heatmap (e.g. residual-stream patching), columns labelled with prompt 0's
    tokens when the details have them; the selected cell ``"L:P"`` boxed."""
    import numpy as np

    grid = _details(entry).get("grid")  # PositionGrid
    if not isinstance(grid, list) or not grid or not all(isinstance(row, list) and row for row in grid):
        return None
    if len({len(row) for row in grid}) != 1 or not all(as_number(x) is not None for row in grid for x in row):
        return None
    values = np.array([[_finite(x) for x in row] for row in grid])
    n_layers, n_pos = values.shape
    figure, axes = _figure(min(MAX_INCHES, max(4.0, 0.35 * n_pos + 2.0)), min(MAX_INCHES, max(2.6, 0.2 * n_layers + 1.2)))
    bound = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 1.0
    image = axes.imshow(values, aspect="auto", cmap="RdBu", vmin=-bound, vmax=bound, interpolation="nearest")
    tokens = _details(entry).get("tokens_prompt_0")
    labels = [f"{i} {t!s}" for i, t in enumerate(tokens)] if isinstance(tokens, list) and len(tokens) == n_pos else list(range(n_pos))
    axes.set_xticks(range(n_pos), labels, rotation=90)
    axes.set_xlabel("position")
    axes.set_ylabel("layer")
    select = str(entry.get("select") or "")
    if re.fullmatch(r"\d+:\d+", select):
        layer, pos = (int(x) for x in select.split(":"))
        if layer < n_layers and pos < n_pos:
            axes.add_patch(_box(pos, layer))
    figure.colorbar(image, ax=axes, label=_metric(entry))
    axes.set_title(f"{_metric(entry)} per (layer, position)")
    return _svg(figure)


def named_position_bars(entry: dict[str, Any]) -> str | None:
    """Grouped bars: each chosen head's mean attention from the query position to each named position."""
    details = _details(entry)
    by_position = details.get("by_position")  # NamedPositionAttention
    if not isinstance(by_position, dict) or not by_position:
        return None
    heads = [h for h, row in by_position.items() if isinstance(row, dict) and row]
    if not heads:
        return None
    names = list(by_position[heads[0]])
    figure, axes = _figure(max(4.0, 0.5 * len(heads) * len(names) / 3 + 2.0))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        axes.bar([j + i * width for j in range(len(heads))], [_finite(by_position[h].get(name)) for h in heads], width, label=name)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(heads))], heads)
    axes.set_ylabel(f"attention from {details.get('query', '?')}")
    axes.legend(loc="upper right", fontsize=7)
    axes.set_title(f"{_metric(entry)}: attention to each named position")
    return _svg(figure)


Plotter = Callable[[dict[str, Any]], "str | None"]
"""A plot: a claim entry of the record in, an SVG (or ``None`` where it does not apply) out."""

ENTRY_FIELDS = ("metric", "value", "select", "details")
"""The claim entry's fields most plots read (its value, the selected item, the details, the metric's name)."""


@dataclass(frozen=True)
class Plot:
    """A plot, the typed details kind it reads (:mod:`harness.core.details`; ``reads=None`` for a
    plot drawn from the claim's value alone) and the entry's ``fields`` it is given: it sees
    nothing else of the entry, so two claims whose fields agree share one drawing (and one plot
    cache entry) whatever their ids, statements and verdicts."""

    draw: Plotter
    reads: type | None = None
    fields: tuple[str, ...] = ENTRY_FIELDS

    @property
    def name(self) -> str:
        return self.draw.__name__

    def applies_to(self, entry: dict[str, Any]) -> bool:
        """Whether the entry's metric declared the details this plot reads (a record without
        ``details_kinds``, written before metrics declared them, is tried with every plot)."""
        kinds = entry.get("details_kinds")
        return self.reads is None or not isinstance(kinds, list) or self.reads.__name__ in kinds

    def view(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The part of ``entry`` this plot reads (its ``fields`` that the entry has)."""
        return {field: entry[field] for field in self.fields if field in entry}


DETAILS_ONLY = ("details",)
MODEL_AND_DETAILS = ("model", "details")

PLOTS: NamedRegistry[Plot] = NamedRegistry("plot", [
    (plot.name, plot) for plot in (
        Plot(head_bars),
        Plot(attention_patterns, reads=AttentionExamples, fields=DETAILS_ONLY),
        Plot(composition_heatmap),
        Plot(rank_curve),
        Plot(position_curve, reads=PositionCurve),
        # toy models of superposition (reports/superposition_plots.py)
        Plot(feature_directions, reads=FeatureDirections, fields=DETAILS_ONLY),
        Plot(dimensionality_scatter, reads=DimensionalityPoints, fields=DETAILS_ONLY),
        Plot(gram_heatmap, reads=FeatureDirections, fields=DETAILS_ONLY),
        Plot(latent_feature_matches, reads=LatentFeatureCosines, fields=DETAILS_ONLY),
        # indirect object identification (layer x position patching, attention to named positions)
        Plot(position_grid, reads=PositionGrid),
        Plot(named_position_bars, reads=NamedPositionAttention),
        # modular addition, grokking (reports/modular_plots.py)
        Plot(frequency_energy_bars, reads=FrequencyEnergy, fields=MODEL_AND_DETAILS),
        Plot(grokking_loss_curves, reads=LossCurves, fields=MODEL_AND_DETAILS),
        Plot(cluster_size_bars, reads=ClusterSizes, fields=MODEL_AND_DETAILS),
        Plot(snapshot_series_curve, reads=SnapshotSeries, fields=MODEL_AND_DETAILS),
    )
])
"""Every plot by name, in the order the HTML report shows them."""

PLOT_ERRORS = (ValueError, TypeError, KeyError, IndexError)
"""What a plot that meets data it did not expect raises: shown in the plot's place, not losing the report."""


def failed(plot: Plot, exc: Exception) -> str:
    """What the report shows in place of a plot that failed (the message escaped)."""
    return f"<p class='plot-error'>plot {plot.name} failed: {html.escape(str(exc))}</p>"


def probe(plot: Plot, view: dict[str, Any]) -> bool | str:
    """Whether ``plot`` would draw ``view`` (the plot's checks run, matplotlib is not touched: a plot
    draws only after :func:`_figure`); the failure text where its checks fail."""
    token = _PROBING.set(True)
    try:
        plot.draw(view)
    except WouldDraw:
        return True
    except PLOT_ERRORS as exc:
        return failed(plot, exc)
    finally:
        _PROBING.reset(token)
    return False


def draw_svg(plot: Plot, view: dict[str, Any], salt: str) -> str | None:
    """``plot`` of ``view`` as an SVG (the failure text where it fails), drawn with matplotlib's
    built-in defaults (``rcParamsDefault``: not this process's changes, nor a user's matplotlibrc,
    which the plot cache's key does not hold) and :data:`STYLE`; the SVG's internal ids are hashed
    with ``salt``, so the same view and salt give the same bytes in any process on any machine."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcParams.update({k: v for k, v in matplotlib.rcParamsDefault.items() if k != "backend"})
        matplotlib.rcParams.update({**STYLE, "svg.hashsalt": salt})
        try:
            return plot.draw(view)
        except PLOT_ERRORS as exc:
            return failed(plot, exc)


@dataclass(frozen=True)
class PlotJob:
    """One plot to draw: the plot's name, the entry fields it reads (:meth:`Plot.view`) and
    ``ident``, the sha256 of both (the SVG's id salt and the plot cache's key)."""

    plot: str
    view: dict[str, Any]
    ident: str

    @classmethod
    def of(cls, plot: Plot, entry: dict[str, Any]) -> "PlotJob":
        view = plot.view(entry)
        text = json.dumps({"plot": plot.name, "view": view}, sort_keys=True, default=repr)
        return cls(plot.name, view, hashlib.sha256(text.encode()).hexdigest())


def draw_job(job: PlotJob) -> str | None:
    """Draw one job (in a worker process or this one)."""
    return draw_svg(PLOTS[job.plot], job.view, job.ident)


DRAWING_MODULES = ("reports.plots", "matplotlib.figure", "matplotlib.backends.backend_svg", "matplotlib.backends.backend_agg")
"""What a drawing worker (a spawned interpreter) imports once, before its first job."""


def planned_plots(entry: dict[str, Any]) -> list[PlotJob | str]:
    """The plots of ``entry`` in report order: a job for each that would draw, the failure text
    for each whose checks failed (plots that do not apply left out)."""
    planned: list[PlotJob | str] = []
    for plot in PLOTS.values():
        if not plot.applies_to(entry):
            continue
        outcome = probe(plot, plot.view(entry))
        if outcome is True:
            planned.append(PlotJob.of(plot, entry))
        elif isinstance(outcome, str):
            planned.append(outcome)
    return planned


def draw_plots(entries: list[dict[str, Any]], cache: PlotCache | None = None, workers: int | None = None) -> list[list[str]]:
    """Every plot of each entry (as :func:`plots_for`), each distinct drawing once: read from
    ``cache`` where it holds it, else drawn in worker processes (``workers``; ``None``: one per CPU of
    this process's share, when there are enough plots to draw: :func:`reports.plot_pool.pool_size`).
    Each SVG depends on its job alone, so the report's bytes do not depend on who drew what."""
    planned = [planned_plots(entry) for entry in entries]
    jobs = {item.ident: item for items in planned for item in items if isinstance(item, PlotJob)}
    svgs: dict[str, str | None] = {}
    for ident, job in jobs.items():
        stored = cache.read(job.plot, ident) if cache is not None else None
        if stored is not None:
            svgs[ident] = stored
    missing = [job for ident, job in jobs.items() if ident not in svgs]
    drawn = map_in_processes(draw_job, missing, workers=workers, preload=DRAWING_MODULES)
    for job, svg in zip(missing, drawn):
        svgs[job.ident] = svg
        if cache is not None:
            cache.store(job.plot, job.ident, svg)
    return [[svg for item in items if (svg := svgs[item.ident] if isinstance(item, PlotJob) else item)] for items in planned]


def plots_for(entry: dict[str, Any], cache: PlotCache | None = None) -> list[str]:
    """Every plot that applies to a claim entry (read from ``cache`` where it holds them), drawn in
    this process (:func:`draw_plots` draws a whole record's, in parallel).

    The plots read what they need defensively (a plot that does not apply is ``None``); should
    one still fail, the failure is shown in its place (escaped) rather than losing the report.
    """
    return draw_plots([entry], cache, workers=1)[0]
