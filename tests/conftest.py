"""Shared fixtures of the harness's own tests."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Iterator

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from harness.core.model_handle import ModelHandle

# Property tests replay the same examples on every run unless asked to fuzz, so that a CI run
# cannot fail by chance: HYPOTHESIS_PROFILE=thorough draws fresh examples (and the loader's
# property tests draw 20 times as many).
settings.register_profile("replay", derandomize=True, database=None)
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("thorough", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "replay")


@pytest.fixture(autouse=True, scope="session")
def no_measurement_cache() -> Iterator[None]:
    """The harness's own tests measure afresh (tests register and patch metrics under shared names):
    the measurement cache is off unless a test gives a folder (tests/test_measurement_cache.py)."""
    previous = os.environ.get("INTERP_CLAIMS_NO_CACHE")
    os.environ["INTERP_CLAIMS_NO_CACHE"] = "1"
    yield
    if previous is None:
        os.environ.pop("INTERP_CLAIMS_NO_CACHE", None)
    else:
        os.environ["INTERP_CLAIMS_NO_CACHE"] = previous


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module on one torch thread (tiny models run 5-10x faster so on a shared machine)."""
    import torch  # here, not at the top: pytest-xdist's controller loads this file and runs no test

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry_model() -> Callable[[str], ModelHandle]:
    """A loader of the registry's models (``fixtures/registry.py``), each loaded once per test session.

    The handles are shared between tests: a test must not change a model's weights or hooks.
    """
    from fixtures.registry import get_model_entry

    loaded: dict[str, ModelHandle] = {}

    def load(name: str) -> ModelHandle:
        if name not in loaded:
            loaded[name] = get_model_entry(name).load()
        return loaded[name]

    return load
