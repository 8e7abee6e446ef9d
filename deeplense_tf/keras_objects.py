"""Registers the package's Keras layers as soon as Keras is imported, without importing it.

A run's `model.keras` names our custom layers (`deeplense_tf>RegressionOutput`, ...), and
Keras can only load it once they are registered, which importing `deeplense_tf.models`
does. Users write

    import deeplense_tf
    import keras
    model = keras.saving.load_model("runs/axion/model.keras")

so importing the package must be enough. But `import deeplense_tf` is kept light (Keras
brings TensorFlow: ~8 s), so it cannot import the models eagerly. Instead: if Keras is
already imported the layers are registered at once; otherwise a one-shot import hook
waits for `keras` to finish importing and registers them right after, before any user
code can call `load_model`.
"""

from __future__ import annotations

import sys

from deeplense_tf import import_hooks


def register_now() -> None:
    import deeplense_tf.models  # noqa: F401  (the decorators register every layer)


def install() -> None:
    """Registers now if Keras is loaded, else once it is; idempotent."""
    if "keras" in sys.modules:
        if "deeplense_tf.models" not in sys.modules:
            register_now()
        return
    import_hooks.on_import("keras", after=register_now)
