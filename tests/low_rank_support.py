"""Shared by the low-rank test modules: the rank curve measured on the planted split copier, logit rows, autograd references and a coupled embedding problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fixtures.planted import PLANTED_MODELS
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.session import Session


def rank_curve_on_split_copier(**params: Any) -> Measurement:
    """``low_rank.rank_curve`` with ``params`` (validated as a claim's would be) on ``planted-split-copy``."""
    identity = ModelIdentity(name="planted-split-copy", source="planted", weights_sha256=None, config_sha256=None)
    handle = ModelHandle(PLANTED_MODELS["planted-split-copy"].build(), identity, bos_token_id=None)
    info = get_metric("low_rank.rank_curve")
    return info.function(MetricContext(handle, None, Session()), **dict(info.validate_params(params)))


def logit_rows(b: int, V: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random float32 logits (b, V) (rounded to halves when ``ties``: many equal entries), one diagonal
    column per row, and the logits with that column at -inf (what a hardest-columns pass ranks)."""
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((b, V)).astype(np.float32)
    if ties:
        L = np.round(L * 2).astype(np.float32)
    cols = rng.integers(0, V, b)
    off = L.copy()
    off[np.arange(b), cols] = -np.inf
    return L, cols, off


def assert_hardest_columns(off: np.ndarray, cols: np.ndarray, K: int, vals: np.ndarray, found: np.ndarray) -> None:
    """``vals``/``found`` are each row's K largest off-diagonal entries (descending) and distinct columns holding them."""
    np.testing.assert_array_equal(vals, -np.sort(-off, axis=1)[:, : min(K, off.shape[1] - 1)])
    np.testing.assert_array_equal(np.take_along_axis(off, found, 1), vals)
    assert not (found == cols[:, None]).any()
    assert all(len(set(row)) == len(row) for row in found.tolist())


def autograd_rows(E: np.ndarray, U: np.ndarray, A: np.ndarray, B: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """The autograd reference's pieces for ``rows``: leaf tensors ``A``, ``B``; logits ``L = E[rows] A B U``
    (b, V); ``own`` (each row's diagonal column), ``diag`` = L[i, own_i], ``off`` = L detached with the diagonal at -inf."""
    At, Bt = (torch.tensor(x, requires_grad=True) for x in (A, B))
    L = torch.tensor(E[rows]) @ At @ Bt @ torch.tensor(U)
    ar, own = torch.arange(len(rows)), torch.tensor(rows)
    off = L.detach().clone()
    off[ar, own] = -torch.inf
    return {"A": At, "B": Bt, "L": L, "own": own, "diag": L[ar, own], "off": off}


def coupled_problem(V: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Float32 W_E (V, d) and W_U (d, V) = (0.5 W_E + 0.866 noise)^T: an embedding its unembedding partly copies."""
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((V, d)).astype(np.float32)
    return E, (0.5 * E + 0.866 * rng.standard_normal((V, d)).astype(np.float32)).T
