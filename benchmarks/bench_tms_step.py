"""Where a toy-model training step spends its time: drawing the batch, forward + backward, the Adam update.

    python benchmarks/bench_tms_step.py                    # E8, tms-200f20d (about an hour of training here)
    python benchmarks/bench_tms_step.py tms-100f20d --steps 10

One thread, the recipe's batch; each part timed over ``--steps`` steps after one warm-up step, with the CPU
time (user + sys of this process) beside the wall time and the load average, since the machine is shared.
It also times one alternative draw of the same distribution (a single uniform u per entry: present when
u <= p, magnitude u / p), which would halve the random numbers drawn; the trainer does not use it (it would
change the committed recipes' data streams).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, initial_weights, instance_losses, schedules


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(label: str, steps: int, part) -> None:
    part()
    wall, cpu = time.perf_counter(), _cpu()
    for _ in range(steps):
        part()
    print(f"{label:28s} {1000 * (time.perf_counter() - wall) / steps:8.1f} ms wall {1000 * (_cpu() - cpu) / steps:8.1f} ms CPU per step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="tms-200f20d")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = RECIPES[args.recipe]
    generator = torch.Generator().manual_seed(0)
    p, importance = schedules(recipe)
    W, b = initial_weights(recipe, generator)
    W.requires_grad_(True)
    b.requires_grad_(True)
    optimiser = torch.optim.Adam([W, b], lr=recipe.lr)
    x = generate_batch(recipe, p, recipe.batch_size, generator)
    shape = (recipe.batch_size, recipe.n_inst, recipe.n_features)
    print(f"{recipe.name}: batch {recipe.batch_size} x {recipe.n_inst} instances x {recipe.n_features} features "
          f"({recipe.batch_size * recipe.n_inst * recipe.n_features / 1e6:.1f}M entries), load average {os.getloadavg()[0]:.1f}")

    def backward() -> None:
        optimiser.zero_grad(set_to_none=True)
        instance_losses(recipe, W, b, x, importance).sum().backward()

    def single_draw() -> torch.Tensor:
        u = torch.rand(shape, generator=generator)
        return torch.where(u <= p, u / p, 0.0)

    _timed("draw the batch (trainer)", args.steps, lambda: generate_batch(recipe, p, recipe.batch_size, generator))
    _timed("draw the batch (one draw)", args.steps, single_draw)
    _timed("forward + backward", args.steps, backward)
    _timed("Adam update", args.steps, optimiser.step)
    print(f"{recipe.steps} steps of the recipe; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
