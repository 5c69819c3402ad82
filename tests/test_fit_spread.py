"""Fitted claims hold on other machines: tolerances derived from their measured spread, and the
baseline check passing under another kernel setting.

``benchmarks/fit_spread.py`` measures every fitted claim (an optimiser's result) across seeds and
BLAS kernel settings and writes ``reports/baselines/fit-spread.json``; these tests check that the
committed file still describes the claims as they are, that each declared ``baseline_tolerance``
is the one derived from it, and run the fitted claims against the shipped baseline in a process
whose libraries take other kernels than this machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.frontends.pytest_plugin.state import SESSION_KEY
from harness.measurement_cache import MeasurementCache
from harness.session import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import fit_spread  # noqa: E402

SPREAD = json.loads(fit_spread.OUTPUT.read_text())["claims"]
FITTED = fit_spread.fitted_claims([str(ROOT / "claims")], include_slow=True)


def _declared(claim: dict) -> dict | None:
    from harness.loader import load_claim_file

    loaded = load_claim_file(ROOT / claim["file"])
    spec = next(c for c in loaded.spec.claims if c.id == claim["id"])
    return spec.baseline_tolerance.model_dump() if spec.baseline_tolerance else None


def _is_slow(claim: dict) -> bool:
    from harness.loader import load_claim_file

    loaded = load_claim_file(ROOT / claim["file"])
    return next(c for c in loaded.spec.claims if c.id == claim["id"]).slow


SHIPPED = [c for c in FITTED if c["file"].startswith("claims/toy/")]
"""Fitted claims on the models this project ships (every one can be measured here)."""


@pytest.mark.parametrize("claim", [c for c in SHIPPED if not _is_slow(c)], ids=lambda c: c["id"])
def test_every_fast_shipped_fitted_claim_was_measured_as_it_is(claim: dict) -> None:
    entry = SPREAD.get(claim["id"])
    assert entry is not None, f"{claim['id']}: not in {fit_spread.OUTPUT.name}; run benchmarks/fit_spread.py"
    assert entry["fingerprint"] == claim["fingerprint"], (
        f"{claim['id']} changed since its spread was measured; run benchmarks/fit_spread.py again"
    )


@pytest.mark.parametrize("claim", [c for c in FITTED if c["id"] in SPREAD], ids=lambda c: c["id"])
def test_declared_tolerance_is_the_derived_one(claim: dict) -> None:
    entry = SPREAD[claim["id"]]
    assert entry["fingerprint"] == claim["fingerprint"], f"{claim['id']}: measured spread is stale"
    declared = _declared(claim) or {}
    assert declared.get("abs") == entry["tolerance"] and not declared.get("rel"), (
        f"{claim['id']}: declare baseline_tolerance: {{abs: {entry['tolerance']}}} "
        f"(derived from {entry['n']} runs, sd {entry['sd']:.4g}), not {declared}"
    )


@pytest.mark.parametrize("claim_id", sorted(SPREAD))
def test_recorded_tolerance_follows_from_the_recorded_samples(claim_id: str) -> None:
    entry = SPREAD[claim_id]
    derived = fit_spread.derive([s["value"] for s in entry["samples"]], round(1 / entry["resolution"]))
    assert derived["tolerance"] == entry["tolerance"]
    kernels = {s["kernel"] for s in entry["samples"]}
    assert kernels <= set(fit_spread.KERNELS) and "native" in kernels and len(kernels) >= 2, (
        f"{claim_id}: measured under {sorted(kernels)}; needs this machine's kernels and at least one other"
    )


@pytest.mark.parametrize(
    "p, dof, table",
    [(0.995, 24, 2.797), (0.975, 10, 2.228), (0.995, 9, 3.250), (0.95, 30, 1.697), (0.995, 3, 5.841), (0.975, 1, 12.706)],
)
def test_student_t_quantile_matches_the_table(p: float, dof: int, table: float) -> None:
    assert fit_spread.student_t(p, dof) == pytest.approx(table, abs=0.0006)


def test_round_up_never_rounds_down() -> None:
    assert fit_spread.round_up(0.0123) == 0.013
    assert fit_spread.round_up(0.004) == 0.004
    assert fit_spread.round_up(1 / 256) == 0.004
    assert fit_spread.round_up(0.0) == 0.0


def claim_items_cache_options(config: pytest.Config) -> list[str]:
    """The child's cache options: the cache this run's claim items use (the one the claims
    plugin opened at configure time, from ``--claims-no-cache``, ``--claims-cache-dir`` and the
    user's ``$INTERP_CLAIMS_NO_CACHE`` / ``$INTERP_CLAIMS_MEASUREMENT_CACHE``, before
    tests/conftest.py turned the cache off for the tests), never another folder."""
    cache = config.stash[SESSION_KEY].cache
    return ["--claims-no-cache"] if cache is None else ["--claims-cache-dir", str(cache.root)]


def test_the_child_follows_the_claim_items_cache(tmp_path: Path) -> None:
    """The claim items' cache off (by the option or by ``$INTERP_CLAIMS_NO_CACHE``, which the tests'
    own ``INTERP_CLAIMS_NO_CACHE=1`` hides from the environment): the child's too; on: its folder."""
    def config_with(cache: MeasurementCache | None) -> pytest.Config:
        stash = pytest.Stash()
        stash[SESSION_KEY] = Session(cache=cache)
        return SimpleNamespace(stash=stash)  # type: ignore[return-value]

    assert claim_items_cache_options(config_with(None)) == ["--claims-no-cache"]
    assert claim_items_cache_options(config_with(MeasurementCache(tmp_path / "c"))) == ["--claims-cache-dir", str(tmp_path / "c")]


def test_fitted_claims_pass_the_baseline_under_other_kernels(request: pytest.FixtureRequest) -> None:
    """The fast fitted claims, in a process on ATen's generic kernels, MKL's compatible mode,
    OpenBLAS's Haswell kernels and one thread, against the shipped baseline (measured afresh
    where this run's claim items measure afresh: ``--claims-no-cache`` or ``$INTERP_CLAIMS_NO_CACHE``)."""
    node_ids = [f"{c['file']}::{c['id']}" for c in SHIPPED if not _is_slow(c)]
    assert node_ids, "no fitted claim to run"
    env = {**os.environ, **fit_spread.KERNELS["generic"]}
    # The child runs the shipped claims as they are (no test patches a metric there), so it uses
    # the measurement cache like the claim items of this command, named by an explicit option
    # (which outranks the tests' own $INTERP_CLAIMS_NO_CACHE it inherits): the kernel variables
    # are part of every key, so it reads only values measured under these same kernels by the same code.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *node_ids,
         "--claims-baseline", "reports/baselines/shipped.json", *claim_items_cache_options(request.config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(node_ids)} passed" in done.stdout
