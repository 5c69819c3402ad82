"""Path patching (paths.to_resid, paths.to_heads) against the course's algorithm written out with TransformerLens hooks.

The reference runs one sender at a time, unbatched, with full logits (the course's
``patch_or_freeze_head_vectors`` / ``patch_head_input`` steps); the metric batches senders and reads
only the END residual. Identities: a last-layer sender's path to the residual is plain activation
patching of its ``z``; the metric is 0 for a sender whose ``z`` is the same in both runs.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.metrics import paths
from harness.session import Session
from harness.testing import measure_metric
from tests.ioi_dataset_support import dataset_batch, dataset_model, train_dataset_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = {"ioi_dataset": {"n": 6, "seed": 2}}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("ioi-paths-tokenizer"))


def ld_mean(logits: torch.Tensor, answers: torch.Tensor, ends: list[int]) -> float:
    rows = torch.arange(len(ends))
    final = logits[rows, torch.tensor(ends)]
    return float((final[rows, answers[:, 0]] - final[rows, answers[:, 1]]).double().mean())


@torch.no_grad()
def course_paths(model: Any, receivers: list[tuple[int, int]] | None, kind: str = "q") -> dict[str, float]:
    """The course's path patching, one sender per run (receivers None: to the final residual)."""
    hooked = model._hooked
    orig, new = dataset_batch(model, n=6, seed=2), dataset_batch(model, n=6, seed=2, flip="abc")
    answers, ends = torch.tensor(orig.meta["answers"]), orig.meta["word_idx"]["end"]
    _, orig_cache = hooked.run_with_cache(orig.tokens)
    _, new_cache = hooked.run_with_cache(new.tokens)
    ld_o, ld_n = ld_mean(hooked(orig.tokens), answers, ends), ld_mean(hooked(new.tokens), answers, ends)
    n_layers, n_heads = hooked.cfg.n_layers, hooked.cfg.n_heads
    last = n_layers if receivers is None else max(layer for layer, _ in receivers)
    out = {}
    for layer in range(last):
        for head in range(n_heads):
            def freeze(z: torch.Tensor, hook: Any, layer: int = layer, head: int = head) -> torch.Tensor:
                z[:] = orig_cache[hook.name]
                if hook.layer() == layer:
                    z[:, :, head] = new_cache[hook.name][:, :, head]
                return z

            z_hooks = [(f"blocks.{l}.attn.hook_z", freeze) for l in range(n_layers)]
            if receivers is None:
                logits = hooked.run_with_hooks(orig.tokens, fwd_hooks=z_hooks)
            else:
                names = {f"blocks.{l}.attn.hook_{kind}" for l, _ in receivers}
                kept: dict[str, torch.Tensor] = {}
                hooked.run_with_hooks(orig.tokens, fwd_hooks=z_hooks + [(n, lambda a, hook: kept.__setitem__(hook.name, a.clone())) for n in names])

                def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
                    for l, h in receivers:
                        if hook.layer() == l:
                            act[:, :, h] = kept[hook.name][:, :, h]
                    return act

                logits = hooked.run_with_hooks(orig.tokens, fwd_hooks=[(n, patch) for n in names])
            out[f"{layer}.{head}"] = (ld_mean(logits, answers, ends) - ld_o) / (ld_o - ld_n)
    return out


@pytest.mark.parametrize("seed, attn_only, norm", [(0, False, "LNPre"), (1, True, "RMSPre"), (2, False, None)])
def test_path_to_resid_is_the_course_algorithm(tokenizer: Any, seed: int, attn_only: bool, norm: str | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model = dataset_model(seed, tokenizer, attn_only=attn_only, normalization=norm)
    monkeypatch.setattr(paths, "MAX_PASS_TOKENS", 200)  # several chunks of a few copies each
    got = measure_metric(model, "paths.to_resid", inputs=INPUTS)
    expected = course_paths(model, None)
    assert got.value == pytest.approx(expected, abs=1e-4)
    assert max(abs(v) for v in expected.values()) > 1e-2  # not trivially zero
    top = measure_metric(model, "paths.to_resid", inputs=INPUTS, top_k=2, sign="negative").value
    assert top == sorted(expected, key=expected.get)[:2]


def test_last_layer_sender_is_plain_activation_patching(tokenizer: Any) -> None:
    """With no heads downstream, freezing the others changes nothing: z-patching the sender alone."""
    model = dataset_model(3, tokenizer)
    hooked = model._hooked
    orig, new = dataset_batch(model, n=6, seed=2), dataset_batch(model, n=6, seed=2, flip="abc")
    answers, ends = torch.tensor(orig.meta["answers"]), orig.meta["word_idx"]["end"]
    with torch.no_grad():
        _, new_cache = hooked.run_with_cache(new.tokens)
        ld_o, ld_n = ld_mean(hooked(orig.tokens), answers, ends), ld_mean(hooked(new.tokens), answers, ends)
        last = hooked.cfg.n_layers - 1

        def patch(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z[:, :, 1] = new_cache[hook.name][:, :, 1]
            return z

        logits = hooked.run_with_hooks(orig.tokens, fwd_hooks=[(f"blocks.{last}.attn.hook_z", patch)])
    got = measure_metric(model, "paths.to_resid", inputs=INPUTS).value[f"{last}.1"]
    assert got == pytest.approx((ld_mean(logits, answers, ends) - ld_o) / (ld_o - ld_n), abs=1e-5)


@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_path_to_heads_is_the_course_algorithm(tokenizer: Any, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = dataset_model(4, tokenizer, n_layers=3, n_heads=2)
    monkeypatch.setattr(paths, "MAX_PASS_TOKENS", 300)
    receivers = [(2, 0), (2, 1), (1, 1)]
    got = measure_metric(model, "paths.to_heads", inputs=INPUTS, receivers=["2.0", "2.1", "1.1"], receiver_input=kind)
    expected = course_paths(model, receivers, kind)
    assert list(got.value) == ["0.0", "0.1", "1.0", "1.1"]
    assert got.value == pytest.approx(expected, abs=1e-4)
    assert max(abs(v) for v in expected.values()) > 1e-3


def test_path_patching_needs_the_clean_dataset(tokenizer: Any) -> None:
    model = dataset_model(0, tokenizer)
    with pytest.raises(ValueError, match="ioi_dataset without flip"):
        measure_metric(model, "paths.to_resid", inputs={"ioi_dataset": {"n": 4, "flip": "abc"}})
    session = Session()
    measure_metric(model, "paths.to_resid", inputs=INPUTS, session=session)
    assert any("paths" in str(key) for key in session._memo)  # one scan per session


def test_ioi_metric_2_is_0_on_ioi_and_minus_1_on_abc(tokenizer: Any) -> None:
    """The course's ioi_metric_2 calibration (1.4.data.metric2_calib): 0 for the clean LDs, -1 for the ABC LDs."""
    from harness.context import MetricContext

    model = dataset_model(5, tokenizer)
    session = Session()
    runs = paths.path_runs(MetricContext(model, session.inputs(model, INPUTS), session))
    metric = runs.ioi_metric_2(torch.stack([runs.ld_orig, runs.ld_new]))
    assert metric.tolist() == pytest.approx([0.0, -1.0], abs=1e-9)
    measured = measure_metric(model, "paths.calibration", inputs=INPUTS, session=session)
    assert measured.value["ioi"] == pytest.approx(0.0, abs=1e-9) and measured.value["abc"] == pytest.approx(-1.0, abs=1e-9)
    assert measured.value["frozen"] == pytest.approx(0.0, abs=1e-5)  # freezing every head at x_orig is the clean run
