"""The cyclic garbage collector's schedule in the suite's own processes (the ``claims`` command
and the test workers): its youngest generation collected less often than CPython's default.

Importing torch and TransformerLens (with transformers, datasets and pandas) and building models
allocates millions of long-lived objects; at CPython's threshold (700 allocations less
deallocations) that starts thousands of young and a few dozen full collections, each full one
walking every object alive. Measured here: ``claims run`` of one small file collected for 1.5 s
of its ~7 s CPU, 0.5 s at :data:`YOUNG_GC_THRESHOLD` (SmolLM2's two claim files: peak memory
3.42 -> 3.47 GB); a test worker of the README's test command ~2.7 s, 1.2 s (peak memory the same).
"""

from __future__ import annotations

import gc

YOUNG_GC_THRESHOLD = 20_000
"""Allocations (less deallocations) between two collections of the youngest generation (CPython's
default: 700); the older generations keep their thresholds."""


def collect_young_less_often() -> None:
    """Set the youngest generation's threshold to :data:`YOUNG_GC_THRESHOLD` (process-wide)."""
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
