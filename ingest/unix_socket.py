"""The LMTP unix socket, with the permissions the MTA needs from the moment it exists.

Postfix's lmtp client runs as user postfix: a socket made 0755 root:root (the umask's) refuses it. The
socket is bound in a private directory beside its path, given its mode and group there, and then
renamed into place, so it never exists with other permissions. A stale socket at the path (left by a
process that died) is replaced; a live one, or anything that is not a socket, is refused.
"""

from __future__ import annotations

import grp
import os
import socket
import stat
import tempfile
from pathlib import Path


class SocketError(OSError):
    """The socket cannot be put at its path; the message says why."""


def group_id(name: str) -> int:
    """The id of group `name`, "" meaning this process's group; KeyError for an unknown group."""
    return os.getgid() if not name else grp.getgrnam(name).gr_gid


def _in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class UnixSocket:
    """A listening unix socket at `path` with `mode` and group `gid` (see the module's docstring)."""

    def __init__(self, path: str, mode: int, gid: int):
        self.path = Path(path)
        if self.path.is_symlink() or (self.path.exists() and not stat.S_ISSOCK(self.path.stat().st_mode)):
            raise SocketError(f"{self.path} exists and is not a socket: not replaced")
        if self.path.exists() and _in_use(self.path):
            raise SocketError(f"{self.path} is in use by another process")
        private = Path(tempfile.mkdtemp(prefix=".ticketmail-", dir=self.path.parent))  # 0700
        staged = private / "lmtp"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(str(staged))
            os.chown(staged, -1, gid)
            os.chmod(staged, mode)
            os.rename(staged, self.path)
            self._identity = self.path.stat()
            self.sock.listen(100)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        finally:
            staged.unlink(missing_ok=True)
            private.rmdir()

    def remove(self) -> None:
        """Remove the socket file, if it is still the one made here (not another process's since)."""
        try:
            if os.path.samestat(self.path.stat(), self._identity):
                self.path.unlink()
        except OSError:
            pass
