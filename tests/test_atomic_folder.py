"""fixtures.atomic_folder: a folder appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures.atomic_folder import atomic_folder


def test_the_folder_appears_whole_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "entry"
    with atomic_folder(target, "meta.json") as tmp:
        (tmp / "weights").write_text("w")
        assert not target.exists()
        (tmp / "meta.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["meta.json", "weights"]
    assert [p.name for p in target.parent.iterdir()] == ["entry"]


def test_an_error_inside_leaves_the_target_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_folder(target, "meta.json") as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_a_concurrent_writers_finished_entry_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with atomic_folder(target, "meta.json") as tmp:
        (tmp / "meta.json").write_text("mine")
        target.mkdir()
        (target / "meta.json").write_text("theirs")
        (target / "weights").write_text("theirs")  # a non-empty folder: the rename fails
    assert (target / "meta.json").read_text() == "theirs" and [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_failed_rename_onto_something_else_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    with pytest.raises(OSError), atomic_folder(target, "meta.json") as tmp:
        (tmp / "meta.json").write_text("mine")
        target.mkdir()
        (target / "unrelated").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
