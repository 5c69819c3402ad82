"""The course's grokking checkpoint format: a full run (``state_dicts``) or one state dict in the paper's layout.

No course weights are used: files of that format are built here from random tensors, and the
converted model's logits are checked against the paper's own forward pass written out below.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from fixtures import registry
from fixtures.grokking_config import PAPER_SHAPES
from fixtures.modular_task import all_data
from harness.core.errors import ModelUnavailable, WeightsIntegrityError


def paper_state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) / math.sqrt(128) for k, shape in PAPER_SHAPES.items()}
    state["blocks.0.attn.mask"] = torch.tril(torch.ones(3, 3))  # a buffer the paper's model saves
    return state


def paper_forward(s: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """The paper's Transformer (Nanda's layout), written from its einsums: logits (batch, pos, vocab)."""
    x = s["embed.W_E"][:, tokens].permute(1, 2, 0) + s["pos_embed.W_pos"]
    k = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_K"], x)
    q = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_Q"], x)
    v = torch.einsum("ihd,bpd->biph", s["blocks.0.attn.W_V"], x)
    scores = torch.einsum("biph,biqh->biqp", k, q)
    mask = torch.tril(torch.ones(3, 3))
    scores = torch.where(mask.bool(), scores, torch.tensor(-1e10)) / math.sqrt(32)
    z = torch.einsum("biph,biqp->biqh", v, scores.softmax(-1))
    z_flat = z.permute(0, 2, 1, 3).reshape(z.shape[0], 3, -1)
    x = x + torch.einsum("df,bqf->bqd", s["blocks.0.attn.W_O"], z_flat)
    hidden = torch.relu(torch.einsum("md,bpd->bpm", s["blocks.0.mlp.W_in"], x) + s["blocks.0.mlp.b_in"])
    x = x + torch.einsum("dm,bpm->bpd", s["blocks.0.mlp.W_out"], hidden) + s["blocks.0.mlp.b_out"]
    return x @ s["unembed.W_U"]


@pytest.fixture
def full_run(tmp_path: Path):
    states = [paper_state(i) for i in range(3)]
    path = tmp_path / "full_run_data.pth"
    torch.save({"state_dicts": states, "epochs": [0, 100, 200], "model": states[-1], "config": {"p": 113}}, path)
    registry.set_weights_override("arena-grokking", path)
    yield states, path
    registry.set_weights_override("arena-grokking", None)


def test_offline_the_course_model_is_skipped_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERP_CLAIMS_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    for name in ("arena-grokking", "arena-grokking@index=123"):
        start = time.perf_counter()
        with pytest.raises(ModelUnavailable, match="grokking_full_run_data/full_run_data.pth"):
            registry.get_model_entry(name).ensure_available()
        assert time.perf_counter() - start < 0.5


def test_every_snapshot_is_addressable_and_shapes_are_declared() -> None:
    entries = registry.model_entries()
    assert {"arena-grokking@index=0", "arena-grokking@index=400", "arena-grokking@index=499"} <= set(entries)
    shape = entries["arena-grokking"].shape
    assert (shape.n_layers, shape.n_heads, shape.d_model, shape.d_head, shape.d_vocab, shape.n_ctx) == (1, 4, 128, 32, 114, 3)


def test_a_chosen_snapshot_of_a_full_run_loads_as_the_paper_computes(full_run) -> None:
    states, _path = full_run
    handle = registry.get_model_entry("arena-grokking@index=1").load()
    tokens = all_data().tokens[::97]
    with torch.no_grad():
        ours = handle.run_with_hooks(tokens, [])
    assert torch.allclose(ours, paper_forward(states[1], tokens), atol=1e-5, rtol=1e-4)
    assert "state_dicts[1]" in handle.identity.origin
    assert float(handle.b_Q.abs().max()) == 0.0


def test_the_default_is_index_400_and_out_of_range_is_an_integrity_error(full_run) -> None:
    with pytest.raises(WeightsIntegrityError, match="index 400 is out of range"):
        registry.get_model_entry("arena-grokking").load()


def test_a_single_state_dict_is_accepted(tmp_path: Path) -> None:
    state = paper_state(7)
    path = tmp_path / "one.pth"
    torch.save(state, path)
    registry.set_weights_override("arena-grokking", path)
    try:
        handle = registry.get_model_entry("arena-grokking").load()
        tokens = all_data().tokens[::211]
        with torch.no_grad():
            assert torch.allclose(handle.run_with_hooks(tokens, []), paper_forward(state, tokens), atol=1e-5, rtol=1e-4)
        with pytest.raises(WeightsIntegrityError, match="single state dict"):
            registry.get_model_entry("arena-grokking@index=3").load()
    finally:
        registry.set_weights_override("arena-grokking", None)


def test_a_wrong_layout_names_the_key(tmp_path: Path) -> None:
    state = paper_state(1)
    state["blocks.0.mlp.W_in"] = state["blocks.0.mlp.W_in"].T.contiguous()  # TransformerLens's layout
    path = tmp_path / "tl.pth"
    torch.save(state, path)
    registry.set_weights_override("arena-grokking", path)
    try:
        with pytest.raises(WeightsIntegrityError, match=r"blocks.0.mlp.W_in has shape \(128, 512\)"):
            registry.get_model_entry("arena-grokking").load()
    finally:
        registry.set_weights_override("arena-grokking", None)
