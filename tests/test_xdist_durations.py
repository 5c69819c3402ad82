"""Longest xdist work units first (harness/frontends/pytest_plugin/durations.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.frontends.pytest_plugin.durations import SECONDS_PER_ITEM, DurationRecorder, longest_first, read_durations


def queue(**sizes: int) -> dict[str, dict[str, bool]]:
    return {scope: {f"{scope}::t{i}": False for i in range(n)} for scope, n in sizes.items()}


def test_measured_units_go_first_longest_first_and_unknown_ones_by_item_count() -> None:
    work = queue(many=200, e2e=2, small=3, model=40)
    ordered = longest_first(work, {"e2e": 15.8, "model": 1.0})
    # many: 200 * 0.05 = 10 s (not in the file), e2e 15.8 s, model 1.0 s, small 3 * 0.05 s
    assert list(ordered) == ["e2e", "many", "model", "small"]
    assert ordered == {scope: work[scope] for scope in ordered}  # the same units, items and states
    assert SECONDS_PER_ITEM * 200 == pytest.approx(10.0)


def test_ties_keep_the_queue_order() -> None:
    assert list(longest_first(queue(a=2, b=2, c=2), {})) == ["a", "b", "c"]


def config(root: Path, name: str) -> SimpleNamespace:
    return SimpleNamespace(rootpath=root, getini=lambda key: name)


def test_durations_file_is_read_relative_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps({"tests/test_a.py": 3, "model:gpt2": 0.5}))
    assert read_durations(config(tmp_path, "d.json")) == {"tests/test_a.py": 3.0, "model:gpt2": 0.5}
    assert read_durations(config(tmp_path, "")) == {}
    assert read_durations(config(tmp_path, "absent.json")) == {}  # a fresh checkout without it: item counts


@pytest.mark.parametrize("text", ["{not json", '["a"]', '{"a": "slow"}', '{"a": true}'])
def test_a_malformed_durations_file_is_an_error_naming_it(tmp_path: Path, text: str) -> None:
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(pytest.UsageError, match="d.json"):
        read_durations(config(tmp_path, "d.json"))


def test_recorder_sums_each_scope_and_writes_them(tmp_path: Path) -> None:
    from harness.frontends.pytest_plugin.durations import DURATIONS_KEY, SPLIT_KEY

    stash = {SPLIT_KEY: lambda nodeid: nodeid.rsplit("::", 1)[0], DURATIONS_KEY: {}}
    fake = SimpleNamespace(stash=_Stash(stash))
    recorder = DurationRecorder(fake, tmp_path / "out.json")  # type: ignore[arg-type]
    for nodeid, seconds in [("a.py::t1", 1.0), ("a.py::t1", 0.25), ("b.py::t", 2.0)]:
        recorder.pytest_runtest_logreport(SimpleNamespace(nodeid=nodeid, duration=seconds))  # type: ignore[arg-type]
    recorder.pytest_sessionfinish()
    assert json.loads((tmp_path / "out.json").read_text()) == {"a.py": 1.25, "b.py": 2.0}


class _Stash(dict):  # type: ignore[type-arg]
    """pytest's Stash, as far as the recorder uses it (get and item access)."""
