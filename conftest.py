"""Root conftest: activates the interp-claims plugin where its entry point does not.

Installed (``pip install -e .``), pytest loads ``harness.frontends.pytest_plugin`` through the ``pytest11``
entry point; registering it here as well would register it twice. From a bare checkout, or
with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set, it is loaded from here.
"""

import os
from importlib.metadata import entry_points

_installed = any(ep.value == "harness.frontends.pytest_plugin" for ep in entry_points(group="pytest11"))
if not _installed or os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
    pytest_plugins = ["harness.frontends.pytest_plugin"]
