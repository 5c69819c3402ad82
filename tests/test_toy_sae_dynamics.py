"""Toy SAEs over their training: the activity log the trainer keeps and the metrics that read it."""

from __future__ import annotations

import pytest
import torch

from harness.context import MetricContext
from harness.core.model_identity import ModelIdentity
from harness.core.toy_sae_handle import ToySaeHandle
from harness.core.toy_shape import SaeShape
from harness.metrics.toy_sae_dynamics import dead_recovery
from harness.session import Session


def _sae(activity_log: torch.Tensor | None) -> ToySaeHandle:
    n_inst = 1 if activity_log is None else activity_log.shape[1]
    params = {"W_enc": torch.zeros(n_inst, 2, 5), "W_dec": torch.ones(n_inst, 5, 2), "b_enc": torch.zeros(n_inst, 5),
              "b_dec": torch.zeros(n_inst, 2)}
    identity = ModelIdentity(name="t-sae", source="toy", weights_sha256=None, config_sha256=None)
    return ToySaeHandle(params, torch.eye(2, 5), 0.025, identity, SaeShape(n_inst, 2, 5), activity_log=activity_log)


def test_dead_recovery_counts_latents_silent_for_long_and_what_became_of_them() -> None:
    log = torch.full((200, 2, 5), 0.025)
    log[10:, 0, 1] = 0.0  # dead from step 1000 to the end
    log[15:30, 0, 2] = 0.0  # silent over steps 1500-3000, then back at the full rate
    log[40:60, 1, 3] = 0.0  # silent over steps 4000-6000, then one sample in a block, then silent to the end
    log[60, 1, 3] = 1e-5
    log[61:, 1, 3] = 0.0
    log[20:29, 1, 4] = 0.0  # silent for 900 steps only: not dead
    log[195:, 1, 0] = 0.0  # silent over the last 500 steps only: starts too late to count
    value = dead_recovery(MetricContext(_sae(log), None, Session()), min_silent_steps=1000, end_steps=500, revived_rate=0.0125)
    assert value.value == {"dead": 3.0, "fired_again": 2.0, "revived": 1.0, "stayed_dead_share": pytest.approx(2 / 3),
                           "instances_with_dead": 2.0}
    runs = {entry["latent"]: (entry["silent_from"], entry["silent_to"], entry["blocks_firing_after"]) for entry in value.details["dead_latents"]}
    assert runs == {"i0.l1": (1000, 20000, 0), "i0.l2": (1500, 3000, 170), "i1.l3": (4000, 6000, 1)}
    assert value.details["revived"] == ["i0.l2"]
    assert dead_recovery(MetricContext(_sae(log), None, Session()), min_silent_steps=800).value["dead"] == 4.0


def test_dead_recovery_needs_a_log_and_none_dead_means_all_stayed() -> None:
    with pytest.raises(ValueError, match="no activity log"):
        dead_recovery(MetricContext(_sae(None), None, Session()))
    value = dead_recovery(MetricContext(_sae(torch.full((200, 1, 5), 0.02)), None, Session())).value
    assert value["dead"] == 0.0 and value["stayed_dead_share"] == 1.0


def test_trainer_logs_every_block_exactly() -> None:
    """The activity log is the mean over each block of the per-step firing fractions the trainer already
    keeps for resampling (its last ``window`` steps): the two agree on the blocks they share, and the log's
    latent sum over the first block is the mean of the first block's per-step L0."""
    from dataclasses import replace

    from fixtures.tms.sae import SAE_RECIPES, train_sae

    recipe = replace(SAE_RECIPES["sae-5f2d"], steps=250, window=100, n_inst=2)
    W_base = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    out = train_sae(recipe, W_base, 0.025, 0)
    log = out["activity_log"]
    assert tuple(log.shape) == (3, 2, 5) and bool((log >= 0).all()) and bool((log <= 1).all())
    # steps 150-249: the window; the last block is steps 200-249 (50 steps)
    assert torch.allclose(log[2], out["frac_active_window"][50:].mean(0), atol=1e-6)
    assert float(out["l0_log"][0].sum()) > 0
