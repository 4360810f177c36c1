"""Loopback ports for the servers a test starts, and one where nothing answers."""
import itertools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

# Each pytest-xdist worker hands out ports from a block of its own, below Linux's ephemeral range
# (32768-60999), where bind(0) finds ports for the servers tests start on port 0 and for every outgoing
# connection. A port that was merely free when picked by bind(0) could be taken by another worker's
# server before ours bound it (seen: Postfix's smtpd, an IMAP account's server).
_BLOCK = 1500
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_FIRST = 20000 + _WORKER % 8 * _BLOCK  # 8 blocks: 20000-31999
_turn = itertools.count()


def free_port() -> int:
    """A port free now that no other worker hands out; servers that can retry on a clash still do."""
    for _ in range(_BLOCK):
        port = _FIRST + next(_turn) % _BLOCK
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (another service of the machine, a server still stopping)
                continue
            return port
    raise RuntimeError(f"no free port in {_FIRST}-{_FIRST + _BLOCK - 1}")


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port that refuses connections while the block runs: bound but never listening, so no other test's
    server can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
