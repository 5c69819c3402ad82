"""Model card of the grokking reproduction: ``fixtures/weights/grokking-repro/card.md`` and ``loss.png``.

Reads ``model.json`` and ``log.json`` (written by ``python -m fixtures.train_grokking pack``),
measures the final model and each shipped snapshot with the suite's own metrics
(:mod:`harness.metrics.modular`) and writes the card: the recipe, training time and machine, the
loss curves (train every epoch, test every ``test_every`` epochs, the grokking window shaded),
key frequencies of the embedding, neuron clusters, restricted loss, weight norm per snapshot.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/grokking_card.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.registry import get_model_entry  # noqa: E402
from fixtures.sources.grokking import REPRO_DIR, REPRO_NAME  # noqa: E402
from harness.metrics import modular, modular_logits  # noqa: E402


class _Ctx:
    def __init__(self, model) -> None:
        self.model = model
        self.inputs = None


def plot(log: dict, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(log["epoch"], log["train_loss"], label="train (3,830 pairs)", lw=1)
    ax.plot(log["test_epoch"], log["test_loss"], label="test (8,939 pairs)", lw=1)
    start, end = meta["landmarks"]["window"]
    ax.axvspan(start, end, color="grey", alpha=0.2, label=f"grokking window {start}-{end}")
    for epoch in meta["snapshots"]:
        ax.axvline(int(epoch), color="black", lw=0.3, alpha=0.4)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (full batch)")
    ax.set_ylabel("float64 cross-entropy")
    ax.set_title("grokking-repro: (x + y) mod 113, 1-layer transformer (thin lines: shipped snapshots)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> int:
    meta = json.loads((REPRO_DIR / "model.json").read_text())
    log = json.loads((REPRO_DIR / "log.json").read_text())
    plot(log, meta, REPRO_DIR / "loss.png")
    start = time.perf_counter()
    final = get_model_entry(REPRO_NAME).load()
    ctx = _Ctx(final)
    keys = modular.key_frequencies(ctx).value
    share = modular.key_frequency_share(ctx).value
    energy = modular.embed_fourier_energy(ctx).value
    clusters = modular.neuron_clusters(ctx).value
    clusters_course = modular.neuron_clusters(ctx, k_range="course").value
    neuron_freqs = sorted(int(k.split("=")[1]) for k in modular.neuron_frequencies_metric(ctx, threshold=0.85).value)
    losses = modular.loss(ctx)
    restricted = modular_logits.restricted_loss(ctx, frequencies=neuron_freqs).value
    excluded = modular_logits.excluded_loss(ctx, frequencies=neuron_freqs).value
    attention = modular.attention_to_positions(ctx).value
    rows = []
    for epoch in sorted(meta["snapshots"], key=int):
        snap = _Ctx(get_model_entry(f"{REPRO_NAME}@epoch={epoch}").load())
        loss = modular.loss(snap).value
        r = modular_logits.restricted_loss(snap, frequencies=neuron_freqs).value["restricted"]
        rows.append(f"| {epoch} | {loss['train']:.3e} | {loss['test']:.3e} | {r:.3e} | {modular.weight_norm(snap).value:.1f} | "
                    f"{modular.key_frequency_share(snap).value['top_share']:.3f} | {modular.neuron_fourier_sparsity(snap).value['frac_neurons_above']:.3f} |")
    seconds = time.perf_counter() - start
    lm = meta["landmarks"]
    tc = meta["training"]
    key_list = ", ".join(k.split("=")[1] for k in sorted(keys, key=lambda k: int(k.split("=")[1])))
    energy_list = ", ".join(f"{k.split('=')[1]}: {energy[k]:.2f}" for k in sorted(keys, key=lambda k: int(k.split("=")[1])))
    cluster_list = ", ".join(f"{k}: {int(v)}" for k, v in clusters.items() if k.startswith("k="))
    course_list = ", ".join(f"{k}: {int(v)}" for k, v in clusters_course.items() if k.startswith("k="))
    cpu_time = f", {meta['cpu_seconds']:.0f} s CPU ({meta['cpu_seconds'] / 60:.1f} min, user + sys of the training process)" if meta.get("cpu_seconds") else ""
    load = f" (load average {meta['load_at_end']:.1f} at the end)" if meta.get("load_at_end") is not None else ""
    card = f"""# grokking-repro: the ARENA 1.5.2 model, trained here

A 1-layer transformer (d_model 128, 4 heads x 32, d_mlp 512, ReLU, n_ctx 3, d_vocab 114, no
LayerNorm, no attention or unembedding biases) trained on (x + y) mod 113 by the paper's recipe
with `fixtures/train_grokking.py` (seed {tc['seed']}, split seed {tc['split_seed']}): full batch on 30% of
the 12,769 pairs (3,830), AdamW lr {tc['lr']}, weight decay {tc['weight_decay']}, betas {tuple(tc['betas'])},
linear warm-up over {tc['warmup_steps']} steps, float64 cross-entropy at "=" over the 113 number logits. Stopped at the
first test evaluation (every {tc['test_every']} epochs) with test loss below {tc['stop_test_loss']:g}.
This card is written by `benchmarks/grokking_card.py`.

## Training

- Epochs: {meta['final_epoch']} ({'stopped by the rule above' if meta.get('stopped_by_rule', True) else 'stopped by hand for time before the rule was met; the curves are rebuilt from the snapshots stored every 100 epochs'}).
- Time: {meta['seconds']:.0f} s wall ({meta['seconds'] / 60:.1f} min){cpu_time} on {meta['cpu']}, {meta['machine']}; torch {meta['torch']},
  a shared 2-core machine with other jobs running{load} (the CPU time is what an idle core would take).
- Float32 subnormals flushed to zero: {'yes' if tc.get('flush_denormal') else 'no'} (`flush_denormal`; once grokked, subnormal gradients make a step ~3x slower on this CPU;
  flushing leaves this run's weights unchanged bit for bit, checked against an unflushed run up to epoch 16,800).
  A second run of the same command on the same machine reproduced all 180 stored snapshots and every logged loss bit for bit.
- Memorised (train loss < 1e-2): epoch {lm['train_loss_below_1e-2']}. Test loss < 1: epoch {lm['test_loss_below_1']};
  < 1e-5: epoch {lm['test_loss_below_1e-5']}. Grokking window (shaded, see `fixtures/grokking_pack.py`): {lm['window'][0]}-{lm['window'][1]}.
- Final float64 loss: train {meta['final_train_loss']:.3e}, test {meta['final_test_loss']:.3e}; all pairs
  {losses.value['all']:.3e} (TransformerLens forward), accuracy {losses.details['accuracy_all']:.4f}.

![loss curves](loss.png)

## Mechanism (final model, measured by the suite's metrics)

- Key frequencies of the embedding (>= 5% of the largest frequency's energy in F W_E[:113]): **{key_list}**
  (energies {energy_list}); they hold {share['share']:.4f} of ||W_E[:113]||^2.
- Neuron clusters (fraction of centred 2-D Fourier energy > 0.85 in one frequency, k = 1..56):
  {cluster_list}, unexplained: {int(clusters['unexplained'])} ({int(clusters['n_clusters'])} clusters).
  With the course's k = 1..55: {course_list}, unexplained: {int(clusters_course['unexplained'])}.
- Restricted loss (logits kept only along cos/sin(w_k(x+y)) of the neuron frequencies {neuron_freqs}, bias-corrected):
  {restricted['restricted']:.3e} against the original {restricted['original']:.3e} (ratio {restricted['ratio']:.3f}).
- Excluded loss (train split, one frequency deleted): {', '.join(f"{k}: {v:.3e}" for k, v in excluded.items() if k.startswith('k='))}; original {excluded['original']:.3e}.
- Attention from "=": to x {attention['to_0']:.3f}, to y {attention['to_1']:.3f}, to itself {attention['to_2']:.3f}.

## Shipped snapshots

`fixtures/weights/grokking-repro/epoch-N.safetensors` (sha256 in `model.json`), each a registry
model `grokking-repro@epoch=N`; the final one is also `grokking-repro`.

| epoch | train loss | test loss | restricted loss | sum of squared weights | top-6 frequency share of W_E | neurons > 0.85 |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Measuring the final model and the {len(rows)} snapshots above took {seconds:.1f} s.
"""
    (REPRO_DIR / "card.md").write_text(card)
    print(card)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
