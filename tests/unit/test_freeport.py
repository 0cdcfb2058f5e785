"""make docs-serve checks its port first: a port in use, or not a port, is one error line and exit 2."""
from __future__ import annotations

import socket

from tfsb import freeport


def test_a_free_port_passes_and_a_port_in_use_or_not_a_port_is_one_line(capsys):
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert freeport.main([str(port), "docs-serve"]) == 2
        said = capsys.readouterr().err
        assert said == (f"error: 127.0.0.1:{port} is in use: stop what listens there, or choose another port: "
                        f"make docs-serve PORT={port + 1}\n")
    assert freeport.main([str(port), "docs-serve"]) == 0  # closed: free again
    for bad in ("80OO", "0", "70000"):
        assert freeport.main([bad, "docs-serve"]) == 2
        assert capsys.readouterr().err.startswith(f"error: PORT={bad!r} is not a port number")
