"""Atomic writes: a writer killed mid-write leaves a temporary file that the next write removes,
while the temporary files of writers still running are left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.core.atomic_write import STALE_AFTER_S, remove_stale_temporaries, write_atomic, writer_tag
from harness.record import write_atomic as write_atomic_from_record

ROOT = Path(__file__).resolve().parents[1]
TEXT = "x" * 100_000

KILLED_WRITER = """
import os, signal, sys
import harness.core.atomic_write as atomic

def killed(fd):  # the data is written; die before the rename, as SIGKILL would at any moment
    os.kill(os.getpid(), signal.SIGKILL)

atomic.os.fsync = killed
atomic.write_atomic(sys.argv[1], "x" * 100_000)
"""


def temporaries(folder: Path, target: str = "results.json") -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(f".{target}.") and p.name.endswith(".tmp"))


def kill_a_writer(target: Path) -> Path:
    """Run a writer of ``target`` that is SIGKILLed before its rename; return the temporary file it left."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=ROOT, timeout=120)
    assert done.returncode == -signal.SIGKILL
    (left,) = temporaries(target.parent, target.name)
    return left


def test_sigkilled_writer_leaves_a_full_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    left = kill_a_writer(target)
    assert left.stat().st_size == len(TEXT) and not target.exists()
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert temporaries(tmp_path) == []


def test_temporary_of_a_running_writer_is_kept(tmp_path: Path) -> None:
    """A concurrent run still writing (this process, or another live one) keeps its temporary file."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = tmp_path / f".results.json.{writer_tag()}.abcd1234.tmp"
        other = tmp_path / f".results.json.{writer_tag(sleeper.pid)}.efgh5678.tmp"
        for path in (mine, other):
            path.write_text("partial")
        write_atomic(tmp_path / "results.json", "new\n")
        assert temporaries(tmp_path) == sorted([mine, other])
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(tmp_path / "results.json") == [other]  # now its writer is gone


def test_old_temporaries_are_stale_whoever_wrote_them(tmp_path: Path) -> None:
    legacy = tmp_path / ".results.json.k2j4h5g6.tmp"  # written before writers were named
    elsewhere = tmp_path / ".results.json.otherhost-123.abcd1234.tmp"
    for path in (legacy, elsewhere):
        path.write_text("partial")
    assert remove_stale_temporaries(tmp_path / "results.json") == []  # young: may be a live writer
    old = time.time() - STALE_AFTER_S - 60
    for path in (legacy, elsewhere):
        os.utime(path, (old, old))
    assert sorted(remove_stale_temporaries(tmp_path / "results.json")) == sorted([legacy, elsewhere])


def test_only_the_same_targets_temporaries_are_touched(tmp_path: Path) -> None:
    left = kill_a_writer(tmp_path / "report.md")
    unrelated = [tmp_path / ".results.json.bak.abcd1234.tmp", tmp_path / "notes.tmp", tmp_path / ".results.jsonx.abcd1234.tmp"]
    for path in unrelated:
        path.write_text("keep")
    write_atomic(tmp_path / "results.json", "new\n")
    assert left.exists() and all(path.exists() for path in unrelated)


def test_record_module_writes_through_the_same_function() -> None:
    assert write_atomic_from_record is write_atomic


def test_failed_write_removes_its_own_temporary(tmp_path: Path) -> None:
    target = tmp_path / "folder-in-the-way"
    target.mkdir()
    with pytest.raises(OSError):
        write_atomic(target, "text")
    assert temporaries(tmp_path, target.name) == []
