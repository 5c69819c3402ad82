"""A run whose measurements are all cached loads no model, imports neither torch nor TransformerLens
(nor matplotlib, once the report's plots are drawn) and writes the cold run's values and verdicts;
anything a model's identity depends on (its weights file, its config) still reloads it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fixtures.registry import register_file_model, unregister_model
from harness import runner
from harness.loader import load_claim_file
from harness.measurement_cache import MeasurementCache, _canonical, _sha256
from harness.session import Session

ROOT = Path(__file__).resolve().parents[1]

CLAIMS = """\
source: {course: project}
model: MODEL
claims:
  - id: prev-score-MODEL
    statement: Head 0.0's previous-token score.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: previous}
    select: "0.0"
    expect: {">=": 0.0}
  - id: induction-MODEL
    statement: The induction heads over a threshold of 0.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.detect
    params: {pattern: induction, threshold: 0.0}
    expect: {subset_of: ["0.0", "0.1", "1.0", "1.1"]}
"""

SMALL_CONFIG = dict(d_model=16, d_head=8, n_heads=2, n_layers=2, n_ctx=32, d_vocab=20, attn_only=True,
                    normalization_type=None, positional_embedding_type="standard", act_fn=None)


def claims_file(root: Path, model: str) -> Path:
    path = root / f"{model}.yaml"
    path.write_text(CLAIMS.replace("MODEL", model))
    return path


def run(path: Path, cache: MeasurementCache | None) -> tuple[list[runner.ClaimResult], Session]:
    loaded = load_claim_file(path)
    session = Session(cache=cache)
    return [runner.run_claim(loaded, claim, session) for claim in loaded.spec.claims], session


def outcome(results: list[runner.ClaimResult]) -> list[tuple]:
    return [(r.measurement.value if r.measurement else r.reason, r.verdict.value, r.model_identity) for r in results]


def test_a_warm_run_loads_no_model_and_gives_the_cold_values(tmp_path: Path) -> None:
    path = claims_file(tmp_path, "planted-attn-2l")
    cold, cold_session = run(path, MeasurementCache(tmp_path / "cache"))
    assert set(cold_session.models) == {"planted-attn-2l"} and not any(r.cached for r in cold)
    warm, warm_session = run(path, MeasurementCache(tmp_path / "cache"))
    assert warm_session.models == {} and set(warm_session.identities) == {"planted-attn-2l"}
    assert all(r.cached for r in warm) and outcome(warm) == outcome(cold)


def _save_small_model(folder: Path, seed: int) -> tuple[Path, Path]:
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model = HookedTransformer(HookedTransformerConfig(**SMALL_CONFIG, tokenizer_name=None, device="cpu", init_weights=False))
    generator = torch.Generator().manual_seed(seed)
    save_file({k: torch.randn(v.shape, generator=generator) for k, v in model.named_parameters()}, str(folder / "small.safetensors"))
    (folder / "small.json").write_text(json.dumps(SMALL_CONFIG))
    return folder / "small.safetensors", folder / "small.json"


@pytest.fixture
def small_model(tmp_path: Path):
    weights, config = _save_small_model(tmp_path, seed=0)
    register_file_model("warm-small", weights, config, bos_token_id=0)
    yield weights, config
    unregister_model("warm-small")


def test_other_weights_in_the_same_file_reload_the_model(tmp_path: Path, small_model) -> None:
    path, cache = claims_file(tmp_path, "warm-small"), tmp_path / "cache"
    cold, _ = run(path, MeasurementCache(cache))
    _, warm_session = run(path, MeasurementCache(cache))
    assert warm_session.models == {}
    _save_small_model(tmp_path, seed=1)  # same path, same config, other weights
    changed, session = run(path, MeasurementCache(cache))
    assert set(session.models) == {"warm-small"} and not any(r.cached for r in changed)
    assert changed[0].model_identity["weights_sha256"] != cold[0].model_identity["weights_sha256"]
    assert changed[0].measurement.value != cold[0].measurement.value


def test_an_edited_config_reloads_the_model(tmp_path: Path, small_model) -> None:
    _weights, config = small_model
    path, cache = claims_file(tmp_path, "warm-small"), tmp_path / "cache"
    run(path, MeasurementCache(cache))
    config.write_text(json.dumps({**SMALL_CONFIG, "n_ctx": 33}))  # the identity's config hash changes
    unregister_model("warm-small")
    register_file_model("warm-small", _weights, config, bos_token_id=0)
    changed, session = run(path, MeasurementCache(cache))
    assert set(session.models) == {"warm-small"} and not any(r.cached for r in changed)


def test_a_stale_cached_identity_is_warned_about_and_the_loaded_one_wins(tmp_path: Path) -> None:
    """Should a fingerprint ever miss something, a model loaded later in the run is checked against
    the identity the cache gave: a difference is a warning, and new measurements use the loaded one."""
    from harness.measurement_cache import CacheEntryWarning

    path = claims_file(tmp_path, "planted-attn-2l")
    run(path, MeasurementCache(tmp_path / "cache"))
    for entry in (tmp_path / "cache").glob("v*/models/*/*.json"):
        data = json.loads(entry.read_text())
        data["identity"]["weights_sha256"] = "0" * 64
        data["checksum"] = _sha256(_canonical(data["identity"]))
        entry.write_text(json.dumps(data))
    session = Session(cache=MeasurementCache(tmp_path / "cache"))
    assert session.identity("planted-attn-2l").weights_sha256 == "0" * 64  # served by the (edited) cache
    with pytest.warns(CacheEntryWarning, match="loads as"):
        loaded = session.model("planted-attn-2l")
    assert session.identity("planted-attn-2l") == loaded.identity and loaded.identity.weights_sha256 != "0" * 64


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    probe = ("import sys, json\nfrom harness.frontends.cli import main\nrc = main(sys.argv[1:])\n"
             "print(json.dumps({'rc': rc, 'imported': sorted(m for m in ('torch', 'transformer_lens', 'matplotlib') if m in sys.modules)}))")
    return subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_warm_cli_run_imports_no_torch_and_writes_the_cold_record(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("INTERP_CLAIMS_NO_CACHE", None)
    args = ["claims/toy/planted-attention.yaml", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    runs = []
    for out in ("cold", "warm"):
        done = _cli(["run", *args, "--out", str(tmp_path / out)], env)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append((json.loads(done.stdout.strip().splitlines()[-1]), json.loads((tmp_path / out / "results.json").read_text())))
    (cold_probe, cold), (warm_probe, warm) = runs
    assert cold_probe["imported"] == ["matplotlib", "torch", "transformer_lens"]
    assert warm_probe["imported"] == []  # no model, no metric module, no plot drawn
    assert all(entry["cached"] for entry in warm["claims"])
    assert all(not model.get("loaded", True) for model in warm["models"].values())
    unread = ("duration_s", "cached")
    assert [{k: v for k, v in e.items() if k not in unread} for e in warm["claims"]] == \
           [{k: v for k, v in e.items() if k not in unread} for e in cold["claims"]]
    assert "<svg" in (tmp_path / "warm" / "report.html").read_text()


def test_a_changed_snapshot_of_the_family_recomputes(tmp_path: Path, small_model) -> None:
    """Metrics across a training run load the claim model's snapshots (``BASE@epoch=N``): their
    files are in the key of every measurement of the family, though the claim's model is unchanged."""
    weights, config = small_model
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    snap_weights, snap_config = _save_small_model(snapshot, seed=2)
    register_file_model("warm-small@epoch=1", snap_weights, snap_config, bos_token_id=0)
    try:
        path, cache = claims_file(tmp_path, "warm-small"), tmp_path / "cache"
        run(path, MeasurementCache(cache))
        again, _ = run(path, MeasurementCache(cache))
        assert all(r.cached for r in again)
        _save_small_model(snapshot, seed=3)
        changed, session = run(path, MeasurementCache(cache))
        assert not any(r.cached for r in changed)
        assert set(session.models) == {"warm-small"}  # measured afresh on the unchanged claim model
    finally:
        unregister_model("warm-small@epoch=1")
