"""`ticketmail serve` that cannot start: one line on stderr, and nothing it started is left running."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.ports import free_port

# Runs serve and then lists the processes serve started that outlived it: as a child subreaper, this
# process becomes the parent of serve's orphans the moment serve exits.
REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
code = subprocess.call(sys.argv[1:])
subprocess.call(["pgrep", "-a", "-P", str(os.getpid())])
sys.exit(code)
"""



@pytest.mark.parametrize("taken", ["web", "lmtp"])  # started next to last, and last
def test_a_port_taken_is_one_line_and_stops_what_was_started(taken, sqlite_template, tmp_path):
    path = tmp_path / "ticketmail.db"
    shutil.copy(sqlite_template, path)
    path.chmod(0o600)  # no file-mode warning on stderr
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        ports = {"web": free_port(), "lmtp": free_port(), taken: other.getsockname()[1]}
        env = dict(os.environ, TICKETMAIL_DATABASE_URL=f"sqlite+aiosqlite:///{path}",
                   TICKETMAIL_WEB_PORT=str(ports["web"]), TICKETMAIL_LMTP_PORT=str(ports["lmtp"]),
                   TICKETMAIL_BRIDGE_KEY_FILE=str(tmp_path / "secret.key"))
        env.pop("TICKETMAIL_CONFIG", None)
        result = subprocess.run([sys.executable, "-c", REAPER, sys.executable, "-m", "ticketmail.cli", "serve"],
                                env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"ticketmail: {'LMTP' if taken == 'lmtp' else 'the web app'} cannot listen on "
        f"127.0.0.1:{ports[taken]}: Address already in use ([{taken}] host, port)"]
    assert result.stdout == ""  # no writer process (nor any other) outlived serve
    free = ports["lmtp" if taken == "web" else "web"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free), timeout=5)
