"""This test process offline for the Hugging Face libraries and this project's loaders, as a fresh
process on a machine without the course weights would be."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fixtures import weights_overrides
from fixtures.hub_access import DOWNLOAD_ENV
from fixtures.tokenizer_source import TOKENIZER_ENV_PREFIX, clear_tokenizer_overrides, restore_tokenizer_overrides


def _no_network(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a network call was made")


@contextmanager
def offline_hub(cache: Path) -> Iterator[pytest.MonkeyPatch]:
    """The Hugging Face libraries see only ``cache`` (``HF_HUB_CACHE``, in the environment and in
    ``huggingface_hub.constants``); no download opt-in, no weights or tokenizer overrides (those set
    inside are dropped afterwards); sockets refuse to connect.  Yields the MonkeyPatch, whose further
    settings are undone with these."""
    import huggingface_hub.constants as hf_constants

    saved_tokenizers = clear_tokenizer_overrides()
    saved_weights = dict(weights_overrides._OVERRIDES)
    weights_overrides._OVERRIDES.clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HF_HUB_CACHE", str(cache))
            patch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
            patch.delenv(DOWNLOAD_ENV, raising=False)
            for variable in [v for v in os.environ if v.startswith((TOKENIZER_ENV_PREFIX, weights_overrides.WEIGHTS_ENV_PREFIX))]:
                patch.delenv(variable)
            patch.setattr(socket.socket, "connect", _no_network)
            patch.setattr(socket, "create_connection", _no_network)
            yield patch
    finally:
        restore_tokenizer_overrides(saved_tokenizers)
        weights_overrides._OVERRIDES.clear()
        weights_overrides._OVERRIDES.update(saved_weights)
