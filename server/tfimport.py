"""TensorFlow for the server process, imported without Keras.

`import tensorflow` also imports Keras (TensorFlow 2.21 loads `keras.src.optimizers` eagerly, to register Keras
optimizers for `tf.saved_model.load`), and Keras imports scikit-learn when it is installed: about 1.5 of the 5 CPU
seconds of the import on this project's 2-core machine, at every server start. The server never runs Keras code: it
loads SavedModels into graphs and sessions (server.model), as TF Serving's C++ loader does, which has no Keras
either. So `python -m server` imports TensorFlow through `import_tensorflow()` first, with the `keras` package
hidden for the length of that import only (as if it were not installed, a case TensorFlow handles). Anything
that asks for Keras later gets it: an op library such as TF Text imports `tf.keras` when a model needs its ops.
Only the module path `tensorflow.keras` (`from tensorflow.keras import layers`), which TensorFlow sets up at its
import when Keras is there, is missing in the server process; `tf.keras` and `import keras` work.

`python -m benchmarks.perf` measures the import both ways and prints the ratio.
"""
from __future__ import annotations

import sys
from types import ModuleType

REFUSED = "keras"


def import_tensorflow() -> ModuleType:
    """`tensorflow`, imported as if Keras were not installed if this is the process's first import of it."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if REFUSED in sys.modules:  # already imported by someone: nothing to save
        import tensorflow
        return tensorflow
    sys.modules[REFUSED] = None  # `import keras` fails and importlib.util.find_spec("keras") answers None
    try:
        import tensorflow
    finally:
        if sys.modules.get(REFUSED, 0) is None:
            del sys.modules[REFUSED]
    return tensorflow
