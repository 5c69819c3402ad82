"""Installed package versions, as the records, the measurement cache's key and the kernel's
calibration store them."""

from __future__ import annotations

from importlib import metadata


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` (``importlib.metadata``), or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
