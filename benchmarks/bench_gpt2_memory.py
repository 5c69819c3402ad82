"""Peak memory (RSS) and wall time of each claims file on GPT-2 small, one fresh process per file.

    python benchmarks/bench_gpt2_memory.py                 # the non-slow claims of every gpt2 file
    python benchmarks/bench_gpt2_memory.py --slow          # the slow claims too
    python benchmarks/bench_gpt2_memory.py --cache DIR     # reuse (or build once into) a stand-in cache

It runs on the stand-in Hugging Face cache of :mod:`fixtures.gpt2_standin` (seeded random
weights, GPT-2's real BPE tokenizer: the figures are those of the real model's shapes; the
measured values mean nothing), built into a temporary folder unless ``--cache`` names one that
holds it. Each claims file that has
claims on ``gpt2-small`` or ``gpt2-small-ioi`` runs those claims in its own child process
(offline, ``HF_HUB_CACHE`` at the stand-in); the child's peak RSS is ``ru_maxrss`` from
``os.wait4``, so model loading is included. Verdicts are printed beside the figures: a figure
from a run that errored is no figure.

Measured on 2 shared CPU cores (load average 5-9; wall times vary with the load, peaks do not):

    file                                  peak RSS before -> after   (non-slow claims)
    1.2-1-transformerlens-intro.yaml      2.47 GB -> 2.48 GB
    1.2-3-hooks-attribution-ablation.yaml 2.49 GB -> 2.50 GB
    1.4-1-ioi.yaml                        2.51 GB -> 2.48 GB   (with its 15 slow claims: 2.67 GB, 25 min)
    1.4-2-ioi-heads.yaml                  7.29 GB -> 2.51 GB

With the IOI dataset, path patching, ablation and logit-lens claims (load average 10-12): 1.4-1's
non-slow claims 2.60 GB, 192 s; its path patching to the residual stream (144 senders x 25 prompts,
batched within MAX_PASS_TOKENS, no logits) 1335 s with the peak unchanged at 2.61 GB.

Loading GPT-2 small (TransformerLens' weight processing) peaks at about 2.5 GB by itself; the
1.4-2 file's 7.29 GB was a forward pass caching every hook on 50 x 101 tokens (see
``harness.core.model_handle.Activations``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPT2_MODELS = ("gpt2-small", "gpt2-small-ioi")

CHILD = """
import sys
from collections import Counter
from harness.loader import load_claim_file
from harness.runner import run_claim
from harness.session import Session

path, with_slow = sys.argv[1], sys.argv[2] == "1"
loaded = load_claim_file(path)
session = Session()
verdicts = Counter()
for claim in loaded.spec.claims:
    if loaded.model_of(claim) in {models!r} and (with_slow or not claim.slow):
        result = run_claim(loaded, claim, session)
        verdicts[result.verdict.value] += 1
        if result.reason and result.verdict.value == "error":
            print("ERROR", claim.id, result.reason[:300], file=sys.stderr)
print(" ".join(f"{{k}}={{v}}" for k, v in sorted(verdicts.items())))
""".format(models=set(GPT2_MODELS))


def gpt2_claim_files() -> list[Path]:
    """Claims files with at least one claim on a GPT-2 small registry entry."""
    from harness.loader import find_claim_files, load_claim_file

    files = []
    for path in find_claim_files([ROOT / "claims"]):
        loaded = load_claim_file(path)
        if any(loaded.model_of(claim) in GPT2_MODELS for claim in loaded.spec.claims):
            files.append(path)
    return files


def run_file(path: Path, cache: Path, with_slow: bool) -> tuple[float, float, str, str]:
    """(peak RSS in GB, wall seconds, verdict counts, stderr tail) of one file's GPT-2 claims in a child.

    The child is reaped with ``os.wait4``, whose ``ru_maxrss`` (kilobytes on Linux) is that
    child's own peak, not the maximum over every child so far.
    """
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    env.pop("INTERP_CLAIMS_DOWNLOAD", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "1" if with_slow else "0"],
                                 cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        _pid, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        lines = out.read().strip().splitlines()
        verdicts = lines[-1] if lines else f"exit {child.returncode}"
        return usage.ru_maxrss / 1e6, wall, verdicts, err.read().strip()[-600:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="include the slow claims")
    parser.add_argument("--cache", type=Path, default=None, help="hub cache folder holding (or to receive) the stand-in")
    parser.add_argument("--file", action="append", default=[], help="only these claims files (repeatable)")
    args = parser.parse_args()

    from fixtures.gpt2_standin import REPO_DIR, build_gpt2_standin

    with tempfile.TemporaryDirectory(prefix="gpt2-standin-") as scratch:
        cache = args.cache or Path(scratch) / "hub"
        if not (cache / REPO_DIR / "refs" / "main").is_file():
            start = time.perf_counter()
            build_gpt2_standin(cache)
            print(f"built the stand-in cache in {time.perf_counter() - start:.1f} s: {cache}")
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
              f"{'with' if args.slow else 'without'} slow claims")
        files = [Path(f).resolve() for f in args.file] or gpt2_claim_files()
        print(f"{'file':52} {'peak RSS':>9} {'wall':>8}  verdicts")
        for path in files:
            peak, wall, verdicts, err = run_file(path, cache, args.slow)
            print(f"{path.relative_to(ROOT).as_posix():52} {peak:7.2f} GB {wall:6.1f} s  {verdicts}", flush=True)
            if "ERROR" in err or "Traceback" in err:
                print("    " + err.replace("\n", "\n    "))


if __name__ == "__main__":
    main()
