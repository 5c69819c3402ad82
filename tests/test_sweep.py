"""``claims sweep``: claims files over models on Ray give the record a serial ``claims run`` gives.

The Ray tests share one local instance (2 CPUs) started by the module and are ``slow`` (Ray's start
alone takes about 10 s on a loaded 2-core machine); the option checks and the gathering run
before or without Ray and are in the default run.
"""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.frontends.cli import EXIT_INVALID, EXIT_MISMATCH, EXIT_OK, main
from harness.frontends.sweep import command
from harness.frontends.sweep.plan import SweepOptionError, SweepTask, plan_sweep, resolve_models
from harness.frontends.sweep.ray_runner import TaskOutcome, run_on_ray, source_root
from harness.frontends.sweep.task import TaskOptions
from harness.loader import load_claim_file

# Two claims on the file's model with one pinned to the untrained control between them (left out
# by --models): the record keeps the file's order although the claims run in two tasks.
FAMILY = """\
source: {course: project, chapter: sweep tests}
model: tms-5f2d
claims:
  - id: dense-two-dims
    statement: The dense instance holds about two features' worth (Frobenius norm squared in [1.9, 2.2]).
    metric: superposition.summary
    params: {instance: 0}
    select: frobenius_sq
    expect: {between: [1.9, 2.2]}
  - id: dense-two-dims-untrained
    statement: The untrained model's dense instance holds about two features' worth.
    model: tms-5f2d@step=0
    metric: superposition.summary
    params: {instance: 0}
    select: frobenius_sq
    expect: {between: [1.9, 2.2]}
    expected_verdict: refuted
  - id: sparse-more-features
    statement: The sparsest instance holds more than 2.5 features' worth.
    metric: superposition.summary
    params: {instance: 7}
    select: frobenius_sq
    expect: {">": 2.5}
"""

# A second file on another model family: two tasks per sweep of both files.
SECOND = """\
source: {course: project, chapter: sweep tests}
model: tms-5f2d@seed=1
claims:
  - id: seed1-dense-two-dims
    statement: Seed 1's dense instance holds about two features' worth.
    metric: superposition.summary
    params: {instance: 0}
    select: frobenius_sq
    expect: {between: [1.9, 2.2]}
"""

HEADS = """\
source: {course: project, chapter: sweep tests}
model: planted-attn-2l
claims:
  - id: induction-head-scores
    statement: Head 1.3 scores on the induction stripe.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: induction}
    select: "1.3"
    expect: {">": 0.5}
"""

PINNED_ONLY = """\
source: {course: project, chapter: sweep tests}
claims:
  - id: pinned
    statement: Seed 0's dense instance holds about two features' worth.
    model: tms-5f2d
    metric: superposition.summary
    params: {instance: 0}
    select: frobenius_sq
    expect: {between: [1.9, 2.2]}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "claims").mkdir()
    for name, text in (("family.yaml", FAMILY), ("second.yaml", SECOND), ("heads.yaml", HEADS), ("pinned.yaml", PINNED_ONLY)):
        (tmp_path / "claims" / name).write_text(text)
    return tmp_path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One local Ray instance for the module (2 CPUs), its workers importing this checkout."""
    ray = pytest.importorskip("ray", reason="the 'sweep' extra (Ray) is not installed")
    ray.init(address="local", num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": source_root()}})
    yield ray
    ray.shutdown()


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what differs between two runs of the same claims: wall times, creation time, the run's mode."""
    claims = [{k: v for k, v in entry.items() if k != "duration_s"} for entry in record["claims"]]
    models = {name: {k: v for k, v in model.items() if k != "load_seconds"} for name, model in record["models"].items()}
    provenance = {k: v for k, v in record["provenance"].items() if k not in ("sweep", "torch_threads")}
    return {"claims": claims, "models": models, "summary": record["summary"], "provenance": provenance}


def read(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


# --- on a local Ray instance -------------------------------------------------------------------


@pytest.mark.slow  # a local Ray instance: about 25 s at load 12 on 2 cores, most of it Ray's start
def test_sweep_writes_the_record_of_a_serial_run(workdir: Path, local_ray: Any, capsys: pytest.CaptureFixture[str]) -> None:
    files = ["claims/family.yaml", "claims/second.yaml"]
    assert main(["run", *files, "--out", "serial", "--no-cache", "--no-progress"]) == EXIT_OK
    assert main(["sweep", *files, "--out", "swept", "--no-cache"]) == EXIT_OK
    serial, swept = read(workdir / "serial"), read(workdir / "swept")
    assert comparable(swept) == comparable(serial)
    assert [entry["id"] for entry in swept["claims"]] == ["dense-two-dims", "dense-two-dims-untrained", "sparse-more-features", "seed1-dense-two-dims"]
    assert swept["provenance"]["sweep"]["tasks"] == 3  # (tms-5f2d, family), (tms-5f2d@step=0, family), (seed=1, second)
    assert swept["provenance"]["sweep"]["failed_tasks"] == 0
    assert (workdir / "swept" / "report.md").read_text().count("dense-two-dims") >= 2
    assert "dense-two-dims-untrained" in (workdir / "swept" / "report.html").read_text()
    assert "[3/3]" in capsys.readouterr().out


@pytest.mark.slow  # a local Ray instance: about 25 s at load 12 on 2 cores, most of it Ray's start
def test_sweep_over_models_equals_serial_runs_of_the_retargeted_file(workdir: Path, local_ray: Any) -> None:
    """``--models`` re-targets the file's model: the same values as ``claims run`` on the file with
    its ``model:`` replaced, ids suffixed with the model (except on the file's own model)."""
    models = ["tms-5f2d", "tms-5f2d@seed=2", "tms-5f2d@step=0"]
    code = main(["sweep", "claims/family.yaml", "--models", ",".join(models), "--out", "swept", "--no-cache"])
    swept = read(workdir / "swept")
    assert code == EXIT_MISMATCH  # the untrained model does not hold the claims: not as the file expects
    expected_ids = [claim if model == "tms-5f2d" else f"{claim}[{model}]" for model in models for claim in ("dense-two-dims", "sparse-more-features")]
    assert [entry["id"] for entry in swept["claims"]] == expected_ids
    for model in models:
        retargeted = FAMILY.replace("model: tms-5f2d\n", f"model: {model}\n", 1)
        (workdir / "one.yaml").write_text(retargeted)
        assert main(["run", "one.yaml", "--out", f"serial-{model}", "--no-cache", "--no-progress"]) in (EXIT_OK, EXIT_MISMATCH)
        serial = [entry for entry in read(workdir / f"serial-{model}")["claims"] if entry["id"] != "dense-two-dims-untrained"]
        ours = [entry for entry in swept["claims"] if entry["model"] == model]
        assert [(e["value"], e["verdict"], e["matched"]) for e in ours] == [(e["value"], e["verdict"], e["matched"]) for e in serial]
    untrained = [entry for entry in swept["claims"] if entry["model"] == "tms-5f2d@step=0"]
    assert {entry["verdict"] for entry in untrained} == {"refuted"}
    assert untrained[0]["rerun"] == "claims sweep 'claims/family.yaml' --models 'tms-5f2d@step=0' -k 'dense-two-dims'"


@pytest.mark.slow  # a local Ray instance: about 25 s at load 12 on 2 cores, most of it Ray's start
def test_a_failed_task_is_an_outcome_with_its_error(local_ray: Any) -> None:
    """A task whose worker raises (here: a claims file that is not valid) comes back as an error, not an exception."""
    good = SweepTask("family.yaml", FAMILY, "0" * 64, None, ((0, "dense-two-dims"),), "tms-5f2d")
    bad = SweepTask("broken.yaml", "claims: [", "1" * 64, None, ((1, "x"),), "tms-5f2d")
    seen: list[str] = []
    outcomes = run_on_ray([good, bad], TaskOptions(no_cache=True), on_done=lambda outcome: seen.append(outcome.task.path))
    assert sorted(seen) == ["broken.yaml", "family.yaml"]
    assert outcomes[0].error is None and outcomes[0].payload["entries"][0][1]["verdict"] == "supported"
    assert outcomes[1].payload is None and "SpecError" in outcomes[1].error and "broken.yaml" in outcomes[1].error


# --- gathering ---------------------------------------------------------------------------------


def test_a_failed_task_gives_error_entries_for_its_claims(workdir: Path) -> None:
    loaded = load_claim_file("claims/family.yaml")
    plan = plan_sweep([loaded], {loaded.path: FAMILY}, ["tms-5f2d@seed=3"], None)
    gathered = command.gather([TaskOutcome(plan.tasks[0], None, "WorkerCrashedError: the worker died")], "suite")
    entries = gathered.ordered_entries()
    assert [entry["id"] for entry in entries] == ["dense-two-dims[tms-5f2d@seed=3]", "sparse-more-features[tms-5f2d@seed=3]"]
    assert {entry["verdict"] for entry in entries} == {"error"}
    assert entries[0]["reason"] == "sweep task failed: WorkerCrashedError: the worker died"
    assert entries[0]["model"] == "tms-5f2d@seed=3" and not entries[0]["matched"]


def test_results_measured_by_other_source_code_are_refused(workdir: Path) -> None:
    loaded = load_claim_file("claims/second.yaml")
    task = plan_sweep([loaded], {loaded.path: SECOND}, None, None).tasks[0]
    payload = {"entries": [], "files": {}, "models": {}, "cache": None, "missing": [], "suite": "b" * 64}
    with pytest.raises(command.SuiteMismatch, match="install the same interp-claims on every node"):
        command.gather([TaskOutcome(task, payload)], "a" * 64)


# --- the plan ----------------------------------------------------------------------------------


def test_plan_numbers_claims_in_a_serial_runs_order(workdir: Path) -> None:
    """Tasks group a file's claims by model; their positions are still the file's order."""
    loaded = load_claim_file("claims/family.yaml")
    plan = plan_sweep([loaded], {loaded.path: FAMILY}, None, None)
    assert [(task.runs_on, task.claims) for task in plan.tasks] == [
        ("tms-5f2d", ((0, "dense-two-dims"), (2, "sparse-more-features"))), ("tms-5f2d@step=0", ((1, "dense-two-dims-untrained"),))]
    swept = plan_sweep([loaded], {loaded.path: FAMILY}, ["tms-5f2d@seed=1", "tms-5f2d"], None)
    assert [(task.model, task.claims) for task in swept.tasks] == [
        ("tms-5f2d@seed=1", ((0, "dense-two-dims"), (1, "sparse-more-features"))), ("tms-5f2d", ((2, "dense-two-dims"), (3, "sparse-more-features")))]
    assert swept.pinned == ["dense-two-dims-untrained"]


# --- options, checked before Ray is asked for anything -------------------------------------------


def test_models_names_and_patterns_in_order() -> None:
    assert resolve_models("tms-5f2d@seed=*") == [f"tms-5f2d@seed={seed}" for seed in range(5)]
    assert resolve_models(" tms-5f2d@step=0 , tms-5f2d ") == ["tms-5f2d@step=0", "tms-5f2d"]
    epochs = [int(name.rpartition("=")[2]) for name in resolve_models("grokking-repro@epoch=*")]
    assert len(epochs) > 3 and epochs == sorted(epochs)  # the model table's order: the run's order


@pytest.mark.parametrize("spec, message", [
    ("tms-5f2d@seed=9", "unknown model 'tms-5f2d@seed=9' (did you mean 'tms-5f2d@seed="),
    ("tms-5f2d@sed=*", "pattern 'tms-5f2d@sed=*' matches no registered model"),
    ("tms-5f2d,,tms-5f2d@seed=1", "an empty item"),
    ("", "an empty item"),
    ("tms-5f2d@s*,tms-5f2d@seed=1", "model 'tms-5f2d@seed=1' is named twice (by 'tms-5f2d@s*' and 'tms-5f2d@seed=1')"),
])
def test_bad_models_option(spec: str, message: str) -> None:
    with pytest.raises(SweepOptionError) as caught:
        resolve_models(spec)
    assert message in str(caught.value)


@pytest.mark.parametrize("argv, message", [
    (["claims/family.yaml", "--models", "tms-5f2d@seed=9"], "--models: unknown model 'tms-5f2d@seed=9'"),
    (["claims/family.yaml", "--models", "planted-attn-2l"],
     "claims/family.yaml's model 'tms-5f2d' is a toy model of superposition; its claims cannot be swept onto models of another kind: planted-attn-2l (transformer)"),
    (["claims/pinned.yaml", "--models", "tms-5f2d@seed=1"], "claims/pinned.yaml has no top-level 'model'"),
    (["claims/heads.yaml", "--models", "planted-ov-rank"], "claims/heads.yaml:"),
    (["claims/family.yaml", "--num-cpus", "0"], "--num-cpus must be at least 1, got 0"),
    (["claims/family.yaml", "--cpus-per-task", "3", "--num-cpus", "2"], "--cpus-per-task 3 is more than the local instance's --num-cpus 2"),
    (["claims/family.yaml", "--num-cpus", "2", "--address", "auto"], "--num-cpus sizes the local instance"),
    (["claims/family.yaml", "--address", "nonsense"], "--address 'nonsense': give auto, HOST:PORT or ray://HOST:PORT"),
    (["claims/family.yaml", "--address", "127.0.0.1:1"], "cannot connect to the Ray cluster at '127.0.0.1:1': nothing answers there"),
    (["claims/family.yaml", "--weights", "no-such-model=x.pt"], "unknown model 'no-such-model'"),
    (["claims/family.yaml", "-k", "no-such-claim"], "no claim id contains 'no-such-claim'"),
    (["claims/nowhere.yaml"], "no such file or folder: claims/nowhere.yaml"),
])
def test_bad_sweep_options_are_clear_errors(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert main(["sweep", *argv, "--out", "out"]) == EXIT_INVALID
    assert message in capsys.readouterr().err
    assert not (workdir / "out" / "results.json").exists()


def test_a_claim_that_does_not_fit_a_swept_model_names_file_line_and_model(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", "claims/heads.yaml", "--models", "planted-ov-rank", "--out", "out"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "claims/heads.yaml:" in err and "(swept onto model 'planted-ov-rank' by --models)" in err
    assert "1.3" in err


def test_without_ray_the_error_names_the_extra(workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["sweep", "claims/family.yaml", "--out", "out"]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "install the 'sweep' extra: pip install -e '.[sweep]'" in err and "ray==2.60.0" in err


def test_sweep_source_root_holds_this_checkout() -> None:
    assert (Path(source_root()) / "harness" / "frontends" / "sweep" / "plan.py").is_file()
    assert os.path.samefile(source_root(), Path(__file__).resolve().parents[1])
