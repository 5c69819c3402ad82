"""Metrics of ARENA 1.5.2 (grokking): the modular-addition model's Fourier structure, neurons and losses.

The model computes ``(x + y) mod p`` (p = 113) from ``[x, y, =]``; every metric here runs it on
all p^2 pairs (row-major grid, :mod:`harness.metrics._modular`) and needs no ``inputs``.

- ``modular.loss``: float64 cross-entropy of the "=" logits over the 113 numbers on ``all``
  pairs, the paper's ``train`` split and ``test`` (course ``cross_entropy_high_precision``).
- ``modular.embed_fourier_energy``: ``||(F W_E[:p])_i||^2`` summed per frequency
  (k = 0: const; else cos k and sin k rows).
- ``modular.embed_fourier_rows``: the squared norm of each row of ``F W_E[:p]``
  (``variant: text``, what the chapter describes) or ``F^T W_E[:p]`` (``variant: course_code``, what
  its ``fourier_embed`` computes and ``tests.py`` pins).
- ``modular.key_frequencies`` / ``modular.key_frequency_share``: the frequencies k >= 1 whose
  embedding energy is at least ``rel_threshold`` of the largest one, and the share of
  ``||W_E[:p]||^2`` they hold.
- ``modular.embed_svd``: singular values of W_E without the "=" row (``slice: row``, the text) or
  without the last d_model column (``slice: column``, the course's code ``W_E[:, :-1]``).
- ``modular.neuron_frequencies`` / ``modular.neuron_clusters`` / ``modular.neuron_fourier_sparsity``:
  each neuron's frequency and the share of its centred activations' 2-D Fourier energy that the
  const, linear and quadratic terms of that frequency hold (:func:`~harness.metrics._modular.neuron_frequencies`);
  ``k_range: full`` (k = 1..56) or ``course`` (k = 1..55, as ``arrange_by_2d_freqs``).
- ``modular.weight_norm``: the sum of squares of every parameter.
- ``modular.attention_to_positions``, ``modular.pos_similarity``, ``modular.neuron_symmetry``:
  where "=" attends, W_pos[0] against W_pos[1], N(x, y) against N(y, x).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.core.details import ClusterSizes, FrequencyEnergy
from harness.core.value_shape import NameSet, Scalar, Table, either, labelled, names
from harness.registry import metric
from harness.metrics._modular import (
    K_RANGES, AllPairs, basis_names, fourier_basis, frequency_energy, neuron_frequencies, run_all_pairs, split_loss,
)
from fixtures.modular_task import P

KRange = Literal["full", "course"]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]

_RUNS: dict[str, AllPairs] = {}
_FREQS: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


KEPT_RUNS = 4
"""All-pairs runs kept (about 58 MB each at p = 113, d_mlp = 512 in float32): a model and the three
snapshots its controls use (epochs 0, 1000 and the last), which the claim files interleave."""


def all_pairs(model: ModelHandle) -> AllPairs:
    """The all-pairs run of ``model``, the pre-ReLU neurons with it (the ``KEPT_RUNS`` last used kept by
    identity: a grokking snapshot's summary reads the run its claims made, :func:`kept_all_pairs`)."""
    kept = kept_all_pairs(model)
    if kept is not None:
        return kept
    while len(_RUNS) >= KEPT_RUNS:
        _RUNS.pop(next(iter(_RUNS)))  # the least recently used
    _RUNS[model.identity.key] = run = run_all_pairs(model, pre=True)
    return run


def kept_all_pairs(model: ModelHandle) -> AllPairs | None:
    """The kept all-pairs run of ``model`` (marked as the most recently used), ``None`` when none is kept."""
    key = model.identity.key
    if key not in _RUNS:
        return None
    _RUNS[key] = _RUNS.pop(key)
    return _RUNS[key]


def _check_vocab(model: ModelHandle) -> None:
    if model.shape.d_vocab != P + 1:
        raise ValueError(f"the modular metrics need the (x + y) mod {P} model (d_vocab {P + 1}); this one has d_vocab {model.shape.d_vocab}")


def embed_coords(model: ModelHandle, variant: str = "text") -> torch.Tensor:
    """(p, d_model) float64: ``F W_E[:p]`` (text) or ``F^T W_E[:p]`` (course_code)."""
    _check_vocab(model)
    basis = fourier_basis()
    w_e = model.W_E[:P].to(torch.float64)
    return (basis if variant == "text" else basis.T) @ w_e


def key_frequency_list(energy: torch.Tensor, rel_threshold: float) -> list[int]:
    """Frequencies k >= 1 whose energy is at least ``rel_threshold`` of the largest k >= 1."""
    trig = energy[1:]
    return [k + 1 for k in range(trig.numel()) if float(trig[k]) >= rel_threshold * float(trig.max())]


def clusters(model: ModelHandle, k_range: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(frequency, fraction explained) per neuron and the cluster sizes ``{"k=K": n, "unexplained": n}``."""
    _check_vocab(model)
    key = (model.identity.key, k_range)
    if key not in _FREQS:
        while len(_FREQS) >= 6:
            _FREQS.pop(next(iter(_FREQS)))
        _FREQS[key] = neuron_frequencies(all_pairs(model).neurons, K_RANGES[k_range])
    freqs, frac = _FREQS[key]
    sizes: dict[str, float] = {}
    for k in sorted(set(int(f) for f in freqs[frac > threshold])):
        sizes[f"k={k}"] = float(((freqs == k) & (frac > threshold)).sum())
    sizes["unexplained"] = float((frac <= threshold).sum())
    return freqs, frac, sizes


@metric("modular.loss", value=Table(names("all", "train", "test")))
def loss(ctx: MetricContext) -> Measurement:
    """Float64 cross-entropy of the "=" logits over the p numbers, on all pairs and the paper's train/test split."""
    _check_vocab(ctx.model)
    logits = all_pairs(ctx.model).logits
    value = {split: split_loss(logits, split) for split in ("all", "train", "test")}
    accuracy = float((logits.argmax(-1) == torch.tensor([(n // P + n % P) % P for n in range(P * P)])).double().mean())
    return Measurement(value, None, {"accuracy_all": accuracy}, unit="nats")


@metric("modular.embed_fourier_energy", value=Table(labelled("k")), details=(FrequencyEnergy,))
def embed_fourier_energy(ctx: MetricContext, *, rel_threshold: Fraction = 0.05) -> Measurement:
    """``||(F W_E[:p])_i||^2`` per frequency: ``k=0`` the const row, ``k=K`` the cos K and sin K rows.

    Details: the energies as a list and the key frequencies (>= ``rel_threshold`` x the largest k >= 1).
    """
    energy = frequency_energy(embed_coords(ctx.model))
    total = float(energy.sum())
    return Measurement({f"k={k}": float(e) for k, e in enumerate(energy)}, None,
                       {"total": total, "energy": [float(e) for e in energy],
                        "key_frequencies": key_frequency_list(energy, rel_threshold)})


@metric("modular.embed_fourier_rows", value=Table(labelled("row")))
def embed_fourier_rows(ctx: MetricContext, *, variant: Literal["text", "course_code"] = "text") -> Measurement:
    """Squared norm of each row of ``F W_E[:p]`` (``text``) or ``F^T W_E[:p]`` (``course_code``: the course's ``fourier_embed``).

    With ``text`` row i is basis function i (const, cos 1, sin 1, ...); with ``course_code`` the
    rows mix tokens (``F^T`` maps basis coordinates back to tokens), so they are no spectrum.
    """
    rows = embed_coords(ctx.model, variant).pow(2).sum(1)
    return Measurement({f"row={i}": float(r) for i, r in enumerate(rows)}, None,
                       {"variant": variant, "row_names": basis_names() if variant == "text" else "token-mixed rows"})


@metric("modular.key_frequencies", value=NameSet(labelled("k")))
def key_frequencies(ctx: MetricContext, *, rel_threshold: Fraction = 0.05) -> Measurement:
    """The frequencies k >= 1 whose embedding energy (cos k^2 + sin k^2 of ``F W_E[:p]``) is >= ``rel_threshold`` x the largest."""
    energy = frequency_energy(embed_coords(ctx.model))
    keys = key_frequency_list(energy, rel_threshold)
    return Measurement([f"k={k}" for k in keys], None, {"energy": {f"k={k}": float(energy[k]) for k in keys},
                                                         "share": float(energy[keys].sum() / energy.sum())})


@metric("modular.key_frequency_share", value=Table(names("share", "n_key", "top_share")))
def key_frequency_share(ctx: MetricContext, *, rel_threshold: Fraction = 0.05, top: Annotated[int, Field(ge=1, le=56)] = 6) -> Measurement:
    """Share of ``||W_E[:p]||^2`` in the key frequencies (``share``), their number, and the share of the ``top`` largest frequencies."""
    energy = frequency_energy(embed_coords(ctx.model))
    keys = key_frequency_list(energy, rel_threshold)
    total = energy.sum()
    top_share = float(energy[1:].sort(descending=True).values[:top].sum() / total)
    return Measurement({"share": float(energy[keys].sum() / total), "n_key": float(len(keys)), "top_share": top_share}, None,
                       {"key_frequencies": keys})


@metric("modular.embed_svd", value=Table(labelled("s")))
def embed_svd(ctx: MetricContext, *, slice: Literal["row", "column"] = "row", top: Annotated[int, Field(ge=1, le=113)] = 8) -> Measurement:
    """The ``top`` singular values ``s=1..top`` of W_E without the "=" row (``row``) or without its last column (``column``, the course's ``W_E[:, :-1]``)."""
    _check_vocab(ctx.model)
    w_e = ctx.model.W_E.to(torch.float64)
    matrix = w_e[:-1] if slice == "row" else w_e[:, :-1]
    s = torch.linalg.svdvals(matrix)
    return Measurement({f"s={i + 1}": float(v) for i, v in enumerate(s[:top])}, None, {"slice": slice, "shape": list(matrix.shape)})


@metric("modular.neuron_frequencies", value=NameSet(labelled("k")))
def neuron_frequencies_metric(ctx: MetricContext, *, k_range: KRange = "full", threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0) -> Measurement:
    """The distinct frequencies of the neurons whose fraction explained exceeds ``threshold`` (0: every neuron, as the course's assert)."""
    freqs, frac, sizes = clusters(ctx.model, k_range, threshold)
    chosen = sorted(set(int(f) for f in freqs[frac > threshold]))
    counts = {f"k={k}": int((freqs[frac > threshold] == k).sum()) for k in chosen}
    return Measurement([f"k={k}" for k in chosen], None, {"counts": counts, "k_range": k_range})


@metric("modular.neuron_clusters", value=Table(either(labelled("k"), names("unexplained", "n_clusters"))), details=(ClusterSizes,))
def neuron_clusters(ctx: MetricContext, *, k_range: KRange = "full", threshold: Fraction = 0.85) -> Measurement:
    """Cluster sizes: ``k=K`` the neurons of frequency K explained more than ``threshold``, ``unexplained`` the rest; ``n_clusters``."""
    _freqs, _frac, sizes = clusters(ctx.model, k_range, threshold)
    value = dict(sizes, n_clusters=float(len(sizes) - 1))
    return Measurement(value, None, {"k_range": k_range, "threshold": threshold, "sizes": sizes})


@metric("modular.neuron_fourier_sparsity", value=Table(names("mean_frac_explained", "frac_neurons_above")))
def neuron_fourier_sparsity(ctx: MetricContext, *, k_range: KRange = "full", threshold: Fraction = 0.85) -> Measurement:
    """Mean fraction of a neuron's centred 2-D Fourier energy held by one frequency's const/linear/quadratic terms, and the share of neurons above ``threshold``."""
    _freqs, frac, _sizes = clusters(ctx.model, k_range, threshold)
    return Measurement({"mean_frac_explained": float(frac.mean()), "frac_neurons_above": float((frac > threshold).double().mean())}, None, {})


@metric("modular.weight_norm", value=Scalar())
def weight_norm(ctx: MetricContext) -> Measurement:
    """Sum of squares of every parameter (the chapter's total squared weight norm)."""
    total = sum(float(p.to(torch.float64).pow(2).sum()) for _, p in ctx.model.named_parameters())
    return Measurement(total, None, {})


@metric("modular.attention_to_positions", value=Table(names("to_0", "to_1", "to_2", "max_head_gap")))
def attention_to_positions(ctx: MetricContext) -> Measurement:
    """Mean attention from "=" to positions 0, 1, 2 over heads and pairs; ``max_head_gap`` the largest per-head |mean to_0 - mean to_1|."""
    _check_vocab(ctx.model)
    att = all_pairs(ctx.model).attention  # (p^2, h, 3)
    per_head = att.mean(0)  # (h, 3)
    value = {f"to_{i}": float(att[..., i].mean()) for i in range(3)}
    value["max_head_gap"] = float((per_head[:, 0] - per_head[:, 1]).abs().max())
    return Measurement(value, None, {"per_head": per_head.tolist()})


@metric("modular.pos_similarity", value=Table(names("cosine", "rel_difference")))
def pos_similarity(ctx: MetricContext) -> Measurement:
    """W_pos[0] against W_pos[1]: cosine similarity and ``||W_pos[0] - W_pos[1]|| / ||W_pos[0]||``."""
    w = ctx.model.W_pos.to(torch.float64)
    cos = torch.nn.functional.cosine_similarity(w[0], w[1], dim=0)
    return Measurement({"cosine": float(cos), "rel_difference": float((w[0] - w[1]).norm() / w[0].norm())}, None, {})


@metric("modular.neuron_symmetry", value=Scalar())
def neuron_symmetry(ctx: MetricContext) -> Measurement:
    """``||N(x, y) - N(y, x)|| / ||N - mean N||`` over all neurons and pairs (0: symmetric in x and y)."""
    _check_vocab(ctx.model)
    grid = all_pairs(ctx.model).neurons.reshape(P, P, -1)
    centred = grid - grid.mean((0, 1))
    return Measurement(float((grid - grid.transpose(0, 1)).norm() / centred.norm()), None, {})


@metric("modular.neuron_frequency_of", value=Table(labelled("neuron")))
def neuron_frequency_of(ctx: MetricContext, *, k_range: KRange = "full") -> Measurement:
    """Each neuron's frequency (``neuron=N``: the k whose const/linear/quadratic terms hold most of its centred 2-D Fourier energy)."""
    freqs, frac, _sizes = clusters(ctx.model, k_range, 0.85)
    return Measurement({f"neuron={n}": float(f) for n, f in enumerate(freqs)}, None,
                       {"frac_explained": [round(float(v), 4) for v in frac], "k_range": k_range})
