"""The HTML report: self-contained, plots inline, opens in headless Chromium without console errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.loader import load_claim_file
from harness.frontends.output import write_outputs
from harness.runner import run_claim
from harness.session import Session

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0", "--window-size=1200,1600",
]
REPORTED = ("planted-prev-token-head-is-0.0", "planted-induction-head-is-1.0")
PLOT_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's default bar colour


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reports of two shipped planted-attention claims (the previous-token and the induction
    head: a bar chart and the example attention patterns each, four inline plots). The file's
    other seven claims would draw five more plots of the same kinds (about 2 s of CPU) and show
    nothing more these tests check."""
    loaded = load_claim_file(ROOT / "claims" / "toy" / "planted-attention.yaml")
    session = Session()
    claims = [claim for claim in loaded.spec.claims if claim.id in REPORTED]
    assert len(claims) == len(REPORTED)
    results = [run_claim(loaded, claim, session) for claim in claims]
    out = tmp_path_factory.mktemp("report")
    write_outputs(out, results, {loaded.path: loaded.sha256}, session)
    return out


def test_html_is_self_contained_with_inline_plots(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    assert html.count("<svg") >= 4
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", html), "the report must not load anything from the network"
    assert 'id="claim-planted-induction-head-is-10"' in html


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_chromium_renders_without_console_errors(report_dir: Path, tmp_path: Path) -> None:
    browser = find_chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    shot = tmp_path / "report.png"
    command = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", (report_dir / "report.html").as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert shot.exists(), completed.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    blue = np.all(np.abs(pixels - PLOT_BLUE) < 0.03, axis=-1)
    assert blue.sum() > 500, "the screenshot shows no plot bars"
