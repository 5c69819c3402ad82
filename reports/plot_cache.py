"""Drawn plots kept on disk, so a report whose claims did not change is written without matplotlib.

A plot is a function of the claim entry's fields it reads alone (:class:`reports.plots.PlotJob`:
its ``ident`` hashes the plot's name and those fields), so its SVG is stored under the sha256 of
that ident, the code that draws it (``salt``) and the matplotlib version. A missing, unreadable or
cut-short file is drawn again; writes are atomic.
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

from harness.core.atomic_write import write_atomic


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

    def key(self, plot: str, ident: str) -> str:
        """The file name's sha256: the job's ``ident`` (a hash of the plot's name and the entry
        fields it reads), the drawing code (``salt``) and the matplotlib version."""
        text = json.dumps({"plot": plot, "ident": ident, "salt": self.salt, "matplotlib": _matplotlib_version()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def path(self, plot: str, ident: str) -> Path:
        digest = self.key(plot, ident)
        return Path(self.folder) / digest[:2] / f"{digest}.svg"

    def read(self, plot: str, ident: str) -> str | None:
        """The stored SVG (``None`` when missing, unreadable or not a whole SVG)."""
        try:
            text = self.path(plot, ident).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        if not (text.startswith("<svg") and text.rstrip().endswith("</svg>")):
            return None
        self.hits += 1
        return text

    def store(self, plot: str, ident: str, svg: str | None) -> None:
        """Keep a drawn SVG (counted as drawn; failure texts and ``None`` are not kept)."""
        self.drawn += 1
        if svg and svg.startswith("<svg"):
            try:
                write_atomic(self.path(plot, ident), svg)
            except OSError:  # an unwritable folder costs only time
                pass
