"""Where a toy-model training step spends its time, in the autograd loop and in the trainer's fast step.

    python benchmarks/bench_tms_step.py                          # tms-5f2d (the retrain in the default tests)
    python benchmarks/bench_tms_step.py tms-200f20d --steps 10   # E8
    python benchmarks/bench_tms_step.py tms-5f2d --full          # also a whole training run of each loop

One thread, the recipe's batch; each part timed over ``--steps`` steps after one warm-up step, with the CPU
time (user + sys of this process) beside the wall time and the load average, since the machine is shared.

- autograd loop (:func:`fixtures.tms.train.train_autograd`): one ``generate_batch`` per step, the course's
  loss with ``backward()``, ``torch.optim.Adam``;
- fast step (:func:`fixtures.tms.train.train`, :mod:`fixtures.tms.fast_step`): the uniforms of many steps in
  one ``torch.rand`` (:func:`~fixtures.tms.fast_step.chunk_for`), the gradient by hand, Adam without the
  optimiser's bookkeeping. Both give the same weights bit for bit (``tests/test_tms_fast_step.py``).

The uniform draws alone (``torch.rand``, one per step's worth) are the floor any loop that reproduces the
committed weights has: they are the recipe's data stream.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable

import torch

from fixtures.tms import fast_step
from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, initial_params, instance_losses, schedules, train, train_autograd


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(label: str, steps: int, part: Callable[[], object], per: int = 1) -> float:
    """Mean CPU ms per step of ``part`` (which runs ``per`` steps' worth), printed with the wall time."""
    part()
    wall, cpu = time.perf_counter(), _cpu()
    for _ in range(steps):
        part()
    cpu_ms = 1000 * (_cpu() - cpu) / (steps * per)
    print(f"  {label:34s} {1000 * (time.perf_counter() - wall) / (steps * per):8.3f} ms wall {cpu_ms:8.3f} ms CPU per step")
    return cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default="tms-5f2d")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--full", action="store_true", help="also train the whole recipe with each loop")
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = RECIPES[args.recipe]
    generator = torch.Generator().manual_seed(0)
    p, importance = schedules(recipe)
    params = initial_params(recipe, generator)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimiser = torch.optim.Adam(list(leaves.values()), lr=recipe.lr)
    x = generate_batch(recipe, p, recipe.batch_size, generator)
    per_step = fast_step.uniforms_per_step(recipe, recipe.batch_size)
    chunk = fast_step.chunk_for(recipe, recipe.batch_size)
    print(f"{recipe.name}: batch {recipe.batch_size} x {recipe.n_inst} instances x {recipe.n_features} features, "
          f"{per_step / 1e6:.3f}M uniforms per step, {recipe.steps} steps; load average {os.getloadavg()[0]:.1f}")

    def backward() -> None:
        optimiser.zero_grad(set_to_none=True)
        instance_losses(recipe, leaves["W"], leaves["b_final"], x, importance, leaves.get("W2")).sum().backward()

    print("autograd loop")
    slow = _timed("draw the batch", args.steps, lambda: generate_batch(recipe, p, recipe.batch_size, generator))
    slow += _timed("forward + backward", args.steps, backward)
    slow += _timed("torch.optim.Adam", args.steps, optimiser.step)
    coefficient = fast_step.output_coefficient(importance, recipe.batch_size, recipe.n_inst, recipe.n_features)
    names = list(params)
    adam = fast_step.Adam([params[n] for n in names], lr=recipe.lr)
    grads, _, _ = fast_step.loss_grads(recipe, params, x, coefficient)
    chunks = max(1, args.steps // chunk)
    print(f"fast step (draws in chunks of {chunk} steps)")
    floor = _timed("the uniforms alone (torch.rand)", chunks, lambda: torch.rand(chunk, per_step, generator=generator), per=chunk)
    fast = _timed("draw + build the batches", chunks, lambda: fast_step.batch_from_uniforms(
        recipe, p, torch.rand(chunk, per_step, generator=generator), recipe.batch_size), per=chunk)
    fast += _timed("forward + gradient by hand", args.steps, lambda: fast_step.loss_grads(recipe, params, x, coefficient))
    fast += _timed("Adam (fast_step.Adam)", args.steps, lambda: adam.step([grads[n] for n in names]))
    print(f"per step: autograd loop {slow:.3f} ms CPU, fast step {fast:.3f} ms CPU ({slow / fast:.1f}x), of which the "
          f"uniforms {floor:.3f} ms; the recipe's {recipe.steps} steps: {slow * recipe.steps / 1000:.1f} s vs "
          f"{fast * recipe.steps / 1000:.1f} s CPU; load average now {os.getloadavg()[0]:.1f}")
    if args.full:
        for label, loop in (("autograd loop", train_autograd), ("fast step", train)):
            wall, cpu = time.perf_counter(), _cpu()
            loop(recipe, 0)
            print(f"whole run, {label}: {_cpu() - cpu:.2f} s CPU, {time.perf_counter() - wall:.2f} s wall "
                  f"(load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
