"""The Hypothesis profile chosen by ``HYPOTHESIS_PROFILE`` governs every property test.

The default profile replays fixed examples (a CI run cannot fail by chance); ``thorough`` draws
fresh ones. No test module may pin ``derandomize`` itself, or the fuzzing profile would replay too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.testing import fast_settings

TESTS = Path(__file__).resolve().parent
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "replay"
REPLAYS = PROFILE != "thorough"
PINNED = re.compile(r"\b(derandomize|database)\s*=")


def test_the_active_profile_is_the_one_asked_for() -> None:
    assert settings.default.derandomize is REPLAYS


def test_metric_settings_follow_the_profile() -> None:
    assert fast_settings(3).derandomize is REPLAYS and fast_settings(3).max_examples == 3


@fast_settings(5)
@given(st.integers())
def test_a_property_test_runs_under_the_profile(value: int) -> None:
    assert isinstance(value, int)
    assert settings().derandomize is REPLAYS


def drawn_examples() -> list[int]:
    """The examples one run of a property test under the active profile draws."""
    seen: list[int] = []

    @fast_settings(5)
    @given(st.integers(0, 10**9))
    def record(value: int) -> None:
        seen.append(value)

    record()
    return seen


def test_two_runs_replay_or_draw_fresh_examples_as_the_profile_says() -> None:
    assert (drawn_examples() == drawn_examples()) is REPLAYS


def test_no_test_module_pins_replay() -> None:
    """Only conftest.py (the profiles) may set ``derandomize`` or ``database``."""
    pinned = [
        f"{path.name}:{number}" for path in sorted(TESTS.glob("test_*.py")) if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text().splitlines(), 1) if PINNED.search(line)
    ]
    assert not pinned, f"settings pinned outside tests/conftest.py: {pinned}"
