"""SmolLM2-135M's activation and path patching scans, the way before against the way now, in one process.

    python benchmarks/bench_patching.py                    # every scan, three ways each
    python benchmarks/bench_patching.py --only head_out    # one scan (repeatable)
    python benchmarks/bench_patching.py --threads 1        # torch threads (default: torch's own)

Ways, each scan computed afresh (a new session memo) on the same loaded model:

- ``before``: every patched pass runs every position from the first block it changes, and
  TransformerLens copies the block weights it rearranges on every call (the weights stored as
  loaded; ``paths.to_resid`` runs every position of every prompt);
- ``positions``: passes start at the first position a patch changes (keys and values before it
  from the base run; ``paths.to_resid`` runs END only), weights still copied;
- ``after``: positions, and the weights stored as TransformerLens multiplies them
  (:mod:`harness.core.weight_layout`): what the metrics do now.

Printed per scan and way: wall and CPU seconds (process time, all threads); per scan: CPU before /
after and how many table entries equal the ``before`` way's bit for bit (and the largest
difference). The shared clean and corrupted passes are computed before the first timing. The
load average is printed: on a shared machine compare figures of one sitting only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any, Callable, Iterator

import torch

from harness.circuits.dla import logit_diff_from_residual
from harness.context import MetricContext
from harness.core.heads import Head
from harness.core.model_handle import ModelHandle
from harness.core.weight_layout import store_as_multiplied
from harness.metrics import patching, paths
from harness.registry import get_metric
from harness.session import Session

DATASET = {"ioi_dataset": {"n": 8, "seed": 1}}
PROMPTS = {"ioi_prompts": {}}
SCANS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    # name: model, metric, params, inputs (those of the main job's claims)
    "head_out": ("smollm2-135m", "patching.head_out", {}, PROMPTS),
    "resid_pre": ("smollm2-135m", "patching.resid_pre", {}, PROMPTS),
    "to_resid": ("smollm2-135m", "paths.to_resid", {"from_layer": 16}, DATASET),
    "to_heads": ("smollm2-135m", "paths.to_heads", {"receivers": ["23.3"], "receiver_input": "q", "from_layer": 14}, DATASET),
    "to_resid_random": ("smollm2-135m-random", "paths.to_resid", {"from_layer": 16}, DATASET),
}
WAYS = ("before", "positions", "after")


def to_resid_every_position(model: ModelHandle, runs: paths.PathRuns, senders: list[Head]) -> torch.Tensor:
    """``paths.to_resid``'s passes over every position of every prompt from the sender's block (the way before)."""
    out = []
    for chunk in paths.sender_chunks(runs, senders):
        layer, copies = chunk[0].layer, len(chunk)
        hooks = paths.freeze_hooks(model, runs, chunk, range(layer, model.shape.n_layers))
        resid = model.residual_from(layer, runs.orig["resid_pre", layer].repeat(copies, 1, 1), runs.tokens.repeat(copies, 1), hooks)
        out.append(logit_diff_from_residual(model, resid, runs.answers, runs.ends))
    return torch.cat(out)


def copied_weights(model: ModelHandle) -> None:
    """Store every parameter contiguous as loaded: TransformerLens copies the rearranged ones on every call again."""
    with torch.no_grad():
        for parameter in model._hooked.parameters():
            parameter.data = parameter.data.contiguous()


@contextlib.contextmanager
def way(name: str, models: list[ModelHandle]) -> Iterator[None]:
    """Patch the metrics (and the models' weight layout) to run scans the way ``name``."""
    saved = patching.first_changed, paths.first_difference, paths.path_to_resid_lds
    try:
        if name == "before":
            patching.first_changed = lambda patch, first: 0
            paths.first_difference = lambda runs, new_tokens: 0
            paths.path_to_resid_lds = to_resid_every_position
        for model in models:
            copied_weights(model) if name != "after" else store_as_multiplied(model._hooked)
        yield
    finally:
        patching.first_changed, paths.first_difference, paths.path_to_resid_lds = saved
        for model in models:
            store_as_multiplied(model._hooked)


def timed(compute: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = compute()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def scan(session: Session, model: ModelHandle, metric: str, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, float]:
    """The metric's table, computed afresh (a new session memo)."""
    info = get_metric(metric)
    session._memo.clear()
    return info.function(MetricContext(model, session.inputs(model, inputs), session), **dict(info.validate_params(params))).value


def warm(session: Session, model: ModelHandle, metric: str, inputs: dict[str, Any]) -> None:
    """The clean and corrupted (or ABC) passes every way shares, and the model's first passes."""
    batch = session.inputs(model, inputs)
    ctx = MetricContext(model, batch, session)
    if metric.startswith("patching."):
        r = patching.runs(ctx)
        for kind in ("z", "resid_pre"):
            r.clean[kind, 0], r.corrupted[kind, 0]  # noqa: B018  (computed on first read)
    else:
        runs = paths.path_runs(ctx)
        for kind in ("resid_pre", "q"):
            runs.orig[kind, 0]  # noqa: B018
        session.inputs(model, paths.new_spec(ctx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SCANS), action="append", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    session = Session()
    names = args.only or list(SCANS)
    models = {}
    for model_name in dict.fromkeys(SCANS[n][0] for n in names):
        models[model_name], load_wall, load_cpu = timed(lambda: session.model(model_name))
        print(f"{model_name} loaded in {load_wall:.1f} s ({load_cpu:.1f} s CPU)")
    print(f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}\n")
    print(f"{'scan':<17}" + "".join(f"{w + ' wall':>16}{w + ' CPU':>15}" for w in WAYS) + f"{'CPU before/after':>18}  equal to before")
    for name in names:
        model_name, metric, params, inputs = SCANS[name]
        model = models[model_name]
        warm(session, model, metric, inputs)
        tables, cells = {}, ""
        for w in WAYS:
            with way(w, list(models.values())):
                tables[w], wall, cpu = timed(lambda: scan(session, model, metric, params, inputs))
            cells += f"{wall:>16.1f}{cpu:>15.1f}"
            tables[w + "_cpu"] = cpu
        before, after = tables["before"], tables["after"]
        equal = sum(before[k] == after[k] for k in before)
        largest = max(abs(before[k] - after[k]) for k in before)
        ratio = tables["before_cpu"] / max(tables["after_cpu"], 1e-9)
        print(f"{name:<17}{cells}{ratio:>17.1f}x  {equal}/{len(before)} bit for bit (largest difference {largest:.2g})", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
