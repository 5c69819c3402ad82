"""Toy SAEs over their training (ARENA 1.5.4): dead latents that do or do not come back, and L0 over time.

These read the SAE's activity log (:attr:`~harness.core.toy_sae_handle.ToySaeHandle.activity_log`,
[n_blocks, n_inst, d_sae]): each latent's firing rate over every block of ``log_every`` (100) training
steps, the mean over the block's steps of the fraction of the 1024-sample batch it fired on. A rate of
exactly 0 means the latent fired on none of the block's 102,400 samples. L0 over a block is the sum of
the block's rates over the latents (the mean number of latents firing per sample).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.toy_sae_handle import ToySaeHandle
from harness.core.value_shape import Table, names
from harness.metrics.toy_sae import toy_sae
from harness.registry import metric

Step = Annotated[int, Field(ge=0)]


def activity_log(sae: ToySaeHandle) -> Tensor:
    """The SAE's activity log [n_blocks, n_inst, d_sae], or ``ValueError`` when it has none."""
    if sae.activity_log is None:
        raise ValueError(f"SAE {sae.identity.name!r} has no activity log (untrained, or trained before the log was kept)")
    return sae.activity_log


def first_silent_run(rates: Tensor, blocks: int, start_before: int) -> tuple[int, int] | None:
    """(first, end) blocks of the first run of at least ``blocks`` consecutive blocks with rate exactly 0 in
    ``rates`` [n_blocks] that starts before block ``start_before`` (end exclusive), or None."""
    start = None
    for k, silent in enumerate([*(rates == 0).tolist(), False]):
        if silent and start is None:
            start = k
        elif not silent and start is not None:
            if k - start >= blocks and start < start_before:
                return start, k
            start = None
    return None


RECOVERY = ("dead", "fired_again", "revived", "stayed_dead_share", "instances_with_dead")


@metric("toy_sae.dead_recovery", value=Table(names(*RECOVERY)))
def dead_recovery(ctx: MetricContext, *, min_silent_steps: Annotated[int, Field(ge=1)] = 1000,
                  end_steps: Annotated[int, Field(ge=1)] = 500, revived_rate: Annotated[float, Field(gt=0, lt=1)] = 0.0125) -> Measurement:
    """Latents (over all instances) that died: fired on no sample for at least ``min_silent_steps`` consecutive
    steps (whole logged blocks, ≥ 102,400 samples for 1000 steps) starting before the last ``end_steps``
    (``dead``); how many of them fire again on any sample after that first silent run (``fired_again``);
    how many fire at a rate >= ``revived_rate`` (half the base model's 2.5% by default) over the last
    ``end_steps`` of training (``revived``); (dead − revived) / dead (``stayed_dead_share``, 1 when none died);
    the instances with a dead latent. Without resampling a silent latent's encoder gets no gradient while it
    stays silent; a single sample that crosses its threshold gives it one (and Adam, its second-moment estimate
    decayed over the silent steps, does not scale that step down with the rare gradient)."""
    sae = toy_sae(ctx)
    log = activity_log(sae)
    silent_blocks = -(-min_silent_steps // sae.log_every)
    end_blocks = min(-(-end_steps // sae.log_every), log.shape[0])
    end_rate = log[-end_blocks:].mean(dim=0)
    dead, fired, revived = [], [], []
    for k in range(log.shape[1]):
        for j in range(log.shape[2]):
            run = first_silent_run(log[:, k, j], silent_blocks, log.shape[0] - end_blocks)
            if run is None:
                continue
            name = f"i{k}.l{j}"
            dead.append({"latent": name, "silent_from": run[0] * sae.log_every, "silent_to": run[1] * sae.log_every,
                         "blocks_firing_after": int((log[run[1]:, k, j] > 0).sum()),
                         "end_rate": float(end_rate[k, j])})
            fired += [name] if bool((log[run[1]:, k, j] > 0).any()) else []
            revived += [name] if float(end_rate[k, j]) >= revived_rate else []
    instances = {entry["latent"].split(".")[0] for entry in dead}
    return Measurement({"dead": float(len(dead)), "fired_again": float(len(fired)), "revived": float(len(revived)),
                        "stayed_dead_share": (len(dead) - len(revived)) / len(dead) if dead else 1.0,
                        "instances_with_dead": float(len(instances))},
                       details={"min_silent_steps": min_silent_steps, "end_steps": end_steps, "revived_rate": revived_rate,
                                "dead_latents": dead, "fired_again": fired, "revived": revived})


L0_CHANGE = ("fell", "rose", "median_ratio", "window_l0", "final_l0")


def block_l0(sae: ToySaeHandle, from_step: int, to_step: int) -> Tensor:
    """Mean L0 per instance [n_inst] over the logged blocks wholly inside steps [from_step, to_step) (``ValueError``
    if there is none): the mean number of latents firing per sample."""
    log = activity_log(sae)
    first, last = -(-from_step // sae.log_every), min(to_step // sae.log_every, log.shape[0])
    if last <= first:
        raise ValueError(f"no logged block of {sae.log_every} steps lies inside steps [{from_step}, {to_step})")
    return log[first:last].sum(dim=-1).mean(dim=0)


@metric("toy_sae.l0_change", value=Table(names(*L0_CHANGE)))
def l0_change(ctx: MetricContext, *, from_step: Annotated[int, Field(ge=0)] = 4000, to_step: Annotated[int, Field(ge=1)] = 5000,
              end_steps: Annotated[int, Field(ge=1)] = 500, margin: Annotated[float, Field(ge=0)] = 0.1) -> Measurement:
    """L0 (mean latents firing per sample, from the activity log) over steps [from_step, to_step) against L0 over
    the last ``end_steps`` of training, per instance: how many instances' L0 ``fell`` afterwards (window L0 >
    (1 + margin) · final L0) and how many ``rose`` (final > (1 + margin) · window); the median of window / final;
    both L0s averaged over the instances. A fall after the early drop is the "non-sparse solution before the
    ideal one"."""
    sae = toy_sae(ctx)
    log = activity_log(sae)
    window = block_l0(sae, from_step, to_step)
    final = block_l0(sae, max(0, log.shape[0] * sae.log_every - end_steps), log.shape[0] * sae.log_every)
    ratio = window / final.clamp_min(1e-12)
    fell, rose = window > (1 + margin) * final, final > (1 + margin) * window
    return Measurement({"fell": float(fell.sum()), "rose": float(rose.sum()), "median_ratio": float(ratio.median()),
                        "window_l0": float(window.mean()), "final_l0": float(final.mean())},
                       details={"from_step": from_step, "to_step": to_step, "end_steps": end_steps, "margin": margin,
                                "window_l0": [round(float(v), 4) for v in window], "final_l0": [round(float(v), 4) for v in final],
                                "fell": [f"i{k}" for k in torch.nonzero(fell).flatten().tolist()],
                                "rose": [f"i{k}" for k in torch.nonzero(rose).flatten().tolist()]})
