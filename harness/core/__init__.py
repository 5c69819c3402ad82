"""The core: types every layer shares, importing neither torch nor TransformerLens at package level.

Errors, head names, measurements, the model's shape and identity, the spec types, the input
batch type, and the one registry type (:class:`~harness.core.named_registry.NamedRegistry`).
:mod:`harness.core.model_handle` and :mod:`harness.core.finite` import torch; nothing on the
validation path imports them.
"""
