"""Spread of the fitted claims across seeds and BLAS kernels, and the baseline tolerance it implies.

A fitted metric (``@metric(..., fitted=True)``: an optimiser's result) is deterministic for a
seed on one machine, but another CPU's kernels round differently, and an optimiser that follows a
non-convex landscape turns last-bit differences into a different path: the trained toy's rank-2
fit lands on 86 to 90 tokens of 256 depending on seed and kernel.  A baseline that holds on any
machine needs a drift tolerance that covers that spread, measured, not picked.

For every fitted claim in the given claim files, this script measures the claim's selected value
for each seed in ``--seeds`` (the claim's ``seed`` parameter, and its reference's, replaced) under
each kernel setting of :data:`KERNELS` (a fresh process each, since the libraries read these
variables at start-up), and derives

    tolerance = max(t_{0.995, n-1} * s * sqrt(2), resolution)

with ``n`` samples of standard deviation ``s``: the 99% two-sided bound on the difference of
two independent runs, if runs vary like the samples (the difference of two has standard
deviation ``s * sqrt(2)``; ``t`` from Student's distribution for an estimated ``s``).
``resolution`` is one token of the model's vocabulary (``1 / d_vocab``), the smallest step an
accuracy can take, so that identical samples do not give a zero tolerance.  The tolerance is
rounded up to two significant digits; each claim must declare it as ``baseline_tolerance: {abs:
...}`` (``tests/test_fit_spread.py`` checks it against the committed results).

    .venv/bin/python benchmarks/fit_spread.py claims/toy                # writes reports/baselines/fit-spread.json
    .venv/bin/python benchmarks/fit_spread.py claims/toy --slow --seeds 0,1 --kernels native,generic

Measured (2 shared cores): the non-slow fitted claims of claims/toy, 5 seeds x 5 kernel settings,
take a few minutes; see the closing table it prints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "reports" / "baselines" / "fit-spread.json"
FORMAT = "interp-claims-fit-spread"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
KERNELS: dict[str, dict[str, str]] = {
    "native": {},
    "one-thread": ONE_THREAD,
    "haswell": {"OPENBLAS_CORETYPE": "Haswell"},
    "sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge", **ONE_THREAD},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OPENBLAS_CORETYPE": "Haswell", **ONE_THREAD},
}
"""Kernel settings: the libraries' own switches for the code paths another x86 CPU would take
(OpenBLAS's per-CPU kernels, ATen's SIMD level, MKL's conditional reproducibility mode, threads)."""
CONFIDENCE = 0.99


def claim_fingerprint(model: str, metric: str, params: dict[str, Any], inputs: Any, select: str | None) -> str:
    """sha256 of what a fitted claim measures: a changed claim must be measured again."""
    text = json.dumps([model, metric, params, inputs, select], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def fitted_claims(paths: list[str], include_slow: bool) -> list[dict[str, Any]]:
    """The claims whose metric is fitted, as plain data (file, id, model, metric, params, ...)."""
    from harness.loader import find_claim_files, load_claim_files
    from harness.registry import get_metric

    found = []
    for loaded in load_claim_files(find_claim_files(paths)):
        for claim in loaded.spec.claims:
            if not get_metric(claim.metric).fitted or (claim.slow and not include_slow):
                continue
            model = loaded.model_of(claim) or ""
            found.append({
                "file": Path(os.path.relpath(Path(loaded.path).resolve(), ROOT)).as_posix(), "id": claim.id, "model": model, "metric": claim.metric,
                "params": claim.params, "inputs": claim.inputs, "select": claim.select,
                "fingerprint": claim_fingerprint(model, claim.metric, claim.params, claim.inputs, claim.select),
            })
    return found


def with_seed(params: dict[str, Any], seed: int) -> dict[str, Any]:
    """``params`` with ``seed`` replaced (a fitted metric without one cannot be re-seeded)."""
    if "seed" not in params:
        raise ValueError(f"a fitted claim must give 'seed' explicitly to be re-seeded: {params}")
    return {**params, "seed": seed}


def measure_claims(claims: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Worker: each claim's selected value per seed, in this process's kernel setting."""
    from harness.core.errors import ModelUnavailable
    from harness.runner import measure
    from harness.session import Session

    session = Session()
    out: dict[str, Any] = {}
    for claim in claims:
        values: dict[str, float] = {}
        try:
            d_vocab = session.model(claim["model"]).shape.d_vocab
            for seed in seeds:
                measured = measure(session, claim["model"], claim["metric"], with_seed(claim["params"], seed),
                                   claim["inputs"], claim["select"])
                values[str(seed)] = float(measured.value)
        except ModelUnavailable as exc:
            out[claim["id"]] = {"skipped": str(exc)}
            continue
        out[claim["id"]] = {"values": values, "d_vocab": d_vocab}
    return out


def run_worker(kernel: str, claims: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One fresh process under ``KERNELS[kernel]``; returns its measurements."""
    with tempfile.TemporaryDirectory() as folder:
        job, result = Path(folder) / "claims.json", Path(folder) / "values.json"
        job.write_text(json.dumps({"claims": claims, "seeds": seeds}))
        env = {**os.environ, **KERNELS[kernel]}
        subprocess.run([sys.executable, __file__, "--worker", str(job), str(result)], check=True, env=env, cwd=ROOT)
        return json.loads(result.read_text())


def student_t(p: float, dof: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with ``dof`` degrees of freedom: bisection on
    ``P(T <= x) = 1/2 + integral_0^x f(u) du``, the density
    ``f(u) = Gamma((v+1)/2) / (sqrt(v pi) Gamma(v/2)) (1 + u^2/v)^(-(v+1)/2)`` integrated by
    Simpson's rule (2,000 intervals: exact to 1e-9 at the quantiles used here)."""
    v = float(dof)
    log_norm = math.lgamma((v + 1) / 2) - math.lgamma(v / 2) - 0.5 * math.log(v * math.pi)
    density = lambda u: math.exp(log_norm - (v + 1) / 2 * math.log1p(u * u / v))  # noqa: E731

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + h / 3 * (density(0.0) + inner + density(x))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, high * 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def round_up(x: float, digits: int = 2) -> float:
    """``x`` rounded up to ``digits`` significant digits (0 stays 0)."""
    if x <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(x)) - digits + 1)
    return round(math.ceil(round(x / scale, 9)) * scale, 12)


def derive(samples: list[float], d_vocab: int) -> dict[str, float]:
    """Mean, standard deviation, t and the tolerance (module docstring) of ``samples``."""
    n = len(samples)
    sd = statistics.stdev(samples) if n > 1 else 0.0
    t = student_t(1 - (1 - CONFIDENCE) / 2, max(n - 1, 1))
    resolution = 1.0 / d_vocab
    return {"n": n, "mean": statistics.fmean(samples), "sd": sd, "min": min(samples), "max": max(samples),
            "t": t, "resolution": resolution, "tolerance": round_up(max(t * sd * math.sqrt(2), resolution))}


def summarise(claims: list[dict[str, Any]], runs: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The spread file's content: per claim, every sample and the derived tolerance."""
    out: dict[str, Any] = {}
    for claim in claims:
        per_kernel = {kernel: run[claim["id"]] for kernel, run in runs.items()}
        if any("skipped" in entry for entry in per_kernel.values()):
            continue
        samples = [{"kernel": kernel, "seed": int(seed), "value": value}
                   for kernel, entry in per_kernel.items() for seed, value in entry["values"].items()]
        d_vocab = next(iter(per_kernel.values()))["d_vocab"]
        out[claim["id"]] = {
            "file": claim["file"], "model": claim["model"], "metric": claim["metric"], "select": claim["select"],
            "fingerprint": claim["fingerprint"], **derive([s["value"] for s in samples], d_vocab), "samples": samples,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["claims/toy"])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--kernels", default=",".join(KERNELS), help=f"of: {', '.join(KERNELS)}")
    parser.add_argument("--slow", action="store_true", help="include the slow fitted claims")
    parser.add_argument("--out", default=str(OUTPUT), help="the spread file to update (entries of other claims are kept)")
    parser.add_argument("--worker", nargs=2, metavar=("JOB", "RESULT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(measure_claims(job["claims"], job["seeds"])))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    claims = fitted_claims(args.paths, args.slow)
    runs = {}
    for kernel in args.kernels.split(","):
        start = time.perf_counter()
        runs[kernel] = run_worker(kernel, claims, seeds)
        print(f"{kernel:<12} {KERNELS[kernel] or '(as installed)'}  {time.perf_counter() - start:.0f} s", flush=True)
    measured = summarise(claims, runs, seeds)
    path = Path(args.out)
    existing = json.loads(path.read_text())["claims"] if path.exists() else {}
    data = {"format": FORMAT, "confidence": CONFIDENCE, "kernels": KERNELS, "claims": dict(sorted({**existing, **measured}.items()))}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"\n{'claim':<66} {'n':>3} {'min':>8} {'max':>8} {'sd':>8} {'tolerance':>9}")
    for claim_id, entry in measured.items():
        print(f"{claim_id:<66} {entry['n']:>3} {entry['min']:>8.4f} {entry['max']:>8.4f} {entry['sd']:>8.5f} {entry['tolerance']:>9.4g}")
    print(f"\nwrote {path}; declare each tolerance as the claim's baseline_tolerance: {{abs: ...}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
