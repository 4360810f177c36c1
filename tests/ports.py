"""Loopback ports for the servers a test starts, and one where nothing answers."""
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A port free now; another test may take it before it is bound again, so servers that can retry do."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections while the block runs: bound but never listening, so no other test's
    server can take it meanwhile (a port that was merely free once may be listening by the time it is tried)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
