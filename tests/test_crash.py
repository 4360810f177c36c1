"""Crash safety: SIGKILL the server mid-stream, restart, redeliver; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time

from sqlalchemy import func, select

from storage.models import Message, Ticket
from tests.mail import message

SUPPORT = "support@xyzhosting.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db_url: str, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, TICKETMAIL_DATABASE_URL=db_url, TICKETMAIL_LMTP_PORT=str(port),
               TICKETMAIL_WEB_PORT=str(free_port()))
    proc = subprocess.Popen([sys.executable, "-m", "ticketmail.cli", "serve"], env=env,
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}, see {log.name}")
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not start")


def stream(port: int, messages: dict[int, bytes], acked: set[int], stop: threading.Event) -> None:
    """Deliver messages one after another on one connection per message until told to stop or refused."""
    for n, raw in messages.items():
        if stop.is_set():
            return
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=10) as client:
                code, _ = client.sendmail("alice@customer.example", [SUPPORT], raw) or (250, b"")
                acked.add(n)
        except (smtplib.SMTPException, OSError):
            return


async def test_sigkill_mid_stream_loses_and_doubles_nothing(cli, db, db_url, tmp_path):
    await cli("department", "add", "Support", "--address", SUPPORT)
    await cli("customer", "add", "alice@customer.example")
    messages = {n: message(subject=f"crash test {n}") for n in range(300)}
    port = free_port()
    acked: set[int] = set()

    log = open(tmp_path / "serve.log", "w")
    server = start_server(db_url, port, log)
    try:
        stop = threading.Event()
        sender = threading.Thread(target=stream, args=(port, messages, acked, stop))
        sender.start()
        while len(acked) < 40 and sender.is_alive():
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        stop.set()
        await asyncio.to_thread(sender.join, 30)
        assert 40 <= len(acked) < len(messages), "the kill should land in the middle of the stream"

        # What the server acknowledged before dying is there, exactly once.
        async with db.session() as s:
            subjects = list(await s.scalars(select(Message.subject)))
        assert {f"crash test {n}" for n in acked} <= set(subjects)
        assert len(subjects) == len(set(subjects))

        # The MTA redelivers everything not acknowledged (including the one in flight at the kill).
        server = start_server(db_url, port, log)
        pending = {n: raw for n, raw in messages.items() if n not in acked}
        again: set[int] = set()
        await asyncio.to_thread(stream, port, pending, again, threading.Event())
        assert again == set(pending)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0

    async with db.session() as s:
        assert await s.scalar(select(func.count(Message.id))) == len(messages)
        assert await s.scalar(select(func.count(Ticket.id))) == len(messages)
        assert await s.scalar(select(func.count(func.distinct(Message.subject)))) == len(messages)


async def test_writer_process_killed_means_451_and_serve_exits_for_a_restart(cli, db_url, tmp_path):
    await cli("department", "add", "Support", "--address", SUPPORT)
    await cli("customer", "add", "alice@customer.example")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = start_server(db_url, port, log)
    try:
        writer = subprocess.run(["pgrep", "-P", str(server.pid), "-f", "ingest.writer"],
                                capture_output=True, text=True).stdout.split()
        assert len(writer) == 1
        os.kill(int(writer[0]), signal.SIGKILL)

        def send():
            with smtplib.LMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("alice@customer.example", [SUPPORT], message())

        try:
            await asyncio.to_thread(send)
            raise AssertionError("a message was accepted with no writer to store it")
        except (smtplib.SMTPResponseException, smtplib.SMTPRecipientsRefused, OSError) as e:
            # 451 if it reached DATA; 421 if serve, shutting down for its restart, refused it sooner.
            assert getattr(e, "smtp_code", 451) in (421, 451)
        assert await asyncio.to_thread(server.wait, 30) == 1
    finally:
        if server.poll() is None:
            server.kill()
    assert "writer process died" in (tmp_path / "serve.log").read_text()
