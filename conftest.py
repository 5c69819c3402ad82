"""Root conftest: activates the interp-claims plugin where its entry point does not, keeps assertion
rewriting to the test files, and pauses the garbage collector while tests are collected.

Installed (``pip install -e .``), pytest loads ``harness.frontends.pytest_plugin`` through the ``pytest11``
entry point; registering it here as well would register it twice. From a bare checkout, or
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, it is loaded from here.
"""

import gc
import os
import sys
from collections.abc import Generator
from importlib.metadata import entry_points

import pytest

from harness.core.collector import collect_young_less_often

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


gc.disable()
"""The cyclic garbage collector stays off from here (before torch's import in each xdist worker's
``pytest_configure``) to the end of collection: see :func:`pytest_collection`."""


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    """Collect with the cyclic garbage collector paused, then freeze what start-up and collection built.

    Start-up and collection import torch, TransformerLens (with transformers, datasets and pandas)
    and every test module: millions of objects that live as long as the process. CPython's
    collector walks all of them at each full collection it starts while they are being created
    (about 10 in one pytest process, ~1.2 s of CPU here) and again at interpreter exit, which
    pytest-xdist's controller waits for (with TransformerLens imported: about 1.5 s of CPU).
    ``gc.freeze()`` moves the objects alive after collection into the permanent generation, which
    no later collection walks; cycles made afterwards (by the tests) are collected as usual. The
    cost: the cyclic garbage made before this point is never freed (about 10 MB here). The xdist
    controller collects nothing: for it this freezes its start-up objects.

    The tests then run with the ``claims`` command's collector schedule
    (:func:`~harness.core.collector.collect_young_less_often`): the tests' tensors, models and
    lazily imported libraries (matplotlib, hypothesis) otherwise drive ~4,000 young and ~25 full
    collections per worker."""
    try:
        return (yield)
    finally:
        gc.freeze()
        collect_young_less_often()
        gc.enable()
