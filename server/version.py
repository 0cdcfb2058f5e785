"""What `--version` prints, in tensorflow_model_server's format."""
from __future__ import annotations

SERVER_VERSION = "2.21.0-embedded"


def version_lines() -> str:
    try:
        from importlib.metadata import version
        tf_version = version("tensorflow")
    except Exception:  # metadata missing: still answer --version
        tf_version = "unknown"
    return f"TensorFlow ModelServer: {SERVER_VERSION}\nTensorFlow Library: {tf_version}"
