"""What `ticketmail serve` answers over HTTP, whatever is asked: no version banner, and the security headers
on every reply, aiohttp's own 400 to a request it cannot parse included (sent before any routing)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from tests.conftest import one_database
from tests.ports import free_port
from tests.test_web_confirm import assert_protected


def exchange(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """Send `request` as raw bytes; (status, headers with lower-case names) of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head = reply.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"{name} twice in {head}"
        headers[name.lower()] = value.strip()
    return int(head[0].split()[1]), headers


def wait_ready(log_path, server, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if "; ready" in log_path.read_text():  # the last line of starting (not "already")
            return
        if server.poll() is not None:
            raise AssertionError(f"serve exited with {server.returncode}: {log_path.read_text()}")
        time.sleep(0.1)
    raise AssertionError(f"serve not ready in {seconds} s: {log_path.read_text()}")


class Headers(dict):
    """Case-insensitive lookups for assert_protected."""

    def __getitem__(self, name):
        return super().__getitem__(name.lower())


@one_database
async def test_every_reply_has_no_banner_and_the_security_headers(db_url, tmp_path):
    port = free_port()
    env = dict(os.environ, TICKETMAIL_DATABASE_URL=db_url, TICKETMAIL_LMTP_PORT=str(free_port()),
               TICKETMAIL_WEB_PORT=str(port), TICKETMAIL_BRIDGE_KEY_FILE=str(tmp_path / "secret.key"))
    log_path = tmp_path / "serve.log"
    requests = [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200),
        (b"GET /nothing/here HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 405),
        (b"POST /confirm/abc HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
         b"Content-Length: 100000\r\nConnection: close\r\n\r\n" + b"a" * 100000, 413),
        # Malformed: answered by aiohttp's protocol handler itself, before routing and middlewares.
        (b"GET / HTTP/1.1\r\nHost: x\r\nThis is no header\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to a plain port\r\n\r\n", 400),
        (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "ticketmail.cli", "serve"], env=env, stdout=log,
                                  stderr=log)
        try:
            await asyncio.to_thread(wait_ready, log_path, server)
            for request, status in requests:
                got, headers = await asyncio.to_thread(exchange, port, request)
                assert got == status, (request[:40], got)
                assert "server" not in headers, (request[:40], headers["server"])
                assert_protected(Headers(headers))
        finally:
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.wait, 30) == 0, log_path.read_text()
