"""``pytest -n 2`` (pytest-xdist): claims grouped by model, one worker per model; ``--claims-out``
and ``--claims-baseline`` give the same results.json values and verdicts as a serial run."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("xdist", reason="pytest-xdist is a test extra: pip install -e '.[test]'")

pytest_plugins = ["pytester"]

from tests.test_baseline import CLAIMS as ATTENTION  # noqa: E402  (the same two planted claims)


OV = """\
source: {course: project}
model: planted-ov-rank
claims:
  - id: ov-rank-16-top1
    statement: Head 0.0 copies a quarter of the tokens.
    metric: ov.full_circuit_topk
    params: {heads: ["0.0"], ks: [1, 5]}
    select: top1
    expect: {approx: 0.25, abs: 1.0e-9}
  - id: ov-rank-16-top5
    statement: Head 0.0's top-5 accuracy is 20/64.
    metric: ov.full_circuit_topk
    params: {heads: ["0.0"], ks: [1, 5]}
    select: top5
    expect: {approx: 0.3125, abs: 1.0e-9}
  - id: random-control-copies-less
    statement: The random control's head 0.0 copies less than the planted head.
    model: planted-attn-2l-random
    metric: ov.full_circuit_topk
    params: {heads: ["0.0"], ks: [1]}
    select: top1
    expect: {"<": 0.25}
"""


def write(root: Path, threshold: str = "0.9") -> None:
    (root / "claims").mkdir(exist_ok=True)
    (root / "claims" / "attention.yaml").write_text(ATTENTION.replace("THRESHOLD", threshold))
    (root / "claims" / "ov.yaml").write_text(OV)


def untimed(entry: dict) -> dict:
    """A claim entry without its wall times (``duration_s``, ``details.seconds``)."""
    details = {k: v for k, v in entry["details"].items() if k != "seconds"}
    return {**{k: v for k, v in entry.items() if k != "duration_s"}, "details": details}


def comparable(path: Path) -> dict:
    """What must not depend on how the run was scheduled: claim entries (without their times), summary, models."""
    record = json.loads(path.read_text())
    return {
        "claims": [untimed(entry) for entry in record["claims"]],
        "summary": record["summary"],
        "models": {name: {k: v for k, v in model.items() if k != "load_seconds"} for name, model in record["models"].items()},
        "spec_files": record["provenance"]["spec_files"],
    }


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # several pytest processes, each importing torch and TransformerLens
def test_xdist_gives_the_serial_record_and_baseline_verdicts(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the subprocesses run this checkout's plugin
    write(pytester.path)
    pytester.runpytest_subprocess("claims", "-q", "--claims-out", "serial").assert_outcomes(passed=5)
    parallel = pytester.runpytest_subprocess("claims", "-v", "-n", "2", "--claims-out", "parallel")
    parallel.assert_outcomes(passed=5)
    assert comparable(pytester.path / "parallel" / "results.json") == comparable(pytester.path / "serial" / "results.json")
    from harness.frontends.pytest_plugin.parallel import worker_threads

    cpus = len(os.sched_getaffinity(0))
    threads = json.loads((pytester.path / "parallel" / "results.json").read_text())["provenance"]["torch_threads"]
    assert threads == worker_threads(2, cpus) == max(1, cpus // 2)  # each worker on its share of the CPUs
    assert "(cached)" not in (pytester.path / "parallel" / "report.md").read_text()

    # grouped by model: every claim of a model ran in one worker
    model = {"prev-score": "planted-attn-2l", "induction-heads": "planted-attn-2l", "ov-rank-16-top1": "planted-ov-rank",
             "ov-rank-16-top5": "planted-ov-rank", "random-control-copies-less": "planted-attn-2l-random"}
    workers: dict[str, set[str]] = {}
    for worker, claim_id in re.findall(r"\[(gw\d+)\] .*PASSED claims/\S+::(\S+)", parallel.stdout.str()):
        workers.setdefault(model[claim_id], set()).add(worker)
    assert set(workers) == set(model.values()) and all(len(w) == 1 for w in workers.values()), workers

    from harness.frontends.cli import main as claims_main

    assert claims_main(["bless", str(pytester.path / "serial/results.json"), str(pytester.path / "baseline.json")]) == 0
    pytester.runpytest_subprocess("claims", "-q", "-n", "2", "--claims-baseline", "baseline.json").assert_outcomes(passed=5)
    write(pytester.path, threshold="1.5")  # a flip
    flipped = pytester.runpytest_subprocess("claims", "-q", "-n", "2", "--claims-baseline", "baseline.json")
    flipped.assert_outcomes(passed=4, failed=1)
    write(pytester.path)
    text = (pytester.path / "claims" / "ov.yaml").read_text()
    (pytester.path / "claims" / "ov.yaml").write_text(text[: text.index("  - id: random-control-copies-less")])
    missing = pytester.runpytest_subprocess("claims", "-q", "-n", "2", "--claims-baseline", "baseline.json")
    assert missing.ret == pytest.ExitCode.TESTS_FAILED
    assert "MISSING random-control-copies-less" in missing.stdout.str()


@pytest.mark.parametrize(("workers", "cpus", "threads"), [(2, 2, 1), (2, 16, 8), (3, 16, 5), (4, 2, 1), (1, 2, 2), (0, 2, 2)])
def test_each_worker_gets_its_share_of_the_cpus(workers: int, cpus: int, threads: int) -> None:
    from harness.frontends.pytest_plugin.parallel import worker_threads

    assert worker_threads(workers, cpus) == threads


def test_a_worker_shares_torch_threads_and_the_suites_own_parallel_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from harness.core import cpu_identity
    from harness.frontends.pytest_plugin.parallel import share_cpus

    monkeypatch.setattr(cpu_identity, "usable_cpu_ids", lambda: set(range(8)))
    monkeypatch.setenv(cpu_identity.CPU_SHARE_VARIABLE, "8")  # registered, so share_cpus' own setting is undone afterwards
    before = torch.get_num_threads()
    try:
        share_cpus(4)  # four workers on eight CPUs: two each
        assert torch.get_num_threads() == 2
        assert os.environ[cpu_identity.CPU_SHARE_VARIABLE] == "2" and cpu_identity.cpu_share() == 2
    finally:
        torch.set_num_threads(before)
