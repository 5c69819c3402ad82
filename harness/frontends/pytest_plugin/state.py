"""What the plugin's hooks share during one pytest run, kept in ``config.stash``."""

from __future__ import annotations

import pytest

from harness.runner import ClaimResult
from harness.session import Session

SESSION_KEY = pytest.StashKey[Session]()
"""The run's caches: models, inputs, forward passes, measurements."""
RESULTS_KEY = pytest.StashKey[list[ClaimResult]]()
"""Every claim's result, in the order they ran."""
IDS_KEY = pytest.StashKey[dict[str, str]]()
"""Claim id -> the claim file that first used it (duplicate ids are collection errors)."""
FILES_KEY = pytest.StashKey[dict[str, str]]()
"""Collected claim file -> its sha256."""
BASELINE_KEY = pytest.StashKey[dict]()
"""The ``--claims-baseline`` file, read and checked."""
MISSING_KEY = pytest.StashKey[list[str]]()
"""Baseline claims that no longer exist in their claim file."""
