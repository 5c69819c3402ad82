"""Every chapter-1.2 and chapter-1.4.1 row of the ARENA claims catalogue is encoded in ``claims/arena``.

The catalogue (``arena-claims.md``, kept in ``../shared`` beside the checkout) lists the course's
claims in §2 (chapter 1.2) and §3 (chapter 1.4.1) as table rows whose first cell is the claim id
(``| 1.2.ov.full_ov_1_4_top1 | ...``, ``| 1.4.dla.heads | ...``).
Each id must appear in ``claims/arena`` as a claim id or as a ``conceptual`` or ``pending`` id, and every arena
claim that names a ``catalogue_id`` must name a row that exists. Skipped where the catalogue is
not present.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.loader import find_claim_files, load_claim_files
from harness.registry import get_metric

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT.parent / "shared" / "arena-claims.md"
ARENA = ROOT / "claims" / "arena"
ROW_ID = re.compile(r"^\|\s*(1\.[24]\.[A-Za-z0-9_.+-]+)\s*\|")
#: Catalogue section -> the chapter prefix of its row ids.
SECTIONS = {"2": "1.2.", "3": "1.4."}

needs_catalogue = pytest.mark.skipif(not CATALOGUE.is_file(), reason=f"catalogue not found at {CATALOGUE}")


def catalogue_section_ids(text: str, section: str) -> list[str]:
    """The ids of the table rows of §``section`` ("## 2. ..." up to the next "## " heading) with its chapter prefix."""
    ids: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line.startswith(f"## {section}.")
            continue
        match = ROW_ID.match(line) if inside else None
        if match and match.group(1).startswith(SECTIONS[section]):
            ids.append(match.group(1))
    return ids


def catalogue_section_2_ids(text: str) -> list[str]:
    """The chapter-1.2 row ids of §2."""
    return catalogue_section_ids(text, "2")


def arena_entries() -> tuple[dict[str, object], dict[str, object]]:
    """``(claims, unmeasured)`` of every file under claims/arena, by id: ``unmeasured`` holds the
    ``conceptual`` (cannot be measured) and ``pending`` (not yet encoded) entries."""
    loaded = load_claim_files(find_claim_files([ARENA]))
    claims = {claim.id: claim for f in loaded for claim in f.spec.claims}
    unmeasured = {entry.id: entry for f in loaded for entry in (*f.spec.conceptual, *f.spec.pending)}
    return claims, unmeasured


def test_section_parser_reads_rows_only_from_section_2() -> None:
    text = "## 1. x\n| 1.2.not.this | a |\n## 2. Chapter\n### 2.1 s\n| id | src |\n|---|---|\n| 1.2.a.b | x |\n## 3. y\n| 1.2.c | x |\n"
    assert catalogue_section_2_ids(text) == ["1.2.a.b"]


def test_section_parser_reads_section_3_rows() -> None:
    text = "## 2. x\n| 1.2.a | x |\n## 3. Chapter 1.4.1\n| id | src |\n| 1.4.dla.heads | x |\n| 1.2.stray | x |\n## 4. y\n| 1.4.no | x |\n"
    assert catalogue_section_ids(text, "3") == ["1.4.dla.heads"]
    assert catalogue_section_2_ids(text) == ["1.2.a"]


@needs_catalogue
def test_every_section_3_row_is_encoded() -> None:
    ids = catalogue_section_ids(CATALOGUE.read_text(encoding="utf-8"), "3")
    assert len(ids) >= 25, f"parsed only {len(ids)} ids from §3 of {CATALOGUE}: has its table format changed?"
    claims, conceptual = arena_entries()
    missing = [row for row in ids if row not in claims and row not in conceptual]
    assert not missing, f"catalogue rows with no claim, conceptual or pending entry in claims/arena: {missing}"


@needs_catalogue
def test_every_section_2_row_is_encoded() -> None:
    ids = catalogue_section_2_ids(CATALOGUE.read_text(encoding="utf-8"))
    assert len(ids) >= 50, f"parsed only {len(ids)} ids from §2 of {CATALOGUE}: has its table format changed?"
    claims, conceptual = arena_entries()
    missing = [row for row in ids if row not in claims and row not in conceptual]
    assert not missing, f"catalogue rows with no claim, conceptual or pending entry in claims/arena: {missing}"


@needs_catalogue
def test_catalogue_ids_named_by_claims_exist() -> None:
    text = CATALOGUE.read_text(encoding="utf-8")
    ids = {row for section in SECTIONS for row in catalogue_section_ids(text, section)}
    claims, conceptual = arena_entries()
    unknown = []
    for entry_id, entry in {**claims, **conceptual}.items():
        source = getattr(entry, "source", None)
        named = getattr(source, "catalogue_id", None)
        if named is None or not named.startswith(tuple(SECTIONS.values())):
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
    loaded = load_claim_files(find_claim_files([ARENA]))
    misfiled = [entry.id for f in loaded for entry in f.spec.conceptual
                if "not yet implemented" in entry.reason and "non-empirical" not in entry.reason and "not a claim about model weights" not in entry.reason]
    assert not misfiled, f"conceptual entries that say they are only not yet implemented (make them pending): {misfiled}"
