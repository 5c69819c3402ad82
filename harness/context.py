"""What a metric function receives: the model, the inputs, and shared forward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness.core.input_batch import InputBatch

if TYPE_CHECKING:  # pragma: no cover  (torch: the CLI imports this before it knows whether anything is computed)
    from harness.core.model_handle import Forward, ModelHandle
    from harness.core.toy_ddd_handle import DoubleDescentHandle
    from harness.core.toy_handle import ToyModelHandle
    from harness.core.toy_sae_handle import ToySaeHandle
    from harness.session import Session


@dataclass(frozen=True)
class MetricContext:
    """A metric's view of one claim: ``model``, ``inputs`` (if the claim gives any), ``session``.

    ``model`` is a transformer's :class:`ModelHandle` or a toy model of superposition's
    :class:`ToyModelHandle`, a toy SAE's :class:`ToySaeHandle` or a double descent sweep's
    :class:`DoubleDescentHandle` (``harness/metrics/superposition.py``, ``toy_sae.py`` and
    ``double_descent.py`` read those)."""

    model: ModelHandle | ToyModelHandle | ToySaeHandle | DoubleDescentHandle
    inputs: InputBatch | None
    session: "Session"

    def forward(self) -> Forward:
        """The cached forward pass of ``model`` on ``inputs`` (shared across claims)."""
        if self.inputs is None:
            raise ValueError("this metric runs the model, but the claim gives no 'inputs'")
        return self.session.forward(self.model, self.inputs)

    def require_inputs(self) -> InputBatch:
        if self.inputs is None:
            raise ValueError("this metric needs 'inputs'")
        return self.inputs
