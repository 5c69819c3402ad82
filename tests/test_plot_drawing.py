"""Drawing a record's plots: the same bytes whoever draws them (this process, worker processes with another
string-hash seed, the plot cache) and the same plan in another interpreter with another seed, each
distinct drawing once, none half-written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from reports import plot_pool
from reports import plots as plots_module
from reports.plot_cache import PlotCache
from reports.plots import PLOTS, Plot, PlotJob, _figure, draw_plots, draw_svg, planned_plots, probe

ROOT = Path(__file__).resolve().parents[1]
GRID = {f"{layer}.{head}": (layer * 7 + head) % 10 / 10 for layer in range(8) for head in range(8)}  # 64 heads: a grid


def entries() -> list[dict[str, Any]]:
    """Claim entries that draw most kinds of plot, the large head grid with several boxed heads among them."""
    curve = [{"label": f"rank={r}", "rank": r, "top1": r / 64, "top5": min(1.0, r / 32)} for r in (1, 8, 64)]
    return [
        {"id": "grid", "metric": "attention.detect", "value": ["7.7", "0.1", "3.4", "5.2", "6.6"], "details": {"scores": GRID, "threshold": 0.5}},
        {"id": "bars", "metric": "attention.scores", "value": {"0.1": 0.2, "1.4": 0.7}, "details": {"threshold": 0.4},
         "details_kinds": ["HeadScores"]},
        {"id": "patterns", "metric": "attention.detect", "value": ["1.4"],
         "details": {"example_patterns": {"1.4": [[1.0, 0.0], [0.5, 0.5]]}, "scores": {"1.4": 0.9}}},
        {"id": "curve", "metric": "low_rank.rank_curve", "value": curve, "select": "rank=8/top1"},
        {"id": "composition", "metric": "composition.scores", "value": {"0.7->1.4": 0.3, "0.1->1.4": 0.1}},
        {"id": "dims", "details_kinds": ["DimensionalityPoints"], "details": {"p": [1.0, 0.1], "dims": [[1.0, 0.5], [0.4, 0.4]]}},
        {"id": "dims-again", "statement": "another claim on the same picture", "details_kinds": ["DimensionalityPoints"],
         "details": {"p": [1.0, 0.1], "dims": [[1.0, 0.5], [0.4, 0.4]]}},
        {"id": "energy", "model": "m", "details_kinds": ["FrequencyEnergy"], "details": {"energy": [1.0, 4.0, 0.5], "key_frequencies": [1]}},
    ]


def digest(plots: list[list[str]]) -> str:
    return hashlib.sha256(json.dumps(plots).encode()).hexdigest()


@pytest.fixture(scope="module")
def serial() -> list[list[str]]:
    """Every plot of :func:`entries`, drawn in this process (the tests below compare their drawings with it)."""
    return draw_plots(entries(), workers=1)


def other_hash_seed() -> str:
    """A string-hash seed other than this process's own when that is fixed (a set's order changes with it)."""
    return "54321" if os.environ.get("PYTHONHASHSEED") == "12345" else "12345"


def plan_only(job: PlotJob) -> str:
    """Stands in for :func:`reports.plots.draw_job`: the job's plot and id, nothing drawn."""
    return f"{job.plot}:{job.ident}"


PLAN_ELSEWHERE = """
import hashlib, json, sys
import reports.plots as plots
plots.draw_job = lambda job: f"{job.plot}:{job.ident}"  # as plan_only
print(hashlib.sha256(json.dumps(plots.draw_plots(json.load(sys.stdin), workers=1)).encode()).hexdigest())  # as digest
print("matplotlib" in sys.modules)
"""
"""What the other interpreter runs on the entries it reads from stdin: only the drawing module is
imported (not this test module, nor pytest: about half of that interpreter's CPU time)."""


def test_the_same_bytes_serially_in_workers_and_in_another_interpreter(serial: list[list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Serial drawing, drawing in spawned workers whose string-hash seed differs from this process's,
    and the whole plan (which plots, their views and ids, how the drawings are put back together)
    made in another interpreter with another seed all agree: the drawing of a job depends on the job
    alone, and the jobs on the entries alone. (The other interpreter only plans: drawing with another
    seed is what the workers do, so it need not import matplotlib.)"""
    assert [len(plots) for plots in serial] == [1, 1, 2, 1, 1, 1, 1, 1]
    assert all(svg.startswith("<svg") and "<metadata" not in svg for plots in serial for svg in plots)
    seed = other_hash_seed()
    with monkeypatch.context() as patch:
        patch.setenv("PYTHONHASHSEED", seed)  # the spawned workers inherit it
        with warnings.catch_warnings():  # workers that fail to start would leave the drawing to this process
            warnings.filterwarnings("error", message="worker processes failed")
            assert serial == draw_plots(entries(), workers=2)
    with monkeypatch.context() as patch:
        patch.setattr(plots_module, "draw_job", plan_only)
        plan = digest(draw_plots(entries(), workers=1))
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    elsewhere = subprocess.run([sys.executable, "-c", PLAN_ELSEWHERE], cwd=ROOT, env=env, input=json.dumps(entries()),
                               capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert elsewhere.stdout.split() == [plan, "False"]


def test_each_distinct_drawing_once_then_from_the_cache(tmp_path: Path, serial: list[list[str]]) -> None:
    cache = PlotCache(tmp_path, "salt")
    first = draw_plots(entries(), cache, workers=1)
    assert first == serial  # drawn again in the same process: the same bytes
    assert first[5] == first[6] and cache.drawn == 8 and cache.hits == 0  # two claims, one picture
    again = draw_plots(entries(), cache, workers=1)
    assert again == first and cache.drawn == 8 and cache.hits == 8
    path = next(tmp_path.rglob("*.svg"))
    path.write_text(path.read_text()[:200])  # cut short: drawn again, not shown
    assert draw_plots(entries(), cache, workers=1) == first and cache.drawn == 9


def test_a_plot_sees_only_its_fields() -> None:
    entry = entries()[5]
    job, = planned_plots(entry)
    other, = planned_plots({**entry, "id": "x", "verdict": "refuted", "duration_s": 3.0})
    assert isinstance(job, PlotJob) and job == other and job.view == {"details": entry["details"]}
    assert set(PLOTS["head_bars"].view({**entries()[0], "statement": "s"})) == {"metric", "value", "details"}


def checked_then_failing(entry: dict[str, Any]) -> str | None:
    """A plot whose checks fail on ``details.bad`` and whose drawing fails otherwise."""
    if entry.get("details", {}).get("bad"):
        raise ValueError("bad <details>")
    _figure()
    raise KeyError("drawing")


def test_a_failing_plot_is_shown_in_its_place_whether_its_checks_or_its_drawing_fail() -> None:
    plot = Plot(checked_then_failing, fields=("details",))
    assert probe(plot, {"details": {"bad": True}}) == "<p class='plot-error'>plot checked_then_failing failed: bad &lt;details&gt;</p>"
    assert probe(plot, {"details": {}}) is True
    assert draw_svg(plot, {"details": {}}, "salt") == "<p class='plot-error'>plot checked_then_failing failed: &#x27;drawing&#x27;</p>"


def test_workers_that_cannot_start_leave_the_work_here(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pool(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no semaphores here")

    monkeypatch.setattr(plot_pool, "ProcessPoolExecutor", no_pool)
    with pytest.warns(RuntimeWarning, match="no semaphores here"):
        assert plot_pool.map_in_processes(abs, [-1, -2, 3], workers=2) == [1, 2, 3]



def test_a_jobs_own_oserror_is_raised_not_taken_for_a_pool_failure(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "worker processes failed", no second run of the jobs here
        with pytest.raises(FileNotFoundError):
            plot_pool.map_in_processes(open, [str(tmp_path / "missing")] * 2, workers=2)  # a builtin: the workers import nothing to run it

def test_a_daemonic_process_runs_the_jobs_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    monkeypatch.setattr(plot_pool, "ProcessPoolExecutor", None)  # any attempt to start workers fails
    assert plot_pool.map_in_processes(abs, [-1, -2, 3], workers=2) == [1, 2, 3]


def test_pool_size() -> None:
    assert plot_pool.pool_size(200, cpus=1) == 1
    assert plot_pool.pool_size(3, cpus=8) == 1  # too few plots to repay starting workers
    assert plot_pool.pool_size(200, cpus=2) == 2
    assert plot_pool.pool_size(3 * plot_pool.MIN_JOBS_PER_WORKER, cpus=8) == 3


def test_a_users_matplotlibrc_does_not_change_the_bytes(monkeypatch: pytest.MonkeyPatch, serial: list[list[str]]) -> None:
    import matplotlib

    plain = serial[:1]
    monkeypatch.setitem(matplotlib.rcParamsOrig, "axes.facecolor", "#ff0000")  # as a matplotlibrc would set them
    monkeypatch.setitem(matplotlib.rcParamsOrig, "figure.facecolor", "#00ff00")
    assert draw_plots(entries()[:1], workers=1) == plain


def test_a_share_of_the_cpus_caps_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pytest-xdist worker's share (``-n 2`` on two CPUs: one each) draws in its own process."""
    from harness.core import cpu_identity

    monkeypatch.setattr(cpu_identity, "usable_cpu_ids", lambda: {0, 1})
    monkeypatch.setenv(cpu_identity.CPU_SHARE_VARIABLE, "1")
    assert plot_pool.pool_size(200) == 1
    monkeypatch.setenv(cpu_identity.CPU_SHARE_VARIABLE, "2")
    assert plot_pool.pool_size(200) == 2
