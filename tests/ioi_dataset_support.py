"""Shared helpers for the IOI dataset tests: a tokenizer in which every dataset word is one token, models, inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fixtures.inputs import INPUT_KINDS, InputBatch
from fixtures.ioi_dataset import FLIPS, flipped, generate
from fixtures.ioi_names import IOI_NAMES
from harness.core.model_handle import ModelHandle
from harness.testing import random_handle

BOS = "<|endoftext|>"
_TRAINED: list[Path] = []


def dataset_corpus() -> list[str]:
    """Texts of the course's dataset (several seeds, both orders, the ABC flip) and every name with a space."""
    texts: list[str] = []
    for seed in range(4):
        prompts = generate(60, seed)
        texts += [p.text for p in prompts] + [p.text for p in flipped(prompts, FLIPS["abc"], seed)]
    return texts + [" " + name for name in IOI_NAMES] * 3


def train_dataset_tokenizer(where: Path) -> Any:
    """A byte-level BPE (GPT-2's pre-tokenizer, BOS/EOS/PAD ``<|endoftext|>`` = 0) trained on :func:`dataset_corpus`.

    Trained once per test process (the first caller's folder holds it); later calls load that one.
    """
    if _TRAINED:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(_TRAINED[0])
    _TRAINED.append(where)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=3000, min_frequency=1, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(dataset_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS, pad_token=BOS)
    fast.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)


def dataset_model(seed: int, tokenizer: Any, *, n_layers: int = 3, n_heads: int = 2, attn_only: bool = False,
                  normalization: str | None = "LNPre") -> ModelHandle:
    """A small seeded random model with ``tokenizer`` (every parameter ~ N(0, 0.5^2))."""
    return random_handle(
        seed, f"random-ioi-dataset-{seed}-{n_layers}x{n_heads}-{attn_only}", tokenizer=tokenizer, n_layers=n_layers,
        n_heads=n_heads, d_model=8, d_head=3, d_vocab=len(tokenizer), n_ctx=40, d_mlp=None if attn_only else 6,
        act_fn="gelu", normalization=normalization, positional="standard",
    )


def dataset_batch(model: ModelHandle, **params: Any) -> InputBatch:
    kind = INPUT_KINDS["ioi_dataset"]
    return kind.build(model, kind.params_model.model_validate(params))


@torch.no_grad()
def end_logit_diffs(model: ModelHandle, batch: InputBatch, answers: list[list[int]]) -> list[float]:
    """``logits[b, end_b, IO_b] - logits[b, end_b, S_b]`` by a loop, from ``model(tokens)``."""
    logits = model._hooked(batch.tokens)
    ends = batch.meta["word_idx"]["end"]
    return [float(logits[b, e, c] - logits[b, e, w]) for b, (e, (c, w)) in enumerate(zip(ends, answers))]


@torch.no_grad()
def course_mean_ablated_logit_diff(model: ModelHandle, keep: dict[str, list[str]], n: int = 8, seed: int = 5) -> float:
    """The course's ``add_mean_ablation_hook`` written out with TransformerLens hooks: every head's z is its ABC
    template mean (per template of the prompt) except at the kept (position name -> heads) pairs, where it keeps its
    own value; the mean END logit difference IO - S of that run on ``n`` dataset prompts (seed ``seed``)."""
    hooked = model._hooked
    orig, abc = dataset_batch(model, n=n, seed=seed), dataset_batch(model, n=n, seed=seed, flip="abc")
    _, abc_cache = hooked.run_with_cache(abc.tokens)
    templates = torch.tensor(orig.meta["templates"])
    idx = orig.meta["word_idx"]

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        layer = hook.layer()
        out = torch.empty_like(z)
        for t in templates.unique():
            out[templates == t] = abc_cache["z", layer][templates == t].mean(0)
        for where, heads in keep.items():
            for name in heads:
                l, h = map(int, name.split("."))
                if l == layer:
                    for b in range(n):
                        out[b, idx[where][b], h] = z[b, idx[where][b], h]
        return out

    hooks = [(f"blocks.{l}.attn.hook_z", hook) for l in range(hooked.cfg.n_layers)]
    return logit_diff_at_end(hooked.run_with_hooks(orig.tokens, fwd_hooks=hooks), orig)


def logit_diff_at_end(logits: torch.Tensor, batch: InputBatch) -> float:
    """Mean over prompts of logit(IO) - logit(S) at each prompt's END position."""
    rows = torch.arange(logits.shape[0])
    answers, ends = torch.tensor(batch.meta["answers"]), torch.tensor(batch.meta["word_idx"]["end"])
    final = logits[rows, ends]
    return float((final[rows, answers[:, 0]] - final[rows, answers[:, 1]]).mean())
