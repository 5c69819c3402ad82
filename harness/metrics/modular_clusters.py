"""ARENA 1.5.2's validation of the neuron clusters by projection (G16, G17).

On all p^2 pairs (row-major (x, y) grid, :mod:`harness.metrics._modular`), float64. N is the
post-ReLU activations at "=" (p^2, d_mlp), ``W_logit = W_out W_U[:, :p]`` (d_mlp, p). Each neuron
belongs to the cluster of its frequency k when that frequency's const, linear and quadratic terms
hold more than ``threshold`` of its centred 2-D Fourier energy, else to the "always-firing"
cluster (:func:`~harness.metrics.modular.clusters`; the course sets its frequency to -1).

For cluster k, ``B_k`` (p^2, 9) holds the 2-D basis functions ``row_i(x) row_j(y)`` for i, j in
{const, cos k, sin k} (orthonormal over the grid); its neurons' activations are projected,
``B_k B_k^T N_k``, and mapped to logits through their rows of ``W_logit``. The always-firing
cluster contributes ``N_a W_logit[a]`` unprojected. The new logits are the sum of the
contributions, bias-corrected: plus the grid mean of (original - new) per answer, as the course's
``test_logits(..., bias_correction=True)``. The loss is float64 cross-entropy on ``split``.

``modular.cluster_projection_loss`` gives ``original``, ``projected`` (every cluster, the
always-firing one included, G16's first number), ``without_always_firing`` (G16's second),
``k=K`` (cluster K's contribution removed, the others kept as above, G17), ``min_ablation``
(the smallest ``k=K``: the always-firing cluster "barely matters" when ``without_always_firing``
is below it) and ``min_ablation_ratio`` (``min_ablation`` / ``projected``: every cluster matters
when it is well above 1). With no frequency cluster both are 0.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from fixtures.modular_task import P
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.core.value_shape import Table, either, labelled, names
from harness.metrics._modular import fourier_basis, split_loss
from harness.metrics.modular import KRange, _check_vocab, all_pairs, clusters
from harness.metrics.modular_logits import Split
from harness.registry import metric


_LOSSES: dict[tuple[str, str, float, str], tuple[dict[str, float], dict[str, float]]] = {}  # the last few, by model identity


def frequency_block(k: int, p: int = P) -> torch.Tensor:
    """B_k (p^2, 9): the 2-D basis functions row_i(x) row_j(y), i, j in {const, cos k, sin k}, flattened row-major."""
    basis = fourier_basis(p)
    rows = basis[[0, 2 * k - 1, 2 * k]]
    return torch.einsum("ix,jy->xyij", rows, rows).reshape(p * p, 9)


def cluster_logits(neurons: torch.Tensor, w_logit: torch.Tensor, freqs: torch.Tensor, explained: torch.Tensor) -> dict[int, torch.Tensor]:
    """Each cluster's logit contribution (p^2, p): k -> projected onto B_k, 0 -> the always-firing cluster, unprojected.

    ``neurons`` (p^2, d_mlp), ``w_logit`` (d_mlp, p), ``freqs`` (d_mlp,) each neuron's frequency,
    ``explained`` (d_mlp,) bool, the neurons in their frequency's cluster.
    """
    out: dict[int, torch.Tensor] = {}
    for k in sorted(set(int(f) for f in freqs[explained])):
        chosen = explained & (freqs == k)
        block = frequency_block(k)
        out[k] = block @ (block.T @ neurons[:, chosen]) @ w_logit[chosen]
    rest = ~explained
    out[0] = neurons[:, rest] @ w_logit[rest]
    return out


def bias_corrected(new: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``new`` plus the grid mean of (original - new), per answer (the course's bias correction)."""
    return new + (original - new).mean(0, keepdim=True)


@metric("modular.cluster_projection_loss",
        value=Table(either(labelled("k"), names("original", "projected", "without_always_firing", "min_ablation", "min_ablation_ratio"))))
def cluster_projection_loss(ctx: MetricContext, *, k_range: KRange = "full",
                            threshold: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.85, split: Split = "all") -> Measurement:
    """Loss of the logits rebuilt from each cluster projected onto its frequency's 9 directions (G16), and with one cluster removed (G17)."""
    _check_vocab(ctx.model)
    key = (ctx.model.identity.key, k_range, threshold, split)
    if key not in _LOSSES:
        while len(_LOSSES) >= 4:
            _LOSSES.pop(next(iter(_LOSSES)))
        _LOSSES[key] = _projection_losses(ctx.model, k_range, threshold, split)
    value, sizes = _LOSSES[key]
    return Measurement(dict(value), None, {"k_range": k_range, "threshold": threshold, "split": split, "sizes": dict(sizes)}, unit="nats")


def _projection_losses(model: ModelHandle, k_range: str, threshold: float, split: str) -> tuple[dict[str, float], dict[str, float]]:
    """(the metric's value, the cluster sizes) of ``model``."""
    run = all_pairs(model)
    params = dict(model.named_parameters())
    w_logit = params["blocks.0.mlp.W_out"].detach().to(torch.float64) @ params["unembed.W_U"].detach().to(torch.float64)[:, :P]
    freqs, frac, sizes = clusters(model, k_range, threshold)
    parts = cluster_logits(run.neurons, w_logit, freqs, frac > threshold)
    total = sum(parts.values())
    original = run.logits  # (p^2, p) float64, converted once for every cluster's loss

    def loss(logits: torch.Tensor) -> float:
        return split_loss(bias_corrected(logits, original), split)

    projected = loss(total)
    value = {"original": split_loss(original, split), "projected": projected, "without_always_firing": loss(total - parts[0])}
    for k in (k for k in parts if k):
        value[f"k={k}"] = loss(total - parts[k])
    value["min_ablation"] = min((value[f"k={k}"] for k in parts if k), default=0.0)
    value["min_ablation_ratio"] = value["min_ablation"] / projected
    return value, sizes
