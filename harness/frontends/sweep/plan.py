"""A sweep's plan: which claims run on which model, cut into tasks of one (model, claims file).

Without ``--models`` a sweep measures the claim files as written (each claim on its own model,
the same claims as ``claims run``).  ``--models SPEC`` re-targets each file: every claim that runs
on the file's top-level ``model`` runs on each model of ``SPEC`` instead (claims that name their
own ``model`` are pinned and left out).  ``SPEC`` is a comma-separated list of registered model
names and shell-style patterns over them (``grokking-repro@epoch=*``), checked strictly by
:func:`resolve_models`.

A claim re-targeted to a model other than its file's keeps its expectation and gets the id
``<id>[<model>]``, so the record's ids stay unique; on the file's own model it keeps its id.
Every claim has a ``position``: its place in the sweep's serial order (files in order; per file
the models in order; per model the claims in file order), which orders the gathered record.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Iterable

from fixtures.registry import model_entries
from harness.core.errors import SpecError, SpecIssue
from harness.core.named_registry import did_you_mean, listed
from harness.core.spec import Claim
from harness.loader import LoadedFile, check_claim_names

PATTERN_CHARACTERS = "*?["
KINDS = {"ModelShape": "transformer", "ToyShape": "toy model of superposition", "SaeShape": "sparse autoencoder"}


class SweepOptionError(ValueError):
    """A sweep option (``--models``) is invalid; the message names the item and why."""


@dataclass(frozen=True)
class SweepTask:
    """One unit of work sent to a worker: the claims of one claims file on one model.

    ``text`` is the claims file's text, so a worker on another machine needs only the package,
    not the files; ``model`` is ``None`` for claims measured as written, else the model the
    file's claims are re-targeted to; ``claims`` holds ``(position, claim id in the file)``; ``runs_on`` names
    the model they run on (for messages).
    """

    path: str
    text: str
    sha256: str
    model: str | None
    claims: tuple[tuple[int, str], ...]
    runs_on: str = ""
    """The model the task's claims run on (for messages)."""


@dataclass
class SweepPlan:
    """The tasks of a sweep, the files they read (path -> sha256) and the claims left out."""

    tasks: list[SweepTask] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)

    @property
    def claim_count(self) -> int:
        return sum(len(task.claims) for task in self.tasks)


def resolve_models(spec: str) -> list[str]:
    """The models a ``--models`` value names, in order, each once.

    Items are separated by commas; an item is a registered model name or a pattern with ``*``,
    ``?`` or ``[...]`` matching registered names (in the model table's order).  An empty item, an
    unknown name (with a did-you-mean), a pattern matching nothing and a model named twice are
    :class:`SweepOptionError`.
    """
    entries = model_entries()
    names = list(entries)
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise SweepOptionError(f"--models {spec!r}: an empty item; give model names or patterns separated by commas, "
                               "e.g. --models 'grokking-repro@epoch=*' or --models tms-5f2d@seed=0,tms-5f2d@seed=1")
    chosen: dict[str, str] = {}
    for item in items:
        for name in _matches(item, names):
            if name in chosen:
                raise SweepOptionError(f"--models: model {name!r} is named twice (by {chosen[name]!r} and {item!r})")
            chosen[name] = item
    return list(chosen)


def _matches(item: str, names: list[str]) -> list[str]:
    if any(character in item for character in PATTERN_CHARACTERS):
        found = [name for name in names if fnmatch.fnmatchcase(name, item)]
        if not found:
            raise SweepOptionError(f"--models: pattern {item!r} matches no registered model; models: {listed(names)}")
        return found
    if item not in names:
        raise SweepOptionError(f"--models: unknown model {item!r}{did_you_mean(item, names)}; models: {listed(names)}")
    return [item]


def swept_id(claim_id: str, model: str, file_model: str | None) -> str:
    """The id of claim ``claim_id`` re-targeted to ``model``: unchanged on its file's own model."""
    return claim_id if model == file_model else f"{claim_id}[{model}]"


def retargeted(loaded: LoadedFile, model: str) -> LoadedFile:
    """``loaded`` with its top-level model replaced by ``model`` (claims naming their own model unchanged)."""
    return dataclasses.replace(loaded, spec=loaded.spec.model_copy(update={"model": model}))


def task_claims(loaded: LoadedFile, model: str | None, ids: Iterable[str]) -> tuple[LoadedFile, list[Claim]]:
    """The file and claims a task measures: the claims ``ids`` of ``loaded``, as written
    (``model`` ``None``) or re-targeted to ``model`` (with their sweep ids)."""
    by_id = {claim.id: claim for claim in loaded.spec.claims}
    if model is None:
        return loaded, [by_id[claim_id] for claim_id in ids]
    target = retargeted(loaded, model)
    return target, [by_id[claim_id].model_copy(update={"id": swept_id(claim_id, model, loaded.spec.model)}) for claim_id in ids]


def plan_sweep(files: list[LoadedFile], texts: dict[str, str], models: list[str] | None, select: str | None) -> SweepPlan:
    """The tasks of a sweep over ``files`` (``texts``: each file's text by path): one per
    (model, file), as written (``models`` ``None``) or re-targeted to each of ``models``.
    ``select``: only claims whose id contains it.  Raises :class:`SweepOptionError` for a file
    that ``--models`` cannot re-target and :class:`~harness.core.errors.SpecError` for claims that
    do not fit a model they are swept onto (a head outside it, a selection its values lack)."""
    plan = SweepPlan(files={loaded.path: loaded.sha256 for loaded in files})
    position = 0
    for loaded in files:
        chosen = [claim for claim in loaded.spec.claims if select is None or select in claim.id]
        if models is None:  # a serial run's order: the file's, whichever model a claim runs on
            order = {claim.id: position + index for index, claim in enumerate(chosen)}
            for runs_on, claims in _by_model(loaded, chosen):
                numbered = tuple((order[claim.id], claim.id) for claim in claims)
                plan.tasks.append(SweepTask(loaded.path, texts[loaded.path], loaded.sha256, None, numbered, runs_on))
            position += len(chosen)
            continue
        for model, claims in _swept(loaded, chosen, models, plan):  # each model's claims in turn
            numbered = tuple((position + index, claim.id) for index, claim in enumerate(claims))
            position += len(claims)
            plan.tasks.append(SweepTask(loaded.path, texts[loaded.path], loaded.sha256, model, numbered, model))
    return plan


def _by_model(loaded: LoadedFile, claims: list[Claim]) -> list[tuple[str, list[Claim]]]:
    """The file's claims as written, one group per model in order of first use."""
    groups: dict[str, list[Claim]] = {}
    for claim in claims:
        groups.setdefault(loaded.model_of(claim) or "", []).append(claim)
    return list(groups.items())


def _swept(loaded: LoadedFile, claims: list[Claim], models: list[str], plan: SweepPlan) -> list[tuple[str, list[Claim]]]:
    """The file's default-model claims once per model of ``models``, each group checked against its model."""
    if loaded.spec.model is None:
        raise SweepOptionError(f"--models: {loaded.path} has no top-level 'model' (each claim names its own), "
                               "so there is no model to sweep; run it without --models")
    _check_kinds(loaded, models)
    plan.pinned += [claim.id for claim in claims if claim.model is not None]
    swept = [claim for claim in claims if claim.model is None]
    issues: list[SpecIssue] = []
    groups: list[tuple[str, list[Claim]]] = []
    for model in models:
        if swept:
            issues += _misfits(loaded, model, {claim.id for claim in swept})
            groups.append((model, swept))
    if issues:
        raise SpecError(issues)
    return groups


def model_kind(name: str) -> str:
    """What kind of model ``name`` is, in words, from its declared shape's type (:data:`KINDS`)."""
    return KINDS.get(type(model_entries()[name].shape).__name__, "model of another kind")


def _check_kinds(loaded: LoadedFile, models: list[str]) -> None:
    """Every model swept onto is of the file's model's kind: a metric of one kind reads weights the other lacks."""
    own = model_kind(loaded.spec.model or "")
    others = [f"{model} ({model_kind(model)})" for model in models if model_kind(model) != own]
    if others:
        raise SweepOptionError(f"--models: {loaded.path}'s model {loaded.spec.model!r} is a {own}; its claims cannot be swept onto "
                               f"models of another kind: {', '.join(others)}")


def _misfits(loaded: LoadedFile, model: str, ids: set[str]) -> list[SpecIssue]:
    """The name checks (heads, selections) of the claims ``ids`` re-targeted to ``model``."""
    target = retargeted(loaded, model)
    issues = check_claim_names(target, ids)
    return [SpecIssue(issue.location, issue.key, f"{issue.message} (swept onto model {model!r} by --models)") for issue in issues]
