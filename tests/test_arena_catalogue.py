"""Every chapter-1.2 and chapter-1.4.1 row of the ARENA claims catalogue is encoded in ``claims/arena``.

The catalogue's row ids are kept as data in ``tests/data/arena-catalogue.json`` (taken once from the
catalogue's tables of the ARENA course's chapters 1.2 and 1.4.1, each id with the catalogue section
it is listed in: ``1.2.ov.full_ov_1_4_top1``, ``1.4.dla.heads``). Each id must appear in
``claims/arena`` as a claim id or as a ``conceptual`` or ``pending`` id, and every arena claim that
names a ``catalogue_id`` must name a row that exists.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from harness.loader import find_claim_files, load_claim_files
from harness.registry import get_metric

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = Path(__file__).resolve().parent / "data" / "arena-catalogue.json"
ARENA = ROOT / "claims" / "arena"
#: Chapter -> the prefix of its row ids, and how many rows the catalogue lists for it.
CHAPTERS = {"1.2": ("1.2.", 53), "1.4": ("1.4.", 27)}


def catalogue_rows() -> list[dict[str, str]]:
    """The catalogue's rows (``id``, ``section``), in catalogue order."""
    return json.loads(CATALOGUE.read_text(encoding="utf-8"))["rows"]


def chapter_ids(chapter: str) -> list[str]:
    """The row ids of ``chapter`` ("1.2" or "1.4")."""
    prefix, _ = CHAPTERS[chapter]
    return [row["id"] for row in catalogue_rows() if row["id"].startswith(prefix)]


@functools.lru_cache(maxsize=1)
def arena_files() -> tuple[object, ...]:
    """Every claim file under claims/arena, loaded once per test process (about 0.5-2.5 s of CPU
    each time); callers only read them."""
    return tuple(load_claim_files(find_claim_files([ARENA])))


def arena_entries() -> tuple[dict[str, object], dict[str, object]]:
    """``(claims, unmeasured)`` of every file under claims/arena, by id: ``unmeasured`` holds the
    ``conceptual`` (cannot be measured) and ``pending`` (not yet encoded) entries."""
    loaded = arena_files()
    claims = {claim.id: claim for f in loaded for claim in f.spec.claims}
    unmeasured = {entry.id: entry for f in loaded for entry in (*f.spec.conceptual, *f.spec.pending)}
    return claims, unmeasured


def unencoded(ids: list[str]) -> list[str]:
    """The ids with no claim, conceptual or pending entry in claims/arena."""
    claims, unmeasured = arena_entries()
    return [row for row in ids if row not in claims and row not in unmeasured]


def test_catalogue_data_is_whole() -> None:
    """Every row once, with its section, and as many rows per chapter as the catalogue lists."""
    rows = catalogue_rows()
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)), "a catalogue id is listed twice"
    assert all(row["section"] for row in rows)
    assert {chapter: len(chapter_ids(chapter)) for chapter in CHAPTERS} == {chapter: n for chapter, (_, n) in CHAPTERS.items()}
    assert len(ids) == sum(n for _, n in CHAPTERS.values()), "a row belongs to neither chapter"


def test_every_chapter_1_4_1_row_is_encoded() -> None:
    missing = unencoded(chapter_ids("1.4"))
    assert not missing, f"catalogue rows with no claim, conceptual or pending entry in claims/arena: {missing}"


def test_every_chapter_1_2_row_is_encoded() -> None:
    missing = unencoded(chapter_ids("1.2"))
    assert not missing, f"catalogue rows with no claim, conceptual or pending entry in claims/arena: {missing}"


def test_catalogue_ids_named_by_claims_exist() -> None:
    ids = {row["id"] for row in catalogue_rows()}
    prefixes = tuple(prefix for prefix, _ in CHAPTERS.values())
    claims, conceptual = arena_entries()
    unknown = []
    for entry_id, entry in {**claims, **conceptual}.items():
        source = getattr(entry, "source", None)
        named = getattr(source, "catalogue_id", None)
        if named is None or not named.startswith(prefixes):
            continue
        if named not in ids:
            unknown.append(f"{entry_id} -> {named}")
        elif entry_id != named and not entry_id.startswith(named + "."):
            unknown.append(f"{entry_id} is not {named} or {named}.<suffix>")
    assert not unknown, f"arena entries naming catalogue rows wrongly: {unknown}"


def test_heavy_arena_claims_are_marked_slow() -> None:
    claims, _ = arena_entries()
    heavy = [
        claim_id for claim_id, claim in claims.items()
        if get_metric(claim.metric).heavy and not claim.slow  # type: ignore[attr-defined]
    ]
    assert not heavy, f"full-vocabulary claims without slow: true: {heavy}"


def test_pending_rows_are_not_called_conceptual() -> None:
    """``pending`` is for measurable rows not yet encoded; a ``conceptual`` reason that says what is
    missing to measure it ("not yet implemented") belongs in ``pending``."""
    misfiled = [entry.id for f in arena_files() for entry in f.spec.conceptual
                if "not yet implemented" in entry.reason and "non-empirical" not in entry.reason and "not a claim about model weights" not in entry.reason]
    assert not misfiled, f"conceptual entries that say they are only not yet implemented (make them pending): {misfiled}"
