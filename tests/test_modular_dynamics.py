"""Landmarks of a grokking run from its snapshots' losses (harness.metrics.modular_dynamics.window_epochs)."""

from __future__ import annotations

from harness.metrics.modular_dynamics import window_epochs

# (train, test) loss per snapshot epoch: memorised by 300, test peaks at 1000, crashes 5000-7000
RUN = {0: (4.7, 4.7), 100: (3.1, 7.0), 300: (9e-3, 19.7), 1000: (5e-6, 29.0), 3000: (3e-7, 20.0),
       5000: (2e-7, 2.0), 6000: (1e-7, 1e-3), 7000: (1e-7, 5e-7)}


def test_window_of_a_planted_run() -> None:
    marks = window_epochs(RUN, memorised_below=1e-2, start_drop=1.0, end_below=1e-5)
    assert marks == {"memorised": 300, "peak": 1000, "start": 5000, "end": 7000}


def test_landmarks_that_never_come_lie_past_the_last_snapshot() -> None:
    stalled = {e: v for e, v in RUN.items() if e <= 3000}
    marks = window_epochs(stalled, memorised_below=1e-2, start_drop=1.0, end_below=1e-5)
    assert marks["start"] == 5000 and marks["end"] == 5000  # 3000 + the last spacing: not within the run
    assert window_epochs(RUN, memorised_below=1e-9, start_drop=1.0, end_below=1e-5)["memorised"] == 8000
