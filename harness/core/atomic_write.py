"""Writing a file atomically, and cleaning up after writers that were killed mid-write.

A write goes to a temporary file beside the target (``.<target>.<host>-<pid>.<random>.tmp``),
is flushed and fsync-ed, then ``os.replace``-d over the target: readers see the old file or the
new one, never half. A writer killed before the replace (SIGKILL, power loss) leaves its
temporary file behind; the next write of the same target removes such files when their writer is
gone (same host, process no longer running) or when they are older than ``STALE_AFTER_S`` (a
writer on another host, or a file from before writers were named). A temporary file of a writer
that is still running is left alone, so two runs writing the same folder do not break each other.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 3600.0
"""A temporary file this old is stale whoever wrote it: a write takes seconds, not an hour."""
_RANDOM = r"[a-z0-9_]{8}"  # the part tempfile.mkstemp makes unique


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    Stale temporary files of the same target left by killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def writer_tag(pid: int | None = None) -> str:
    """``<host>-<pid>`` of a writer (this process by default), as it appears in its temporary files."""
    return f"{_host()}-{os.getpid() if pid is None else pid}"


def remove_stale_temporaries(path: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files of ``path``'s target whose writer is gone or that are older than
    ``STALE_AFTER_S``; return the removed files. Files that vanish meanwhile are skipped."""
    now = time.time() if now is None else now
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(?P<host>[A-Za-z0-9_]+)-(?P<pid>[0-9]+)\.)?{_RANDOM}\.tmp$")
    removed: list[Path] = []
    try:
        candidates = list(path.parent.iterdir())
    except OSError:
        return removed
    for candidate in candidates:
        match = pattern.match(candidate.name)
        if match is None or not _is_stale(candidate, match.group("host"), match.group("pid"), now):
            continue
        try:
            candidate.unlink()
        except OSError:  # removed by another writer's clean-up, or not ours to remove
            continue
        removed.append(candidate)
    return removed


def _is_stale(candidate: Path, host: str | None, pid: str | None, now: float) -> bool:
    try:
        age = now - candidate.stat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    return host == _host() and pid is not None and not _running(int(pid))


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (``True`` where that cannot be told)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
