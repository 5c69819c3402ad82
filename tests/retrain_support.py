"""Comparing weights retrained here with the committed ones, on the CPU that trained them or another.

Training amplifies last-bit differences. The same recipe, seed and thread count give the committed
tensors bit for bit only on the kernels that trained them: the torch version, the vector unit and the
CPU model (:func:`fixtures.tms.train.kernels`; MKL picks its matrix-product code by CPU), which a
manifest row may record. Elsewhere the retrained tensors are the same solution moved by rounding.
Measured on an AMD EPYC (Zen 4, AVX-512), one thread, against weights trained on an Intel Xeon
(AVX-512), the largest |retrained - committed| entry as a fraction of the weights' scale (their
largest |entry|): ``tms-4f2d-corr`` 0.3%, ``tms-100f20d`` 0.3%, ``tms-abs-10f10d`` 1.6%, the
double-descent model at b = 5 1.2% (2.6% with the generic kernels: ``ATEN_CPU_CAPABILITY=default``,
``MKL_CBWR=COMPATIBLE``). Seeds 0 and 1 of one recipe differ by 128% or more of the scale in ``W``
(every recipe with two seeds): :data:`CROSS_CPU_REL` sits 4x above the drift and 13x below a change
of seed, and the claims on the model must keep their verdicts on the retrained weights
(:func:`assert_claims_hold_on_retrained`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

CROSS_CPU_REL = 0.1
"""Largest |retrained - committed| entry accepted where the kernels may differ from those that trained the
weights, as a fraction of the committed weights' largest |entry| (module docstring)."""

CLAIMS = Path(__file__).resolve().parent.parent / "claims" / "arena"


def kernels_match(row: Mapping[str, object]) -> bool:
    """Whether ``row`` (a manifest row) records the kernels this process trains with: torch version,
    vector unit and CPU model all equal. A row that records none of them never matches."""
    from fixtures.tms.train import kernels

    return all(row.get(key) == value for key, value in kernels().items())


def assert_same_training(trained: Mapping[str, torch.Tensor], committed: Mapping[str, torch.Tensor],
                         row: Mapping[str, object] | None = None) -> None:
    """Every committed tensor equals the retrained one: bit for bit where ``row`` (the weights' manifest
    row) records this process's kernels; else each entry within :data:`CROSS_CPU_REL` of the committed
    weights' largest |entry| (the same solution, moved by rounding)."""
    assert committed.keys() <= trained.keys(), sorted(set(committed) - set(trained))
    if row is not None and kernels_match(row):
        for key, tensor in committed.items():
            assert torch.equal(trained[key], tensor), f"{key}: not bit for bit on the kernels that trained it"
        return
    scale = max(float(tensor.abs().max()) for tensor in committed.values())
    for key, tensor in committed.items():
        drift = float((trained[key] - tensor).abs().max())
        assert drift <= CROSS_CPU_REL * scale, (
            f"{key}: retrained differs from committed by {drift:.3g}, more than {CROSS_CPU_REL:g} of the weights' "
            f"scale {scale:.3g} (rounding amplified by training moves them by a few percent across CPUs)")


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
