"""`python -m server` — the composition root: flags -> repository -> data plane -> REST + gRPC.

Prints TF Serving's two startup lines only once every model is loaded. SIGTERM or SIGINT stops
accepting, lets in-flight requests finish, unloads the models and exits 0.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from server import flags as flag_module
from server.app import Server, StartupError
from server.tfimport import import_tensorflow
from server.version import version_lines

log = logging.getLogger("server")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s] %(message)s", datefmt="%H:%M:%S")


def _fail(message: str) -> int:
    print(f"Failed to start server. Error: {message}", flush=True)  # stdout, as TF Serving's main() prints it
    return 255


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, unknown = flag_module.parse(argv)
    except flag_module.UsageError as exc:
        flag_module.print_usage_and_exit(str(exc))
    if flags.version:
        print(version_lines())
        return 0
    if unknown:
        print(f"unknown argument: {unknown[0]}\n{flag_module.usage()}", flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configure_logging()
    faulthandler.enable()  # a crash in TensorFlow's C++ (a segfault) leaves every thread's Python stack in the log
    import_tensorflow()  # before anything else imports it: without Keras, which the server never runs
    try:
        server = Server(flags)
        server.start()
    except StartupError as exc:
        return _fail(str(exc))
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("received signal %d: draining and shutting down", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for line in server.startup_lines():
        log.info("%s", line)
    # The kernel may deliver SIGTERM to any thread (TF's, gRPC's); Python runs the handler only when the main
    # thread next runs bytecode, and a wait without a timeout would never return: wake to look twice a second.
    while not stopping.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
