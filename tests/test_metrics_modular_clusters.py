"""G16/G17's cluster projection: the 9-direction block, planted clusters, and a dense reference of the course's loop."""

from __future__ import annotations

import pytest
import torch

from fixtures.grokking_model import initial_state_dict
from fixtures.modular_task import P, all_data
from harness.metrics import _modular as M
from harness.metrics import modular_clusters
from harness.metrics.modular import kept_all_pairs
from tests.test_metrics_modular import Ctx, handle_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a 12,769 x 512 model: one thread is several times cheaper in CPU time


def test_frequency_block_is_orthonormal_and_spans_the_2d_basis_terms() -> None:
    block = modular_clusters.frequency_block(7)
    assert block.shape == (P * P, 9)
    assert torch.allclose(block.T @ block, torch.eye(9, dtype=torch.float64), atol=1e-12)
    basis = M.fourier_basis()
    cos_x_sin_y = torch.outer(basis[13], basis[14]).flatten()  # cos 7 (x) sin 7 (y)
    assert torch.allclose(block @ (block.T @ cos_x_sin_y), cos_x_sin_y, atol=1e-12)
    other = torch.outer(basis[15], basis[0]).flatten()  # cos 8 (x): outside the block
    assert float((block.T @ other).abs().max()) < 1e-12


def dense_projection(vecs: torch.Tensor, k: int) -> torch.Tensor:
    """The course's project_onto_frequency, direction by direction: sum of v (v . vecs) over its 9 terms."""
    basis = M.fourier_basis()
    out = torch.zeros_like(vecs)
    for i in (0, 2 * k - 1, 2 * k):
        for j in (0, 2 * k - 1, 2 * k):
            v = torch.outer(basis[i], basis[j]).flatten()
            out += v[:, None] * (v @ vecs)[None, :]
    return out


def test_planted_clusters_keep_their_own_frequency_and_the_always_firing_cluster_is_kept_whole() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 6
    planted = modular_clusters.frequency_block(3) @ torch.randn(9, n, generator=gen, dtype=torch.float64)
    noise = modular_clusters.frequency_block(20)[:, 1:] @ torch.randn(8, n, generator=gen, dtype=torch.float64)  # the const term is shared
    always = torch.randn(P * P, 2, generator=gen, dtype=torch.float64)
    neurons = torch.cat([planted + noise, always], 1)
    w_logit = torch.randn(n + 2, P, generator=gen, dtype=torch.float64)
    freqs = torch.tensor([3] * n + [5, 5])
    explained = torch.tensor([True] * n + [False, False])
    parts = modular_clusters.cluster_logits(neurons, w_logit, freqs, explained)
    assert sorted(parts) == [0, 3]
    assert torch.allclose(parts[3], planted @ w_logit[:n], atol=1e-9)  # frequency 20's part projected away
    assert torch.allclose(parts[3], dense_projection(neurons[:, :n], 3) @ w_logit[:n], atol=1e-9)
    assert torch.allclose(parts[0], always @ w_logit[n:], atol=1e-12)


def test_bias_correction_removes_a_constant_offset_per_answer() -> None:
    original = torch.randn(P * P, P, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shifted = original + torch.arange(P, dtype=torch.float64)
    assert torch.allclose(modular_clusters.bias_corrected(shifted, original), original, atol=1e-12)


def test_cluster_projection_loss_against_the_dense_loop_on_a_model() -> None:
    """On a model whose neurons have no clusters at 0.85, a low threshold makes clusters; the metric
    equals the course's loop written out (projection per direction, sum, bias correction).

    At 0.11 this model has 8 clusters (21 neurons: frequency 7 has 4, 54 and 17 have 2) and 491
    always-firing neurons: clusters of one and of several neurons, and a large always-firing part
    (at 0.05: 53 clusters, each another full-grid dense projection and loss, the same checks)."""
    THRESHOLD = 0.11
    model = handle_of({k: 3 * v for k, v in initial_state_dict(5).items()}, "clusters-grok")
    got = modular_clusters.cluster_projection_loss(Ctx(model), threshold=THRESHOLD).value
    run = kept_all_pairs(model)  # the run the metric read (not a second forward pass of 12,769 pairs) ...
    assert run is not None
    rows = torch.arange(0, P * P, 199)  # ... is this model's: 65 pairs over the grid, run afresh
    with torch.no_grad():  # (its logits and the neurons the reference reads: nothing changed them in place)
        fresh, cache = model._hooked.run_with_cache(all_data().tokens[rows], names_filter="blocks.0.mlp.hook_post")
    # float32 rounding only: 65 rows and 12,769 take other kernel blocks (ATen's generic kernels:
    # up to 2.7e-5 apart in logits of ~20, 3.8e-6 in neurons; this machine's: equal)
    assert torch.allclose(run.logits[rows], fresh[:, -1, :P].double(), rtol=1e-4, atol=1e-5)
    assert torch.allclose(run.neurons[rows], cache["blocks.0.mlp.hook_post"][:, -1].double(), rtol=1e-4, atol=1e-5)
    freqs, frac = M.neuron_frequencies(run.neurons, P // 2)
    params = dict(model.named_parameters())
    w_logit = params["blocks.0.mlp.W_out"].detach().double() @ params["unembed.W_U"].detach().double()[:, :P]
    parts, sizes = {}, {}
    for k in sorted(set(int(f) for f in freqs[frac > THRESHOLD])):
        chosen = (freqs == k) & (frac > THRESHOLD)
        parts[k], sizes[k] = dense_projection(run.neurons[:, chosen], k) @ w_logit[chosen], int(chosen.sum())
    always = run.neurons[:, frac <= THRESHOLD] @ w_logit[frac <= THRESHOLD]
    assert len(parts) >= 2 and max(sizes.values()) >= 2, f"the low threshold should make clusters, one of several neurons: {sizes}"

    def loss(logits: torch.Tensor) -> float:
        return M.split_loss(logits + (run.logits - logits).mean(0), "all")

    total = sum(parts.values()) + always
    assert got["projected"] == pytest.approx(loss(total), rel=1e-9)
    assert got["without_always_firing"] == pytest.approx(loss(total - always), rel=1e-9)
    for k, part in parts.items():
        assert got[f"k={k}"] == pytest.approx(loss(total - part), rel=1e-9)
    assert got["min_ablation"] == pytest.approx(min(loss(total - part) for part in parts.values()), rel=1e-9)
    assert got["original"] == pytest.approx(M.split_loss(run.logits, "all"), rel=1e-12)
