"""Computation in superposition (ARENA 1.5.4, the course's NeuronComputationModel): the maths of its neurons.

One instance computes x' = ReLU(W2 ReLU(W1 x) + b) from x ∈ [−1, 1]^F and is trained towards |x|.
Neuron n reads W1[n] (a row, [F]) and writes W2[:, n] (a column, [F]). Definitions:

- m_n = max_i |W1[n,i]| / √(Σ_i W1[n,i]² + 1e-6), the course's monosemanticity (utils.py:62-80); n is
  monosemantic when m_n > ``threshold``;
- f(n) = argmax_i |W1[n,i]|, the neuron's feature; its *exposure* is sign W1[n, f(n)] (positive: the neuron
  computes ReLU(x_f), negative: ReLU(−x_f));
- its gain g_n = |W1[n, f(n)]| · W2[f(n), n]: since |x| = ReLU(x) + ReLU(−x), a pair of monosemantic neurons
  of opposite exposure, both writing positively to f, with gain 1 each computes |x_f| exactly (the gains
  reported are those of such pair neurons; a lone neuron for a feature has no reason to have gain 1);
- the asymmetric motif (the page's P:1529-1535): a neuron n and features i ≠ j with |W1[n,i]| ≥ ``min_weight``,
  |W1[n,i]| ≥ ``ratio``·|W1[n,j]| > 0.1, |W2[j,n]| ≥ ``min_weight`` and |W2[j,n]| ≥ ``ratio``·|W2[i,n]|: the
  neuron reads mostly i and writes mostly j.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from harness.circuits.superposition import monosemanticity

ALIVE_NORM = 1e-3


@dataclass(frozen=True)
class AbsNeurons:
    """The neurons of one abs instance, summarised (see the module docstring for the definitions)."""

    monosemantic: int
    """Live neurons (‖W1[n]‖ > 1e-3) with m_n > threshold."""
    positive_w2: int
    """Monosemantic neurons whose output weight to their own feature, W2[f(n), n], is positive."""
    features: int
    """Distinct features f(n) of the monosemantic neurons."""
    both_signs_features: int
    """Features with monosemantic neurons of both exposures."""
    pair_features: int
    """Features with a monosemantic neuron of each exposure, both with W2[f, n] > 0 (an abs pair)."""
    min_gain: float
    """The smallest gain of a neuron in an abs pair (0 when there is no pair)."""
    max_gain: float
    motif_neurons: int
    """Neurons that show the asymmetric motif for some i ≠ j."""

    @property
    def both_signs_fraction(self) -> float:
        return self.both_signs_features / self.features if self.features else 0.0


def neuron_features(W1: Tensor) -> Tensor:
    """f(n) = argmax_i |W1[n,i]| [d_hidden] of W1 [d_hidden, n_features]."""
    return W1.abs().argmax(dim=1)


def motif_neurons(W1: Tensor, W2: Tensor, *, ratio: float = 3.0, min_weight: float = 0.5) -> Tensor:
    """Boolean [d_hidden]: neuron n shows the asymmetric motif for some i ≠ j (module docstring).

    W1 [d_hidden, n_features], W2 [n_features, d_hidden]."""
    read = W1.abs()[:, :, None]                 # [n, i, 1]: |W1[n,i]|
    read_other = W1.abs()[:, None, :]           # [n, 1, j]: |W1[n,j]|
    write = W2.T.abs()                          # [n, f]: |W2[f,n]|
    write_j, write_i = write[:, None, :], write[:, :, None]
    hits = ((read >= min_weight) & (read >= ratio * read_other) & (ratio * read_other > 0.1)
            & (write_j >= min_weight) & (write_j >= ratio * write_i))
    hits &= ~torch.eye(W1.shape[1], dtype=torch.bool)[None]
    return hits.flatten(1).any(dim=1)


def abs_neurons(W1: Tensor, W2: Tensor, *, threshold: float = 0.9, ratio: float = 3.0, min_weight: float = 0.5) -> AbsNeurons:
    """:class:`AbsNeurons` of W1 [d_hidden, n_features] and W2 [n_features, d_hidden]."""
    feature = neuron_features(W1)
    neurons = torch.arange(W1.shape[0])
    exposure = W1[neurons, feature]
    own_write = W2[feature, neurons]
    mono = (monosemanticity(W1) > threshold) & (W1.norm(dim=1) > ALIVE_NORM)
    positive_exposure, negative_exposure, pair_positive, pair_negative = set(), set(), set(), set()
    for n in neurons[mono].tolist():
        f, up, writes = int(feature[n]), bool(exposure[n] > 0), bool(own_write[n] > 0)
        (positive_exposure if up else negative_exposure).add(f)
        if writes:
            (pair_positive if up else pair_negative).add(f)
    pairs = pair_positive & pair_negative
    in_pair = mono & (own_write > 0) & torch.tensor([int(f) in pairs for f in feature.tolist()], dtype=torch.bool)
    gains = (exposure.abs() * own_write)[in_pair]
    return AbsNeurons(
        monosemantic=int(mono.sum()), positive_w2=int((own_write[mono] > 0).sum()),
        features=len(positive_exposure | negative_exposure),
        both_signs_features=len(positive_exposure & negative_exposure),
        pair_features=len(pairs),
        min_gain=float(gains.min()) if gains.numel() else 0.0, max_gain=float(gains.max()) if gains.numel() else 0.0,
        motif_neurons=int(motif_neurons(W1, W2, ratio=ratio, min_weight=min_weight).sum()),
    )


def monosemanticity_order(W1: Tensor) -> Tensor:
    """The neuron order [d_hidden] by descending m_n: the reordering the course's ``plot_features_in_Nd``
    applies to the neurons it plots (utils.py:94, 125-128), in place on a CPU tensor."""
    return monosemanticity(W1).argsort(descending=True, stable=True)
