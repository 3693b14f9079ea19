"""Local TCP ports."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now.

    For a server a test starts later (A1111 coming up late) or never (connection refused);
    the port is released before returning, so another process could take it meanwhile.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
