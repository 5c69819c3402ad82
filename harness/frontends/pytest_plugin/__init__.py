"""The pytest plugin: claim files are collected as one test item per claim.

Active through the ``pytest11`` entry point (``interp_claims``) and from the root
``conftest.py``. Files named ``*.yaml``/``*.yml`` inside a folder called ``claims`` are claim
files; node ids are ``claims/<file>.yaml::<claim-id>``. An item passes when the verdict equals
the claim's ``expected_verdict``; a skipped verdict (weights unavailable) skips with its reason.

Options: ``--claims-out DIR`` writes ``results.json``, ``report.md`` and ``report.html`` at the end
of the session (also when models were unavailable: their claims are listed as skipped, with the
reason); ``--claims-weights NAME=PATH`` and ``--claims-tokenizer NAME=PATH`` point a model at local
files; ``--claims-baseline FILE`` fails claims that flipped or drifted against a baseline.
Markers: the model's source (``planted``, ``trained``, ``package``, ``file``, ``hub``,
``transformer_lens``), the course (``arena``, ``project``) and ``slow``, for ``-m`` selection.

Split by concern, as pytest's own builtin plugins are: :mod:`.options` (command-line options,
markers, the session's state), :mod:`.collection` (claim files and items), :mod:`.outputs`
(``--claims-out``), :mod:`.baseline_check` (``--claims-baseline``), :mod:`.parallel`
(pytest-xdist: ``-n auto`` groups claims by model and gathers the workers' records).
"""

pytest_plugins = [
    "harness.frontends.pytest_plugin.options",
    "harness.frontends.pytest_plugin.parallel",
    "harness.frontends.pytest_plugin.durations",
    "harness.frontends.pytest_plugin.collection",
    "harness.frontends.pytest_plugin.outputs",
    "harness.frontends.pytest_plugin.baseline_check",
]
