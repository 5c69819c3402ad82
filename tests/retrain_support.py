"""Comparing weights retrained here with the committed ones, on the CPU that trained them or another.

Training amplifies last-bit differences. The same recipe, seed and thread count give the committed
tensors bit for bit only on the kernels that trained them: the torch version, the vector unit and the
CPU model (:func:`fixtures.tms.train.kernels`; MKL picks its matrix-product code by CPU), which a
manifest row may record (:func:`assert_bitwise_where_trained`). Elsewhere no entry-wise tolerance
holds for every model. Measured on an AMD EPYC (Zen 4, AVX-512), one thread, against the files trained
on an Intel Xeon (AVX-512), the largest |retrained - committed| entry as a fraction of the weights'
largest |entry|: ``tms-4f2d-corr`` 0.3%, ``tms-100f20d`` 0.3%, ``tms-abs-10f10d`` 1.6%, the
double-descent model at b = 5 1.2% (2.6% with the generic kernels: ``ATEN_CPU_CAPABILITY=default``,
``MKL_CBWR=COMPATIBLE``), while ``tms-abs-100f40d`` sent 4 of its 7 instances to other solutions
(108%; the other three within 4.5%) and a JumpReLU SAE one of its 16 instances. Every one of the 12
claims on ``tms-abs-100f40d`` still kept its verdict on those weights: across CPUs, what a retrain must
reproduce is the claims (:func:`assert_claims_hold_on_retrained`). A model no claim can run on
retrained (the double-descent sweep) is held to :data:`CROSS_CPU_REL` (:func:`assert_within_rounding`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

CROSS_CPU_REL = 0.1
"""For :func:`assert_within_rounding`: the largest |retrained - committed| entry accepted, as a fraction of
the committed weights' largest |entry|: about 4x the drift of the double-descent model at b = 5 (2.6%),
and 13x below the difference between two seeds of every toy-model recipe that ships two (128% or more;
the sweep ships one seed)."""

CLAIMS = Path(__file__).resolve().parent.parent / "claims" / "arena"


def kernels_match(row: Mapping[str, object]) -> bool:
    """Whether ``row`` (a manifest row) records the kernels this process trains with: torch version,
    vector unit and CPU model all equal. A row that records none of them never matches."""
    from fixtures.tms.train import kernels

    return all(row.get(key) == value for key, value in kernels().items())


def assert_bitwise_where_trained(trained: Mapping[str, torch.Tensor], committed: Mapping[str, torch.Tensor],
                                 row: Mapping[str, object]) -> bool:
    """Where ``row`` (the weights' manifest row) records this process's kernels, assert every committed
    tensor equals the retrained one bit for bit and return True; elsewhere compare nothing, return False."""
    assert committed.keys() <= trained.keys(), sorted(set(committed) - set(trained))
    if not kernels_match(row):
        return False
    for key, tensor in committed.items():
        assert torch.equal(trained[key], tensor), f"{key}: not bit for bit on the kernels that trained it"
    return True


def assert_within_rounding(trained: Mapping[str, torch.Tensor], committed: Mapping[str, torch.Tensor]) -> None:
    """Every committed tensor within :data:`CROSS_CPU_REL` of the committed weights' largest |entry| of the
    retrained one: the same solution, moved by rounding."""
    assert committed.keys() <= trained.keys(), sorted(set(committed) - set(trained))
    scale = max(float(tensor.abs().max()) for tensor in committed.values())
    for key, tensor in committed.items():
        drift = float((trained[key] - tensor).abs().max())
        assert drift <= CROSS_CPU_REL * scale, (
            f"{key}: retrained differs from committed by {drift:.3g}, more than {CROSS_CPU_REL:g} of the weights' "
            f"scale {scale:.3g}")


def _names_model(text: str, names: tuple[str, ...]) -> bool:
    pattern = "|".join(re.escape(name) for name in names)
    return re.search(rf"^\s*model: ({pattern})\s*$", text, re.MULTILINE) is not None


def assert_claims_hold_on_retrained(names: str | tuple[str, ...], handle: object, *, at_least: int = 1) -> list[str]:
    """Run every course claim (``claims/arena/1.5.4-*``) on the model ``names`` (a recipe's name is also its
    seed 0: ``NAME`` means ``(NAME, NAME@seed=0)``) against ``handle`` (retrained weights under the committed
    model's names) and assert each keeps its expected verdict; returns the claim ids run (at least
    ``at_least``)."""
    from harness.loader import find_claim_files, load_claim_file
    from harness.runner import run_claim
    from harness.session import Session

    names = (names, f"{names}@seed=0") if isinstance(names, str) else names
    session = Session()
    session.models.update({name: handle for name in names})
    checked: list[str] = []
    for path in find_claim_files([CLAIMS]):
        if not path.name.startswith("1.5.4-") or not _names_model(path.read_text(encoding="utf-8"), names):
            continue  # parse only the files that name the model (a claim's or the file's default model)
        loaded = load_claim_file(path)
        for claim in loaded.spec.claims:
            if loaded.model_of(claim) in names:
                result = run_claim(loaded, claim, session)
                assert result.passed, (claim.id, result.verdict, result.reason)
                checked.append(claim.id)
    assert len(checked) >= at_least, f"{len(checked)} claims on {names} (expected at least {at_least})"
    return checked
