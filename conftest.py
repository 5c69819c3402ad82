"""Root conftest: activates the interp-claims plugin where its entry point does not.

Installed (``pip install -e .``), pytest loads ``harness.frontends.pytest_plugin`` through the ``pytest11``
entry point; registering it here as well would register it twice. From a bare checkout, or
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, it is loaded from here.
"""

import os
import sys
from importlib.metadata import entry_points

_installed = any(ep.value == "harness.frontends.pytest_plugin" for ep in entry_points(group="pytest11"))
if not _installed or os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
    pytest_plugins = ["harness.frontends.pytest_plugin"]


def _rewrite_asserts_in_tests_only() -> None:
    """pytest rewrites the asserts of the test files and, on import, of every package of every
    distribution that declares a pytest plugin (here hypothesis, anyio, typeguard, jaxtyping,
    pytest-benchmark, xdist and this project's own packages: about 250 modules). The rewritten
    code is cached in ``__pycache__`` unless bytecode is not written (``PYTHONDONTWRITEBYTECODE``,
    set on this project's machines and in many container images): then every pytest process, each
    xdist worker included, parses and rewrites them all again (about 7 s of CPU of a collection's
    17). The libraries' asserts need no introspection here, so only the test files (pytest's own
    ``python_files`` rule, which this leaves alone) and the conftests keep it. A pytest without
    these internals is left as it is. The plugins imported before this file (the entry points) are
    rewritten already; pyproject.toml's ``addopts`` leaves the unused ones (anyio, typeguard,
    jaxtyping) unloaded."""
    if not sys.dont_write_bytecode:
        return  # the rewritten modules are cached: nothing to save after the first run
    try:
        from _pytest.assertion.rewrite import AssertionRewritingHook
    except ImportError:  # pragma: no cover
        return
    for hook in sys.meta_path:
        marked, cache = getattr(hook, "_must_rewrite", None), getattr(hook, "_marked_for_rewrite_cache", None)
        if isinstance(hook, AssertionRewritingHook) and isinstance(marked, set) and isinstance(cache, dict):
            marked.clear()
            cache.clear()


_rewrite_asserts_in_tests_only()
