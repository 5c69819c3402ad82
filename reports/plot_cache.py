"""Drawn plots kept on disk, so a report whose claims did not change is written without matplotlib.

A plot is a function of its claim entry alone (:func:`reports.plots.plots_for`), so its SVG is
stored under the sha256 of the plot's name, the entry (less its wall time ``duration_s`` and its
``cached`` flag, which no plot reads), the code that draws it (``salt``: the suite's source hash)
and the matplotlib version. A missing or unreadable file is drawn again; writes are atomic.
Importing matplotlib and drawing a few hundred SVGs takes tens of seconds on a small CPU: the
largest part of a run whose measurements all come from the measurement cache.
"""

from __future__ import annotations

import hashlib
import json
import functools
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from harness.core.atomic_write import write_atomic

UNREAD = ("duration_s", "cached")
"""Entry fields no plot reads (they differ between a run and its cached rerun)."""


@functools.cache
def _matplotlib_version() -> str | None:
    """matplotlib's version, read once (reading a distribution's metadata parses its METADATA file)."""
    try:
        return metadata.version("matplotlib")
    except metadata.PackageNotFoundError:
        return None


@dataclass
class PlotCache:
    """SVGs under ``folder/<2 hex>/<sha256>.svg``; ``hits`` and ``drawn`` count this run's plots."""

    folder: Path
    salt: str
    hits: int = 0
    drawn: int = 0

    def key(self, plot: str, entry: dict[str, Any]) -> str:
        data = {k: v for k, v in entry.items() if k not in UNREAD}
        text = json.dumps({"plot": plot, "entry": data, "salt": self.salt, "matplotlib": _matplotlib_version()},
                          sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def svg(self, plot: str, entry: dict[str, Any], draw: Callable[[dict[str, Any]], "str | None"]) -> str | None:
        """The stored SVG of ``plot`` for ``entry``, else ``draw(entry)`` (stored when it is an SVG)."""
        digest = self.key(plot, entry)
        path = Path(self.folder) / digest[:2] / f"{digest}.svg"
        try:
            text = path.read_text(encoding="utf-8")
            if text.startswith("<svg"):
                self.hits += 1
                return text
        except (OSError, UnicodeDecodeError):
            pass
        svg = draw(entry)
        self.drawn += 1
        if svg and svg.startswith("<svg"):
            try:
                write_atomic(path, svg)
            except OSError:  # an unwritable folder costs only time
                pass
        return svg
