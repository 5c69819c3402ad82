"""The shipped trained toy model (fixtures/weights/toy-attn-2l.*): file integrity, config, and loss.

The numbers (sha256, evaluation loss, tolerances) are read from the json that
``python -m fixtures.train_toy`` wrote next to the weights; nothing is hard-coded here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "weights"
JSON_PATH = WEIGHTS_DIR / "toy-attn-2l.json"


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(JSON_PATH.read_text())


@pytest.fixture(scope="module")
def weights_path(meta) -> Path:
    return WEIGHTS_DIR / meta["weights_file"]


@pytest.fixture(scope="module")
def state_dict(weights_path):
    from safetensors.torch import load_file

    return load_file(str(weights_path))


@pytest.fixture(scope="module")
def model(meta, state_dict):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**meta["model_config"])
    m = HookedTransformer(cfg)
    missing, unexpected = m.load_state_dict(state_dict, strict=False)
    assert not unexpected, unexpected
    # Only the attention buffers (causal mask, IGNORE value) are rebuilt rather than stored.
    assert all(k.rsplit(".", 1)[-1] in ("mask", "IGNORE") for k in missing), missing
    m.eval()
    return m


def test_sha256_matches_json(meta, weights_path):
    h = hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert h == meta["sha256"]
    assert weights_path.stat().st_size == meta["weights_bytes"]
    assert weights_path.stat().st_size <= 10 * 1024 * 1024


def test_config_is_course_shaped(meta):
    mc = meta["model_config"]
    assert mc["attn_only"] is True
    assert mc["n_layers"] == 2
    assert mc["normalization_type"] is None
    assert mc["positional_embedding_type"] == "shortformer"
    assert mc["attention_dir"] == "causal"


def test_shapes(model, state_dict, meta):
    mc = meta["model_config"]
    V, D, H, Dh, C = mc["d_vocab"], mc["d_model"], mc["n_heads"], mc["d_head"], mc["n_ctx"]
    assert model.W_E.shape == (V, D)
    assert model.W_U.shape == (D, V)
    assert model.W_pos.shape == (C, D)
    for name in ("W_Q", "W_K", "W_V"):
        assert getattr(model, name).shape == (2, H, D, Dh)
    assert model.W_O.shape == (2, H, Dh, D)
    assert sum(p.numel() for p in model.parameters()) == meta["n_params"]
    # The loaded parameters are exactly the stored ones.
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), state_dict[k]), k
    assert all(v.dtype == torch.float32 for v in state_dict.values())


def test_shared_loader_matches(meta):
    from fixtures.train_toy import load_model

    m = load_model(JSON_PATH)
    assert m.cfg.d_vocab == meta["model_config"]["d_vocab"]


def _loss(model, meta, seed: int) -> float:
    from fixtures.train_toy import DataConfig, eval_batches, mean_loss

    dc = DataConfig(**meta["data_config"])
    ev = meta["eval"]
    return mean_loss(model, eval_batches(dc, seed, ev["batches"], ev["batch_size"]))


def test_eval_loss_reproduces(model, meta):
    """The evaluation set (same generator, same seed) gives the loss the card states."""
    got = _loss(model, meta, meta["eval"]["seed"])
    assert got == pytest.approx(meta["eval_loss"], abs=meta["eval_loss_exact_tolerance"])


def test_fresh_data_loss(model, meta):
    """Freshly generated data (a seed used neither in training nor in the card) gives the same loss
    up to sampling noise."""
    used = {meta["train_config"]["data_seed"], meta["eval"]["seed"], *meta["fresh_data_seeds"]}
    seed = 20240607
    assert seed not in used
    got = _loss(model, meta, seed)
    assert got == pytest.approx(meta["eval_loss"], abs=meta["fresh_data_tolerance"])


def test_data_generator_is_deterministic(meta):
    from fixtures.train_toy import DataConfig, DataGenerator

    dc = DataConfig(**meta["data_config"])
    a = DataGenerator(dc, 7).batch(4)
    b = DataGenerator(dc, 7).batch(4)
    assert torch.equal(a, b)
    assert a.shape == (4, dc.n_ctx)
    assert (a[:, 0] == 0).all() and (a[:, 1:] > 0).all()
