"""The shipped grokking reproduction: present, intact, small, and reproducible by its trainer."""

from __future__ import annotations

import json

import pytest
import torch

from fixtures import registry
from fixtures.grokking_model import initial_state_dict, lean_logits
from fixtures.hashing import file_sha256
from fixtures.modular_task import split_data
from fixtures.sources.grokking import REPRO_DIR, REPRO_NAME
from fixtures.train_grokking import GrokTrainConfig, loss_f64, train
from fixtures.weights_io import read_state_dict

MAX_BYTES = 20 * 1024 * 1024


def meta() -> dict:
    path = REPRO_DIR / "model.json"
    assert path.is_file(), f"shipped file {path} is missing"
    return json.loads(path.read_text())


def test_shipped_snapshots_match_their_sha256_and_fit_the_budget() -> None:
    info = meta()
    total = 0
    for epoch, snap in info["snapshots"].items():
        path = REPRO_DIR / snap["file"]
        assert file_sha256(path) == snap["sha256"], f"epoch {epoch}: {path} differs from its pinned sha256"
        total += path.stat().st_size
    total += sum((REPRO_DIR / name).stat().st_size for name in ("model.json", "log.json", "card.md", "loss.png"))
    assert total <= MAX_BYTES
    assert len(info["snapshots"]) >= 12
    assert str(info["final_epoch"]) in info["snapshots"] and info["snapshots"][str(info["final_epoch"])]["sha256"] == info["sha256"]


def test_every_shipped_snapshot_is_a_registry_model() -> None:
    names = set(registry.model_entries())
    assert REPRO_NAME in names
    assert {f"{REPRO_NAME}@epoch={e}" for e in meta()["snapshots"]} <= names


def test_epoch_0_is_the_seeded_initialisation() -> None:
    shipped = read_state_dict(REPRO_NAME, REPRO_DIR / "epoch-0.safetensors")
    init = initial_state_dict(meta()["training"]["seed"])
    assert set(shipped) == set(init)
    # torch's normal sampler is vectorised per CPU kind (AVX-512, AVX2, generic): the same seed gives
    # the same numbers up to float32 rounding (1.4e-7 at most under ATEN_CPU_CAPABILITY=default), not bit for bit.
    assert all(torch.allclose(shipped[k], init[k], rtol=1e-6, atol=5e-7) for k in init)


def test_final_model_has_grokked_by_its_log_and_its_weights() -> None:
    info = meta()
    state = read_state_dict(REPRO_NAME, REPRO_DIR / info["weights_file"])
    _, test = split_data()
    with torch.no_grad():
        test_loss = loss_f64(lean_logits(state, test.x, test.y), test.labels).item()
    # float32 logits of size ~30 carry ~3e-6 of rounding that differs between CPU kernels; at a loss of
    # ~1e-4 that moves the loss by a few parts in 1e6 (1.7e-6 measured under ATEN_CPU_CAPABILITY=default).
    assert test_loss == pytest.approx(info["final_test_loss"], rel=1e-5)
    assert test_loss < (info["training"]["stop_test_loss"] if info.get("stopped_by_rule", True) else 1e-3)


def shipped_config() -> GrokTrainConfig:
    return GrokTrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta()["training"].items()})


def test_shipped_run_used_the_trainers_default_recipe() -> None:
    """The committed default (subnormals flushed included) is the recipe of the shipped run, so
    ``python -m fixtures.train_grokking train`` reproduces it."""
    assert shipped_config() == GrokTrainConfig()
    assert meta()["training"]["flush_denormal"] is True


@pytest.mark.slow
def test_retraining_a_prefix_reproduces_the_shipped_snapshot_bitwise() -> None:
    """Same seed, one thread, deterministic kernels, the shipped run's flag for subnormals: epoch 300
    again, bit for bit (same torch build and CPU kind)."""
    tc = shipped_config()
    state = train(tc, None, epochs=300)["state"]
    shipped = read_state_dict(REPRO_NAME, REPRO_DIR / "epoch-300.safetensors")
    differing = [k for k in shipped if not torch.equal(shipped[k], state[k])]
    assert not differing, f"retrained epoch 300 differs from the shipped snapshot in {differing}"
