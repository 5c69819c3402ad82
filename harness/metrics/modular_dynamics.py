"""Metrics of ARENA 1.5.2 across a training run: a quantity measured on each snapshot of the claim's model.

A model's snapshots are the registry's family ``BASE@epoch=N`` (the reproduction) or
``BASE@index=I`` (the course's run, epoch 100 I), where BASE is the claim's model name without
its ``@...`` part. Each snapshot is loaded (sha256 checked) and run once on all p^2 pairs, and what every quantity
needs of it is kept (:class:`SnapshotSummary`, about 0.5 MB): every dynamics claim of a process shares it,
and a snapshot whose weights file is unchanged is not loaded again.

Quantities: ``test_loss``, ``train_loss``, ``all_loss`` (float64, :mod:`harness.metrics.modular`),
``restricted_loss`` (all pairs, the given ``frequencies``, bias-corrected), ``weight_norm``,
``attention_gap`` (the largest per-head |mean attention "=" -> 0 minus "=" -> 1|, G26),
``logit_trig_ratio``, ``neuron_pre_trig_ratio``, ``neuron_post_trig_ratio`` (G25: the course's
``tensor_trig_ratio`` of the given ``frequencies``, :func:`~harness.metrics._modular.trig_ratio`).

- ``modular.trig_ratio``: that ratio on the claim's model itself.

- ``modular.snapshot_series``: the quantity at each chosen epoch (``epoch=N``).
- ``modular.orders_of_magnitude_drop``: ``log10(q(from_epoch) / q(to_epoch))``.
- ``modular.first_epoch_below``: the first snapshot epoch whose quantity is below ``level``
  (the last epoch + the spacing, i.e. "not within the run", when none is).
- ``modular.grokking_window``: from the train and test loss of every snapshot, the epoch the
  train set is memorised, the test loss's peak, the start of its crash and its end.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Callable, Literal

from pydantic import Field
from torch import Tensor

from fixtures.registry import get_model_entry, model_entries
from harness.context import MetricContext
from harness.core.details import LossCurves
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.core.value_shape import Scalar, Table, labelled, names
from harness.metrics._modular import (
    restricted_from_coords, run_all_pairs, split_loss, trig_energy, trig_ratio, trig_sum_coords,
)
from harness.metrics.modular import kept_all_pairs
from harness.metrics.modular_logits import Frequency, check_frequencies
from harness.registry import metric

Quantity = Literal["test_loss", "train_loss", "all_loss", "restricted_loss", "weight_norm", "attention_gap",
                   "logit_trig_ratio", "neuron_pre_trig_ratio", "neuron_post_trig_ratio"]
TrigOf = Literal["logit", "neuron_pre", "neuron_post"]
_WITH_FREQUENCIES = ("restricted_loss", "logit_trig_ratio", "neuron_pre_trig_ratio", "neuron_post_trig_ratio")
Epoch = Annotated[int, Field(ge=0)]


def snapshot_names(model_name: str) -> dict[int, str]:
    """{epoch: registry name} of every snapshot in the family of ``model_name``."""
    base = model_name.partition("@")[0]
    found: dict[int, str] = {}
    for name in model_entries():
        stem, at, variant = name.partition("@")
        key, _, number = variant.partition("=")
        if stem == base and at and number.isdigit():
            if key == "epoch":
                found[int(number)] = name
            elif key == "index":
                found[100 * int(number)] = name
    if not found:
        raise ValueError(f"model {model_name!r} has no snapshots in the registry (names {base}@epoch=N or {base}@index=I)")
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class SnapshotSummary:
    """What the quantities need of one snapshot: one all-pairs pass (about 0.5 MB kept; the activations are dropped), or only its weights.

    ``losses``: float64 loss on train, test and all pairs; ``attention_gap``: the largest per-head
    |mean attention "=" -> 0 minus "=" -> 1|; ``trig_coords`` (2 K, p): D L, the logits'
    coordinates along every c_k, s_k and ``column_mean`` (p,): mean(L) per answer, from which the
    restricted loss of any frequency set follows (:func:`~harness.metrics._modular.restricted_from_coords`).
    ``trig_energy``: for the logits and the pre- and post-ReLU neurons, each column's centred energy
    along every frequency's cos/sin(w_k (x + y)) and its variance (:func:`~harness.metrics._modular.trig_energy`),
    from which the course's trig ratio of any frequency set follows. ``weight_norm``: the sum of squares of every parameter. A summary of the weights alone
    (``of_pass`` false) holds only the weight norm: a claim that reads no more runs nothing.
    """

    weights_sha256: str
    weight_norm: float
    of_pass: bool = False
    losses: dict[str, float] | None = None
    attention_gap: float = math.nan
    trig_coords: Tensor | None = None
    column_mean: Tensor | None = None
    trig_energy: dict[str, tuple[Tensor, Tensor]] | None = None

    def quantity(self, quantity: str, frequencies: list[int] | None) -> float:
        """The named quantity (``restricted_loss`` and the trig ratios with ``frequencies``)."""
        if quantity == "weight_norm":
            return self.weight_norm
        if not self.of_pass:
            raise ValueError(f"quantity {quantity} needs the snapshot's all-pairs pass, and this summary is of its weights only")
        if quantity in _WITH_FREQUENCIES:
            if not frequencies:
                raise ValueError(f"quantity {quantity} needs 'frequencies'")
            check_frequencies(frequencies)
        if quantity == "restricted_loss":
            return split_loss(restricted_from_coords(self.trig_coords, self.column_mean, frequencies, True), "all")
        if quantity.endswith("_trig_ratio"):
            return trig_ratio(*self.trig_energy[quantity.removesuffix("_trig_ratio")], frequencies)
        if quantity == "attention_gap":
            return self.attention_gap
        return self.losses[quantity.removesuffix("_loss")]


_SUMMARIES: dict[tuple[str, bool], SnapshotSummary] = {}
"""Snapshot summaries by (model identity key, of a pass), and for a snapshot loaded from a file by a key of
its fingerprint (the file's sha256 among it) too, so that a later claim finds it without loading the file.
One all-pairs pass per snapshot serves every dynamics claim of a process."""


def _weight_norm(model: ModelHandle) -> float:
    return sum(float(p.double().pow(2).sum()) for _, p in model.named_parameters())


def _held(key: str, of_pass: bool) -> SnapshotSummary | None:
    """The summary kept under ``key`` that serves ``of_pass``: a pass's summary serves both (it holds the weight norm too)."""
    for held in ((True,) if of_pass else (True, False)):
        if (key, held) in _SUMMARIES:
            return _SUMMARIES[(key, held)]
    return None


def summarise(model: ModelHandle, of_pass: bool = True) -> SnapshotSummary:
    """The :class:`SnapshotSummary` of a loaded snapshot (kept by its identity: one all-pairs pass, with the pre-ReLU neurons, per snapshot)."""
    held = _held(model.identity.key, of_pass)
    if held is not None:
        return held
    sha, norm = model.identity.weights_sha256 or "", _weight_norm(model)
    if not of_pass:
        summary = SnapshotSummary(sha, norm)
    else:
        run = kept_all_pairs(model) or run_all_pairs(model, pre=True)  # the pass its claims made, else one not kept
        per_head = run.attention.mean(0)  # (h, 3): mean attention from "=" to each position
        logits = run.logits  # (p^2, p) float64: converted once, read six times
        summary = SnapshotSummary(
            sha, norm, True, losses={split: split_loss(logits, split) for split in ("train", "test", "all")},
            attention_gap=float((per_head[:, 0] - per_head[:, 1]).abs().max()),
            trig_coords=trig_sum_coords(logits), column_mean=logits.mean(0),
            trig_energy={"logit": trig_energy(logits), "neuron_pre": trig_energy(run.neurons_pre),
                         "neuron_post": trig_energy(run.neurons)})
    _SUMMARIES[(model.identity.key, of_pass)] = summary
    return summary


def measure(model: ModelHandle, quantity: str, frequencies: list[int] | None) -> float:
    """The quantity on one loaded snapshot (from its summary)."""
    return summarise(model, quantity != "weight_norm").quantity(quantity, frequencies)


def _fingerprint_key(name: str) -> str | None:
    """A key of the snapshot's fingerprint (the weights file's sha256 among it), or ``None`` where it has none or it cannot be read."""
    entry = get_model_entry(name)
    if entry.fingerprint is None:
        return None
    try:
        return "fingerprint:" + json.dumps([name, entry.source, entry.fingerprint()], sort_keys=True)
    except Exception:  # noqa: BLE001  (unreadable: loading says what is wrong)
        return None


def snapshot_summary(name: str, of_pass: bool = True) -> SnapshotSummary:
    """The summary of snapshot ``name``: kept from earlier in the process when its fingerprint is unchanged, else loaded (and run)."""
    cheap = _fingerprint_key(name)
    held = None if cheap is None else _held(cheap, of_pass)
    if held is not None:
        return held
    summary = summarise(get_model_entry(name).load(), of_pass)
    if cheap is not None:
        _SUMMARIES[(cheap, summary.of_pass)] = summary
    return summary


def series(model_name: str, quantity: str, frequencies: list[int] | None, epochs: list[int] | None) -> tuple[dict[int, float], dict[int, str]]:
    """({epoch: quantity}, {epoch: weights sha256}) over the chosen (default: every) snapshot."""
    if frequencies and quantity not in _WITH_FREQUENCIES:
        raise ValueError(f"quantity {quantity} takes no 'frequencies' (only {', '.join(_WITH_FREQUENCIES)} do)")
    names = snapshot_names(model_name)
    chosen = sorted(names) if epochs is None else epochs
    missing = [e for e in chosen if e not in names]
    if missing:
        raise ValueError(f"no snapshot of {model_name.partition('@')[0]} at epoch(s) {missing}; snapshots: {sorted(names)}")
    values, shas = {}, {}
    for epoch in chosen:
        summary = snapshot_summary(names[epoch], quantity != "weight_norm")
        values[epoch] = summary.quantity(quantity, frequencies)
        shas[epoch] = summary.weights_sha256
    return values, shas


@metric("modular.trig_ratio", value=Scalar())
def trig_ratio_metric(ctx: MetricContext, *, of: TrigOf, frequencies: list[Frequency]) -> Measurement:
    """The course's ``tensor_trig_ratio`` on the claim's model: the mean over columns (answers, or
    neurons) of the share of each column's centred variance over the grid along cos/sin(w_k (x + y))
    of ``frequencies`` (constant columns left out)."""
    value = measure(ctx.model, f"{of}_trig_ratio", list(frequencies))
    return Measurement(value, None, {"of": of, "frequencies": list(frequencies)})


@metric("modular.snapshot_series", value=Table(labelled("epoch")))
def snapshot_series(ctx: MetricContext, *, quantity: Quantity, frequencies: list[Frequency] | None = None,
                    epochs: list[Epoch] | None = None) -> Measurement:
    """The quantity on each snapshot of the claim's model (``epochs``: a subset), keyed ``epoch=N``."""
    values, shas = series(ctx.model.identity.name, quantity, frequencies, epochs)
    return Measurement({f"epoch={e}": v for e, v in values.items()}, None, {"quantity": quantity, "weights_sha256": {str(e): s for e, s in shas.items()}})


@metric("modular.orders_of_magnitude_drop", value=Scalar())
def orders_of_magnitude_drop(ctx: MetricContext, *, quantity: Quantity, from_epoch: Epoch, to_epoch: Epoch,
                             frequencies: list[Frequency] | None = None) -> Measurement:
    """``log10(q(from_epoch) / q(to_epoch))``: how many orders of magnitude the quantity fell between two snapshots."""
    values, shas = series(ctx.model.identity.name, quantity, frequencies, [from_epoch, to_epoch])
    a, b = values[from_epoch], values[to_epoch]
    if a <= 0 or b <= 0:
        raise ValueError(f"{quantity} is not positive at epoch {from_epoch} ({a}) or {to_epoch} ({b})")
    return Measurement(math.log10(a / b), None, {"from": a, "to": b, "quantity": quantity})


@metric("modular.first_epoch_below", value=Scalar())
def first_epoch_below(ctx: MetricContext, *, quantity: Quantity, level: Annotated[float, Field(gt=0)],
                      frequencies: list[Frequency] | None = None, epochs: list[Epoch] | None = None) -> Measurement:
    """The first snapshot epoch (of ``epochs``, default all) whose quantity is below ``level``; past the last one when none is."""
    values, _ = series(ctx.model.identity.name, quantity, frequencies, epochs)
    ordered = sorted(values)
    below = [e for e in ordered if values[e] < level]
    step = ordered[-1] - ordered[-2] if len(ordered) > 1 else 1
    first = below[0] if below else ordered[-1] + step
    return Measurement(float(first), None, {"series": {str(e): values[e] for e in ordered}, "level": level, "found": bool(below)})


def split_losses(model_name: str) -> dict[int, tuple[float, float]]:
    """{epoch: (train loss, test loss)} of every snapshot, one all-pairs run each."""
    summaries = {epoch: snapshot_summary(name) for epoch, name in snapshot_names(model_name).items()}
    return {epoch: (s.losses["train"], s.losses["test"]) for epoch, s in summaries.items()}


def window_epochs(losses: dict[int, tuple[float, float]], memorised_below: float, start_drop: float, end_below: float) -> dict[str, int]:
    """Landmarks of a run from its snapshots' (train, test) losses.

    memorised: the first epoch with train loss < ``memorised_below``; peak: the epoch of the
    largest test loss from then on; start: the first epoch after the peak with test loss below
    peak / 10^``start_drop``; end: the first epoch from the start on with test loss < ``end_below``.
    An epoch that never comes is the last epoch + the last spacing ("not within the run").
    """
    epochs = sorted(losses)
    after = epochs[-1] + (epochs[-1] - epochs[-2] if len(epochs) > 1 else 1)

    def first(candidates: list[int], test: Callable[[int], bool]) -> int:
        return next((e for e in candidates if test(e)), after)

    memorised = first(epochs, lambda e: losses[e][0] < memorised_below)
    later = [e for e in epochs if e >= memorised] or epochs[-1:]
    peak = max(later, key=lambda e: losses[e][1])
    level = losses[peak][1] / 10 ** start_drop
    start = first([e for e in epochs if e > peak], lambda e: losses[e][1] < level)
    end = first([e for e in epochs if e >= start], lambda e: losses[e][1] < end_below)
    return {"memorised": memorised, "peak": peak, "start": start, "end": end}


@metric("modular.grokking_window", value=Table(names("memorised", "peak", "start", "end")), details=(LossCurves,))
def grokking_window(ctx: MetricContext, *, memorised_below: Annotated[float, Field(gt=0)] = 1e-2,
                    start_drop: Annotated[float, Field(gt=0)] = 1.0, end_below: Annotated[float, Field(gt=0)] = 1e-5) -> Measurement:
    """Epochs (snapshots of the claim's model) where the train set is memorised, the test loss peaks, its crash starts and ends.

    See :func:`window_epochs`; the details hold both loss curves over the snapshots and the window [start, end].
    """
    losses = split_losses(ctx.model.identity.name)
    marks = window_epochs(losses, memorised_below, start_drop, end_below)
    epochs = sorted(losses)
    details = {"epochs": epochs, "train_loss": [losses[e][0] for e in epochs], "test_loss": [losses[e][1] for e in epochs],
               "window": [marks["start"], marks["end"]]}
    return Measurement({k: float(v) for k, v in marks.items()}, None, details, unit="epoch")
