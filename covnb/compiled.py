"""One cache of compiled calls (``tf.function``) per model: tracing costs about a second, so a
compiled call is built once per model and key and reused across calls.

The cache holds models weakly: a model that is no longer used elsewhere frees its compiled calls.
Keys are namespaced by the caller (``("cam", layer, method)``, ``("predict", with_features)``).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Hashable

__all__ = ["cached_for_model", "compiled_call"]

_PER_MODEL: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def cached_for_model(model, key: Hashable, build: Callable[[], Any]):
    """The value cached for ``(model, key)``, built by ``build()`` on first use."""
    per_model = _PER_MODEL.setdefault(model, {})
    if key not in per_model:
        per_model[key] = build()
    return per_model[key]


def compiled_call(model, key: Hashable, function: Callable, input_signature, **options):
    """``tf.function(function, input_signature=..., **options)``, built once per ``(model, key)``."""

    def build():
        import tensorflow as tf

        return tf.function(function, input_signature=input_signature, **options)

    return cached_for_model(model, key, build)
