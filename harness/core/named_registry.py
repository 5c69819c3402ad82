"""One registry type for every extension point: metrics, models, input kinds, plots.

A miss raises :class:`UnknownName`, a ``KeyError`` whose message names what was asked for, the
closest registered name ("did you mean") and every registered name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, MutableMapping
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def listed(names: Iterable[str]) -> str:
    """``names`` sorted and joined for a message, each family of variants ``BASE@KEY=VALUE`` (a run's
    snapshots, say) shown once: ``arena-grokking@index=0..500 (51 names)``."""
    families: dict[str, list[str]] = {}
    for name in sorted(names):
        base, at, variant = name.partition("@")
        key, equals, value = variant.partition("=")
        families.setdefault(f"{base}@{key}=" if at and equals else name, []).append(value if at and equals else name)
    shown = []
    for family, members in families.items():
        if len(members) < 4 or not family.endswith("="):
            shown.extend(members if not family.endswith("=") else [family + member for member in members])
            continue
        ordered = sorted(members, key=lambda member: (len(member), member))
        shown.append(f"{family}{ordered[0]}..{ordered[-1]} ({len(members)} names)")
    return ", ".join(shown)


class UnknownName(KeyError):
    """A name that no entry of a registry has; ``str()`` is the whole message."""

    def __init__(self, what: str, name: str, names: Iterable[str]) -> None:
        self.what = what
        self.name = name
        self.names = sorted(names)
        super().__init__(f"unknown {what} {name!r}{did_you_mean(name, self.names)}; {what}s: {listed(self.names)}")

    def __str__(self) -> str:
        return str(self.args[0])


class NamedRegistry(MutableMapping[str, T], Generic[T]):
    """Entries by unique name; ``registry[name]`` raises :class:`UnknownName` on a miss.

    :meth:`add` refuses a name that is taken; ``registry[name] = entry`` replaces on purpose (tests).
    """

    def __init__(self, what: str, entries: Iterable[tuple[str, T]] = ()) -> None:
        self.what = what
        self._entries: dict[str, T] = {}
        for name, entry in entries:
            self.add(name, entry)

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` as ``name``; a second entry with the same name is an error."""
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        """Drop ``name`` (no error when it is not there)."""
        self._entries.pop(name, None)

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        self[name]  # an unknown name raises UnknownName
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.what, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        # Mapping's default goes through __getitem__, which builds the "did you mean" message of a miss.
        return name in self._entries

    def get(self, name: str, default: T | None = None) -> T | None:  # type: ignore[override]
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)
