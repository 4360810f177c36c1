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

from ingest.lmtp import SHUTTING_DOWN, TEMPFAIL
from storage.models import Message, Ticket
from tests import statuscodes as codes
from tests.conftest import one_database
from tests.lmtp_session import Session, code_of
from tests.mail import message
from tests.ports import free_port

SUPPORT = "support@xyzhosting.com"



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


def stream(port: int, messages: dict[int, bytes], acked: set[int], stop: threading.Event,
           refused: dict[int, int]) -> None:
    """Deliver messages one after another on one connection per message until told to stop or cut off.

    A message is acknowledged when its DATA got 250; one the server answered otherwise goes to
    `refused` with the code; a connection cut without an answer (the kill) ends the stream."""
    for n, raw in messages.items():
        if stop.is_set():
            return
        try:
            with smtplib.LMTP("127.0.0.1", port, timeout=10) as client:
                # One recipient: sendmail returns only if RCPT and DATA got 250; any other answer raises.
                client.sendmail("alice@customer.example", [SUPPORT], raw)
                acked.add(n)
        except smtplib.SMTPRecipientsRefused as e:
            refused[n] = e.recipients[SUPPORT][0]
            return
        except smtplib.SMTPResponseException as e:
            refused[n] = e.smtp_code
            return
        except (smtplib.SMTPServerDisconnected, OSError):
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
        stop, refused = threading.Event(), {}
        sender = threading.Thread(target=stream, args=(port, messages, acked, stop, refused))
        sender.start()
        while len(acked) < 40 and sender.is_alive():
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        stop.set()
        await asyncio.to_thread(sender.join, 30)
        assert 40 <= len(acked) < len(messages), "the kill should land in the middle of the stream"
        assert refused == {}, "the server answered a delivery with something other than 250"

        # What the server acknowledged before dying is there, exactly once.
        async with db.session() as s:
            subjects = list(await s.scalars(select(Message.subject)))
        assert {f"crash test {n}" for n in acked} <= set(subjects)
        assert len(subjects) == len(set(subjects))

        # The MTA redelivers everything not acknowledged (including the one in flight at the kill).
        server = start_server(db_url, port, log)
        pending = {n: raw for n, raw in messages.items() if n not in acked}
        again: set[int] = set()
        await asyncio.to_thread(stream, port, pending, again, threading.Event(), refused)
        assert refused == {} and again == set(pending)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0

    async with db.session() as s:
        assert await s.scalar(select(func.count(Message.id))) == len(messages)
        assert await s.scalar(select(func.count(Ticket.id))) == len(messages)
        assert await s.scalar(select(func.count(func.distinct(Message.subject)))) == len(messages)


async def attempt(port: int) -> str | None:
    """A fresh delivery, step by step: the first reply that is not a go-ahead (or the 250 to the
    message, if it was accepted); None if the connection itself was refused."""
    try:
        session = await Session.open(port)
    except ConnectionRefusedError:
        return None
    try:
        reply = await session.reply()
        steps = ["LHLO test", "MAIL FROM:<alice@customer.example>", f"RCPT TO:<{SUPPORT}>", "DATA",
                 message(subject="after the kill").decode() + "."]
        for step in steps:
            if code_of(reply) not in (codes.READY, codes.OK, codes.START_DATA):
                return reply
            reply = await session.command(step)
        return reply
    finally:
        session.close()


@one_database  # the writer's death, not what it stores
async def test_writer_process_killed_means_451_and_serve_exits_for_a_restart(cli, db_url, tmp_path):
    await cli("department", "add", "Support", "--address", SUPPORT)
    await cli("customer", "add", "alice@customer.example")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = start_server(db_url, port, log)
    try:
        # A message on its way when the writer dies: serve lets it finish, and it gets 451.
        sending = await Session.open(port)
        await sending.start_data()
        sending.writer.write(message(subject="in DATA at the kill"))
        await sending.writer.drain()

        writer = subprocess.run(["pgrep", "-P", str(server.pid), "-f", "ingest.writer"],
                                capture_output=True, text=True).stdout.split()
        assert len(writer) == 1
        os.kill(int(writer[0]), signal.SIGKILL)

        # A delivery begun after the kill: 451 if it reached the end of DATA before serve saw the
        # writer die; 421 at whatever step serve, shutting down for its restart, refused it;
        # or no connection at all once serve has stopped listening.
        reply = await attempt(port)
        if reply is None:
            assert "writer process died" in (tmp_path / "serve.log").read_text()
        elif code_of(reply) == codes.TEMPFAIL:
            assert reply == TEMPFAIL.format(rcpt=SUPPORT)
        else:
            assert reply == SHUTTING_DOWN, f"a message was accepted with no writer to store it: {reply}"

        sending.writer.write(b".\r\n")
        assert await sending.reply() == TEMPFAIL.format(rcpt=SUPPORT)
        assert await sending.reply() == SHUTTING_DOWN
        assert await sending.closed()
        assert await asyncio.to_thread(server.wait, 30) == 1
    finally:
        if server.poll() is None:
            server.kill()
    assert "writer process died" in (tmp_path / "serve.log").read_text()
