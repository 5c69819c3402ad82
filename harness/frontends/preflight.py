"""What a run checks before it measures anything: that its paths name claim files, and that its
output folder can be written.

A mistyped folder or glob in CI must not pass as "0 claims, all valid", and an output folder that
cannot be written must be found before an hour of measurements, not when the results are saved.
"""

from __future__ import annotations

import glob
import tempfile
from pathlib import Path
from typing import Iterable

from harness.loader import find_claim_files

CLAIM_SUFFIXES = (".yaml", ".yml")
GLOB_CHARACTERS = "*?["


class PreflightError(Exception):
    """A path given to a run is unusable; the message names it and says why."""


def claim_files(paths: Iterable[str]) -> list[Path]:
    """The claim files that ``paths`` (files, folders or glob patterns) name, in order, each once.

    Raises :class:`PreflightError` for a path that does not exist, a folder without claim files
    and a pattern that matches none: each names the path.
    """
    found: list[Path] = []
    for text in paths:
        for path in _claim_files_of(text):
            if path not in found:
                found.append(path)
    return found


def _claim_files_of(text: str) -> list[Path]:
    path = Path(text)
    if path.is_dir():
        files = find_claim_files([path])
        if not files:
            raise PreflightError(f"no claim files ({', '.join('*' + s for s in CLAIM_SUFFIXES)}) under {text}")
        return files
    if path.exists():
        return [path]
    if any(character in text for character in GLOB_CHARACTERS):
        return _matching(text)
    raise PreflightError(f"no such file or folder: {text}")


def _matching(pattern: str) -> list[Path]:
    """The claim files a glob ``pattern`` matches (``**`` crosses folders); matched folders give their claim files."""
    files: list[Path] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        path = Path(match)
        if path.is_dir():
            files += find_claim_files([path])
        elif path.suffix in CLAIM_SUFFIXES:
            files.append(path)
    if not files:
        raise PreflightError(f"no claim files match {pattern}")
    return files


def claim_folders_without_files(paths: Iterable[str | Path]) -> list[Path]:
    """The folders among ``paths`` that hold no claim files (pytest arguments; other paths are ignored)."""
    return [Path(p) for p in paths if Path(p).is_dir() and not find_claim_files([p])]


def writable_out(out: Path, file_names: Iterable[str]) -> None:
    """Create the output folder ``out`` if needed and prove it writable (a probe file, removed).

    Raises :class:`PreflightError` when ``out`` is a file, cannot be created or written, or when
    one of the ``file_names`` to be written there already exists as something other than a file.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PreflightError(f"output folder {out} is a file, not a folder") from None
    except OSError as exc:
        raise PreflightError(f"output folder {out} cannot be created ({exc.strerror or exc})") from None
    for name in file_names:
        target = out / name
        if target.exists() and not target.is_file():
            raise PreflightError(f"output file {target} exists and is not a file (a folder?); remove it or choose another --out")
    try:
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise PreflightError(f"output folder {out} is not writable ({exc.strerror or exc})") from None
