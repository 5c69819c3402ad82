"""The grokking chapter's metrics against dense references and analytic ground truths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fixtures.grokking_config import MODEL_CONFIG
from fixtures.grokking_model import initial_state_dict
from fixtures.modular_task import P, all_data
from fixtures.weights_io import build_hooked
from harness.core.model_handle import ModelHandle
from harness.core.model_identity import ModelIdentity
from harness.metrics import _modular as M
from harness.metrics import modular, modular_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time


def handle_of(state: dict[str, torch.Tensor], name: str) -> ModelHandle:
    hooked = build_hooked(name, MODEL_CONFIG, state, Path(name), None)
    return ModelHandle(hooked, ModelIdentity(name, "planted", name, None), bos_token_id=None)


class Ctx:
    def __init__(self, model: ModelHandle) -> None:
        self.model = model
        self.inputs = None


def planted_embedding(energies: dict[int, float], seed: int = 0) -> dict[str, torch.Tensor]:
    """A random model whose W_E[:p] = F^T S with S nonzero only in the cos/sin rows of the given frequencies."""
    state = initial_state_dict(seed)
    g = torch.Generator().manual_seed(seed)
    coords = torch.zeros(P, 128, dtype=torch.float64)
    for k, energy in energies.items():
        block = torch.randn(2, 128, generator=g, dtype=torch.float64)
        coords[2 * k - 1: 2 * k + 1] = block * math.sqrt(energy) / block.norm()
    w_e = state["embed.W_E"].clone()
    w_e[:P] = (M.fourier_basis().T @ coords).float()
    state["embed.W_E"] = w_e
    return state


def test_fourier_basis_is_orthonormal_and_named() -> None:
    for p in (3, 7, 113):
        basis = M.fourier_basis(p)
        assert torch.allclose(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12)
    basis = M.fourier_basis()
    assert M.basis_names()[:3] == ["const", "cos1", "sin1"] and M.basis_names()[-1] == "sin56"
    x = torch.arange(P, dtype=torch.float64)
    assert torch.allclose(basis[2 * 14 - 1], torch.cos(2 * math.pi * 14 * x / P) / math.sqrt(P / 2), atol=1e-12)
    with pytest.raises(ValueError):
        M.fourier_basis(8)


def test_2d_fourier_equals_the_explicit_sum() -> None:
    p = 7
    g = torch.Generator().manual_seed(0)
    grid = torch.randn(p, p, 3, generator=g, dtype=torch.float64)
    basis = M.fourier_basis(p)
    dense = torch.zeros(p, p, 3, dtype=torch.float64)
    for i in range(p):
        for j in range(p):
            for x in range(p):
                for y in range(p):
                    dense[i, j] += basis[i, x] * basis[j, y] * grid[x, y]
    assert torch.allclose(M.fourier_2d(grid, basis), dense, atol=1e-12)
    # orthonormal: the energy is kept
    assert torch.allclose(M.fourier_2d(grid, basis).pow(2).sum(), grid.pow(2).sum())


def test_planted_embedding_energy_and_key_frequencies() -> None:
    planted = {3: 10.0, 14: 8.0, 56: 5.0, 20: 0.2}
    model = handle_of(planted_embedding(planted), "planted-embed")
    energy = modular.embed_fourier_energy(Ctx(model)).value
    for k in range(57):
        assert energy[f"k={k}"] == pytest.approx(planted.get(k, 0.0), abs=1e-5)
    keys = modular.key_frequencies(Ctx(model), rel_threshold=0.05).value
    assert sorted(keys) == sorted(["k=3", "k=14", "k=56"])  # 0.2 < 0.05 x 10
    share = modular.key_frequency_share(Ctx(model), top=3).value
    assert share["share"] == pytest.approx(23 / 23.2, abs=1e-5) and share["n_key"] == 3


def test_text_and_course_code_variants_differ_on_a_sparse_embedding() -> None:
    model = handle_of(planted_embedding({5: 4.0}), "planted-sparse")
    text = modular.embed_fourier_rows(Ctx(model), variant="text").value
    code = modular.embed_fourier_rows(Ctx(model), variant="course_code").value
    assert text["row=9"] + text["row=10"] == pytest.approx(4.0, abs=1e-5)  # cos5, sin5
    assert sum(v for k, v in text.items() if k not in ("row=9", "row=10")) < 1e-8
    # F^T is not F: the course code's rows are not the cos 5 / sin 5 coordinates (same total, F^T is orthogonal)
    assert code["row=9"] + code["row=10"] < 0.5 * 4.0 and sum(code.values()) == pytest.approx(4.0, abs=1e-5)


def test_embed_svd_slices() -> None:
    state = initial_state_dict(1)
    model = handle_of(state, "svd")
    w_e = state["embed.W_E"].double()
    row = modular.embed_svd(Ctx(model), slice="row", top=3).value
    col = modular.embed_svd(Ctx(model), slice="column", top=3).value
    assert row["s=1"] == pytest.approx(float(torch.linalg.svdvals(w_e[:-1])[0]), rel=1e-9)
    assert col["s=1"] == pytest.approx(float(torch.linalg.svdvals(w_e[:, :-1])[0]), rel=1e-9)
    assert row["s=1"] != col["s=1"]


def single_frequency_neurons(freqs: list[int], p: int = P) -> torch.Tensor:
    """(p^2, n) ReLU(a cos(w k x + f) + a cos(w k y + f) + b): each neuron built from one frequency."""
    x = torch.arange(p, dtype=torch.float64)
    cols = []
    for i, k in enumerate(freqs):
        phase = 0.3 * i
        cx = torch.cos(2 * math.pi * k * x / p + phase)
        cols.append(torch.relu(cx[:, None] + cx[None, :] + 0.2).flatten())
    return torch.stack(cols, 1)


def test_neuron_frequency_of_planted_neurons_and_the_course_range() -> None:
    freqs_in = [14, 35, 41, 42, 52, 56, 1]
    freqs, frac = M.neuron_frequencies(single_frequency_neurons(freqs_in), 56)
    assert freqs.tolist() == freqs_in
    assert bool((frac > 0.85).all())
    course, course_frac = M.neuron_frequencies(single_frequency_neurons(freqs_in), 55)
    assert course.tolist()[:5] == freqs_in[:5] and int(course[5]) != 56 and float(course_frac[5]) < 0.5


def test_neuron_fraction_against_a_dense_loop() -> None:
    neurons = torch.randn(P * P, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).relu()
    freqs, frac = M.neuron_frequencies(neurons, 56)
    basis = M.fourier_basis()
    for n in range(2):
        grid = neurons[:, n].reshape(P, P)
        grid = grid - grid.mean()
        coeffs = basis @ grid @ basis.T
        shares = []
        for k in range(1, 57):
            rows = [0, 2 * k - 1, 2 * k]
            shares.append(sum(float(coeffs[i, j]) ** 2 for i in rows for j in rows) / float(coeffs.pow(2).sum()))
        assert int(freqs[n]) == 1 + max(range(56), key=lambda i: shares[i])
        assert float(frac[n]) == pytest.approx(max(shares), rel=1e-9)


def trig_logits(ks: list[int], p: int = P) -> torch.Tensor:
    """(p^2, p) logits sum_k cos(w_k (x + y - z)) + a per-answer constant: exactly the trig algorithm."""
    data = all_data(p)
    z = torch.arange(p, dtype=torch.float64)
    s = (data.x + data.y).double()[:, None] - z[None, :]
    out = sum(5.0 * torch.cos(2 * math.pi * k * s / p) for k in ks)
    return out + 0.1 * z[None, :]


def test_restricted_logits_keep_the_trig_algorithm_and_exclusion_removes_it() -> None:
    logits = trig_logits([14, 35])
    kept = modular_logits.restricted_logits(logits, [14, 35], bias_correction=True)
    assert torch.allclose(kept, logits, atol=1e-9)
    dropped = modular_logits.restricted_logits(logits, [3], bias_correction=True)
    # nothing of the algorithm is left: only the per-answer constants that the bias correction restores
    assert torch.allclose(dropped, 0.1 * torch.arange(P, dtype=torch.float64).expand(P * P, P), atol=1e-9)
    excluded = logits - M.project_onto(logits, modular_logits.trig_directions([14]))
    assert torch.allclose(excluded, trig_logits([35]), atol=1e-9)


def test_trig_directions_are_orthonormal() -> None:
    d = modular_logits.trig_directions([1, 14, 56])
    assert torch.allclose(d @ d.T, torch.eye(6, dtype=torch.float64), atol=1e-10)


def test_relu_quadratic_fit_reproduces_the_course() -> None:
    fit = M.relu_quadratic_fit(42)
    assert [round(fit[k], 3) for k in ("const", "cos_x", "cos_y", "cos_x_cos_y")] == [9.190, 6.807, 6.807, 3.566]
    assert round(fit["r2"], 3) == 0.966 and round(fit["r2_without_quadratic"], 3) == 0.849


def test_loss_weight_norm_and_symmetry_on_a_random_model() -> None:
    state = initial_state_dict(2)
    model = handle_of(state, "random-grok")
    value = modular.loss(Ctx(model)).value
    assert all(abs(v - math.log(P)) < 0.5 for v in value.values())
    assert modular.weight_norm(Ctx(model)).value == pytest.approx(sum(float(v.double().pow(2).sum()) for v in state.values()), rel=1e-9)
    att = modular.attention_to_positions(Ctx(model)).value
    assert att["to_0"] + att["to_1"] + att["to_2"] == pytest.approx(1.0, abs=1e-6)
    sym_state = dict(state)
    sym_state["pos_embed.W_pos"] = state["pos_embed.W_pos"].clone()
    sym_state["pos_embed.W_pos"][1] = sym_state["pos_embed.W_pos"][0]
    symmetric = handle_of(sym_state, "symmetric-grok")
    assert modular.neuron_symmetry(Ctx(symmetric)).value < 1e-5 < modular.neuron_symmetry(Ctx(model)).value
    assert modular.pos_similarity(Ctx(symmetric)).value["cosine"] == pytest.approx(1.0)


def test_a_constant_neuron_is_explained_by_no_frequency() -> None:
    neurons = torch.cat([torch.zeros(P * P, 1, dtype=torch.float64), single_frequency_neurons([7])], 1)
    freqs, frac = M.neuron_frequencies(neurons, 56)
    assert float(frac[0]) == 0.0 and int(freqs[1]) == 7 and not bool(frac.isnan().any())
