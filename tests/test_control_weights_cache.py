"""The untrained controls' weights cache (fixtures/control_weights_cache.py): a cached control is
the drawn one, tensor for tensor, config and identity included; an altered or foreign entry is
drawn again; ``--no-cache`` draws afresh and writes nothing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fixtures import control_weights_cache as cache
from fixtures import random_models
from fixtures.hashing import config_sha256, state_dict_sha256
from fixtures.random_models import small_config, tl_initialised

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INTERP_CLAIMS_CACHE", str(tmp_path))
    monkeypatch.delenv(cache.ENV_OFF, raising=False)
    monkeypatch.setattr(cache, "_DISABLED", [])  # on even when this test session runs with --claims-no-cache
    return tmp_path / "random-controls"


def config():
    cfg = small_config(d_mlp=8, normalization="LN", positional="rotary")
    cfg.init_weights = True
    return cfg


def assert_same(model, reference) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    assert config_sha256(model.cfg.to_dict()) == config_sha256(reference.cfg.to_dict())
    assert model.cfg.init_weights and not model.training


def no_drawing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random_models, "tl_initialised", lambda *a, **k: pytest.fail("the control was drawn again"))


def test_a_cached_control_is_the_drawn_one(monkeypatch: pytest.MonkeyPatch, cache_folder: Path) -> None:
    fresh = tl_initialised(config(), 3)
    first, first_sha = cache.cached_tl_initialised("tiny-random", config(), 3)
    assert_same(first, fresh)
    assert first_sha == state_dict_sha256(fresh.state_dict())
    assert len(list(cache_folder.iterdir())) == 1
    no_drawing(monkeypatch)
    second, second_sha = cache.cached_tl_initialised("tiny-random", config(), 3)
    assert_same(second, fresh)
    assert second_sha == first_sha
    state = torch.random.get_rng_state()
    cache.cached_tl_initialised("tiny-random", config(), 3)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_another_seed_config_or_version_is_another_entry(monkeypatch: pytest.MonkeyPatch, cache_folder: Path) -> None:
    cache.cached_tl_initialised("tiny-random", config(), 3)
    other_seed, _ = cache.cached_tl_initialised("tiny-random", config(), 4)
    assert_same(other_seed, tl_initialised(config(), 4))
    wider = config()
    wider.d_mlp = 12
    cache.cached_tl_initialised("tiny-random", wider, 3)
    assert len(list(cache_folder.iterdir())) == 3
    versions = {"torch": "0.0.0", "transformer-lens": "0.0.0"}
    monkeypatch.setattr(cache.importlib.metadata, "version", lambda name: versions[name])
    cache.cached_tl_initialised("tiny-random", config(), 3)
    assert len(list(cache_folder.iterdir())) == 4


def test_an_altered_entry_is_drawn_again_and_rewritten(cache_folder: Path) -> None:
    cache.cached_tl_initialised("tiny-random", config(), 3)
    (entry,) = cache_folder.iterdir()
    tensors = load_file(str(entry / "weights.safetensors"))
    name = next(k for k in tensors if k.endswith("W_Q"))
    tensors[name] = tensors[name] + 1e-6
    save_file(tensors, str(entry / "weights.safetensors"))
    with pytest.warns(cache.ControlCacheWarning, match="sha256"):
        model, sha = cache.cached_tl_initialised("tiny-random", config(), 3)
    assert_same(model, tl_initialised(config(), 3))
    with warnings.catch_warnings():  # rewritten: read without a warning
        warnings.simplefilter("error", cache.ControlCacheWarning)
        cache.cached_tl_initialised("tiny-random", config(), 3)


@pytest.mark.parametrize("damage", ["key", "truncated", "meta"])
def test_a_foreign_or_unreadable_entry_is_drawn_again(cache_folder: Path, damage: str) -> None:
    cache.cached_tl_initialised("tiny-random", config(), 3)
    (entry,) = cache_folder.iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    if damage == "key":
        meta["key"]["seed"] = 4
        (entry / "meta.json").write_text(json.dumps(meta))
    elif damage == "truncated":
        data = (entry / "weights.safetensors").read_bytes()
        (entry / "weights.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (entry / "meta.json").write_text("{not json")
    with pytest.warns(cache.ControlCacheWarning, match="ignoring cached control weights"):
        model, _ = cache.cached_tl_initialised("tiny-random", config(), 3)
    assert_same(model, tl_initialised(config(), 3))


def test_no_cache_draws_afresh_and_writes_nothing(monkeypatch: pytest.MonkeyPatch, cache_folder: Path) -> None:
    with cache.cache_disabled():
        model, sha = cache.cached_tl_initialised("tiny-random", config(), 3)
    assert not cache_folder.exists()
    assert_same(model, tl_initialised(config(), 3))
    assert sha == state_dict_sha256(model.state_dict())
    monkeypatch.setenv(cache.ENV_OFF, "1")
    cache.cached_tl_initialised("tiny-random", config(), 3)
    assert not cache_folder.exists()


def test_the_toy_control_identity_is_the_same_from_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures.sources.random_controls import toy_random_entries

    (entry,) = toy_random_entries()
    with cache.cache_disabled():
        drawn = entry.load()
    written, read = entry.load(), entry.load()
    for handle in (written, read):
        assert handle.identity == drawn.identity
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(handle.named_parameters(), drawn.named_parameters()))


def test_the_cli_no_cache_option_turns_the_weights_cache_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import harness.runner
    from harness.frontends import cli

    seen: list[bool] = []
    monkeypatch.setattr(harness.runner, "run_claim", lambda loaded, claim, session: seen.append(cache.cache_enabled()) or pytest.skip("stop"))
    claims = tmp_path / "claims.yaml"
    claims.write_text((Path(__file__).parents[1] / "claims/toy/planted-ov.yaml").read_text())
    for flags, enabled in (([], True), (["--no-cache"], False)):
        with pytest.raises(pytest.skip.Exception):
            cli.main(["run", str(claims), "--out", str(tmp_path / "out"), "--no-progress", "--cache-dir", str(tmp_path / "m"), *flags])
        assert seen.pop() is enabled
    assert cache.cache_enabled()


def test_state_dict_sha256_hashes_the_bytes_tobytes_gives() -> None:
    """The hash reads each tensor's bytes in place; the digest is the one of the copies it made before."""
    import hashlib

    tensors = {"a": torch.randn(3, 4), "b": torch.tensor(2.5), "c": torch.randn(5, 6).t(), "d": torch.arange(7),
               "e": torch.zeros(0, 3), "f": torch.tensor([True, False]), "g": torch.randn(4, 4, dtype=torch.float64)[:, ::2]}
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.numpy().tobytes())
    assert state_dict_sha256(tensors) == digest.hexdigest()


def test_a_concurrent_writer_winning_the_rename_is_no_error(monkeypatch: pytest.MonkeyPatch, cache_folder: Path) -> None:
    """Two processes (pytest-xdist workers) drawing the same control: the second rename finds the
    first one's entry in place and leaves it."""
    import os
    import shutil

    rename = os.rename

    def loses_the_race(source: str, target: str) -> None:
        shutil.copytree(source, target)  # the other writer's entry, complete
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(cache.os, "rename", loses_the_race)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cache.ControlCacheWarning)
        model, _ = cache.cached_tl_initialised("tiny-random", config(), 3)
    monkeypatch.setattr(cache.os, "rename", rename)
    assert_same(model, tl_initialised(config(), 3))
    assert [p.name for p in cache_folder.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    no_drawing(monkeypatch)
    assert_same(cache.cached_tl_initialised("tiny-random", config(), 3)[0], model)


def test_claims_cache_clear_removes_the_controls_too(cache_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.frontends.cli import main as claims_main

    cache.cached_tl_initialised("tiny-random", config(), 3)
    cache.cached_tl_initialised("tiny-random", config(), 4)
    (cache_folder / ".half-written.tmp-1").mkdir()  # a writer's temporary folder is no entry
    assert [p.name.startswith("tiny-random-") for p in cache.entries()] == [True, True]
    measurements = str(tmp_path / "measurements")
    assert claims_main(["cache", "info", "--cache-dir", measurements]) == 0
    assert f"untrained controls' weights {cache_folder}: 2 entries" in capsys.readouterr().out
    assert claims_main(["cache", "clear", "--cache-dir", measurements]) == 0
    assert f"removed 2 cached untrained control(s) from {cache_folder}" in capsys.readouterr().out
    assert cache.entries() == [] and cache.clear() == 0
