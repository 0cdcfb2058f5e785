"""`python -m tfsb.freeport PORT TARGET`: exit 0 when 127.0.0.1:PORT is free; otherwise one `error:` line that
names the port and how to choose another (`make TARGET PORT=...`), exit 2. Make targets that serve on a fixed port
with a third-party server (mkdocs) check it first, so a port in use is not that server's traceback."""
from __future__ import annotations

import sys
from typing import Sequence

from deploy.base import port_in_use


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tfsb.freeport PORT TARGET", file=sys.stderr)
        return 2
    text, target = argv
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        print(f"error: PORT={text!r} is not a port number (1 to 65535): make {target} PORT=8001", file=sys.stderr)
        return 2
    if port_in_use("127.0.0.1", port):
        print(f"error: 127.0.0.1:{port} is in use: stop what listens there, or choose another port: "
              f"make {target} PORT={port + 1}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
