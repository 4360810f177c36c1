"""The LMTP listener under stress: shutdown under load, session cap, command line limit, idle
sessions, the in-flight budget. Real listener, smtplib or raw sockets.

These are limits of the protocol side, so the writer runs on the test's loop (`listen`) and they run
on one database; the shutdown under load goes through the writer process (`listen_through_writer_process`),
as `serve` runs it, on both databases: twenty sessions' messages share its pipe while it stops, and
every message answered 250 must be stored once."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager, closing

import pytest
from sqlalchemy import func, select

from ingest.lmtp import (BUSY, IDLE, LINE_TOO_LONG, RECIPIENT_TOO_LONG, SENDER_TOO_LONG, SHUTTING_DOWN,
                         TOO_MANY, LMTPListener)
from storage.models import Message
from tests import statuscodes as codes
from tests.conftest import deliver, listening, one_database
from tests.lmtp_session import ALICE, SUPPORT, Session, code_of, until
from tests.mail import message


@asynccontextmanager
async def listeners(pipeline, cli) -> AsyncIterator[Callable[..., Awaitable[LMTPListener]]]:
    """Start listeners with the given limits (the helpdesk has Support and the customer Alice)."""
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "hold"))[0] == 0
    assert (await cli("customer", "add", ALICE))[0] == 0
    async with AsyncExitStack() as started:
        yield lambda **limits: started.enter_async_context(listening(pipeline, **limits))


@pytest.fixture
async def listen(pipeline, cli):
    async with listeners(pipeline, cli) as start:
        yield start


@pytest.fixture
async def listen_through_writer_process(writer_process_pipeline, cli):
    async with listeners(writer_process_pipeline, cli) as start:
        yield start


async def stored_count(db) -> int:
    async with db.session() as s:
        return await s.scalar(select(func.count(Message.id)))


def _send_until_refused(port: int, count: int, results: list, size: int) -> None:
    """One client: up to `count` messages in one session; records what happened to each."""
    try:
        client = smtplib.LMTP("127.0.0.1", port)
        client.ehlo_or_helo_if_needed()
    except (OSError, smtplib.SMTPException):
        return
    try:
        for _ in range(count):
            raw = message(body="x" * size + "\n")
            code, _ = client.mail(ALICE)
            if code != codes.OK:
                results.append(("refused", code, raw))
                return
            code, _ = client.rcpt(SUPPORT)
            if code != codes.OK:
                results.append(("refused", code, raw))
                return
            client.putcmd("data")
            code, _ = client.getreply()
            if code != codes.START_DATA:
                results.append(("refused", code, raw))
                return
            client.send(raw.replace(b"\r\n.", b"\r\n..") + b".\r\n")
            try:  # the whole message is sent: from here on it must get a reply
                code, _ = client.getreply()
            except smtplib.SMTPServerDisconnected:
                results.append(("no reply", None, raw))
                return
            results.append(("replied", code, raw))
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        return  # closed between messages or before the message was whole: the MTA simply retries
    finally:
        client.close()


async def test_shutdown_under_load_answers_every_message_it_has_read(listen_through_writer_process, db):
    """Regression: on SIGTERM, sessions that had just sent their whole message were closed unanswered."""
    lmtp = await listen_through_writer_process()
    results: list = []
    clients = [threading.Thread(target=_send_until_refused, args=(lmtp.port, 30, results, 150_000))
               for _ in range(20)]
    for c in clients:
        c.start()
    await until(lambda: lmtp.busy >= 5, "five sessions sending or storing a message at once")
    await lmtp.stop(grace=20)
    for c in clients:
        await asyncio.to_thread(c.join, 30)
        assert not c.is_alive()
    assert [r for r in results if r[0] == "no reply"] == []
    replied = [r for r in results if r[0] == "replied"]
    assert replied and {code for _, code, _ in replied} == {codes.OK}
    assert {code for kind, code, _ in results if kind == "refused"} <= {codes.UNAVAILABLE}
    # Every 250 is stored, once; nothing else was accepted.
    async with db.session() as s:
        stored = sorted(m.raw for m in await s.scalars(select(Message)))
    assert stored == sorted(raw for _, _, raw in replied)


@one_database
async def test_a_session_between_messages_gets_421_at_shutdown(listen):
    lmtp = await listen()
    idle, sending = await Session.open(lmtp.port), await Session.open(lmtp.port)
    assert code_of(await idle.reply()) == codes.READY
    await sending.start_data()
    sending.writer.write(message() + b"\r\n")  # the message, not yet its end
    await until(lambda: lmtp.inflight > 0, "the message's bytes to arrive")
    stopping = asyncio.create_task(lmtp.stop(grace=10))
    assert await idle.reply() == SHUTTING_DOWN
    assert await idle.closed()
    sending.writer.write(b".\r\n")
    assert (await sending.reply()).startswith(f"{codes.OK} {codes.DELIVERED.decode()} <{SUPPORT}> delivered")
    assert await sending.reply() == SHUTTING_DOWN  # then it is closed
    assert await sending.closed()
    await stopping


@one_database
async def test_connections_beyond_max_sessions_get_421_at_the_greeting(listen):
    lmtp = await listen(max_sessions=2)
    first, second = await Session.open(lmtp.port), await Session.open(lmtp.port)
    assert code_of(await first.reply()) == codes.READY
    assert code_of(await second.reply()) == codes.READY
    third = await Session.open(lmtp.port)
    assert await third.reply() == TOO_MANY
    assert await third.closed()
    first.close()
    await until(lambda: len(lmtp.sessions) == 1, "the server to see the first session closed")
    fourth = await Session.open(lmtp.port)
    assert code_of(await fourth.reply()) == codes.READY
    for s in (second, fourth):
        s.close()


@one_database
async def test_long_command_line_gets_500_552_and_is_not_kept_in_memory(listen):
    lmtp = await listen()
    s = await Session.open(lmtp.port)
    assert code_of(await s.reply()) == codes.READY
    assert await s.command("NOOP " + "x" * 2000) == LINE_TOO_LONG
    # 20 MiB without a line end: the server keeps at most a few read buffers of it.
    [session] = lmtp.sessions
    chunk = b"y" * (1 << 20)
    for _ in range(20):
        s.writer.write(chunk)
        await s.writer.drain()
        assert len(session._reader._buffer) <= 4 * 64 * 1024
    assert await s.command("") == LINE_TOO_LONG
    assert await s.command("NOOP") == codes.NOOP_OK
    s.close()


@one_database
async def test_noop_does_not_keep_an_idle_session_open(listen):
    """Regression: a client sending NOOPs (even a byte at a time) was never timed out."""
    lmtp = await listen(idle_seconds=1)
    s = await Session.open(lmtp.port)
    assert code_of(await s.reply()) == codes.READY
    opened, lines = time.monotonic(), []
    while not (lines and lines[-1].startswith(str(codes.UNAVAILABLE).encode())):
        assert time.monotonic() - opened < 5, f"no 421 after 5 s of NOOPs: {lines}"
        for byte in b"NOOP\r\n":
            s.writer.write(bytes([byte]))
            try:  # listen between bytes: a reply closing the session may come at any time
                lines.append(await asyncio.wait_for(s.reader.readline(), 0.05))
                break
            except asyncio.TimeoutError:
                pass
    assert lines[-1] == IDLE.encode() + b"\r\n" and set(lines[:-1]) == {codes.NOOP_OK.encode() + b"\r\n"}
    assert 0.9 < time.monotonic() - opened < 4.5  # idle_seconds = 1, with room for a loaded machine
    assert await s.closed()


@one_database
async def test_a_delivery_restarts_the_idle_clock(listen):
    lmtp = await listen(idle_seconds=1)
    s = await Session.open(lmtp.port)
    await s.start_data()
    await asyncio.sleep(0.7)
    s.writer.write(message() + b".\r\n")
    assert code_of(await s.reply()) == codes.OK
    await asyncio.sleep(0.6)  # 1.3 s since the session began, 0.6 s since the delivery
    assert await s.command("NOOP") == codes.NOOP_OK
    assert await s.reply() == IDLE


@one_database
async def test_over_the_inflight_budget_data_gets_452_per_recipient_and_later_succeeds(listen, cli, db):
    lmtp = await listen(max_message_bytes=1_000_000, max_inflight_bytes=1_500_000)
    assert (await cli("department", "add", "Sales", "--address", "sales@xyzhosting.com"))[0] == 0
    big = message(body="a" * 900_000 + "\n")
    first = await Session.open(lmtp.port)
    await first.start_data()
    first.writer.write(big)  # in DATA, not yet ended: 900 KB in flight
    await until(lambda: lmtp.inflight >= 900_000, "the first message's bytes to arrive")

    second = await Session.open(lmtp.port)
    assert code_of(await second.reply()) == codes.READY
    for line in ("LHLO test", f"MAIL FROM:<{ALICE}>", f"RCPT TO:<{SUPPORT}>", "RCPT TO:<sales@xyzhosting.com>"):
        assert code_of(await second.command(line)) == codes.OK
    assert code_of(await second.command("DATA")) == codes.START_DATA
    other = message(body="b" * 800_000 + "\n")
    second.writer.write(other + b".\r\n")
    assert [await second.reply(), await second.reply()] == [BUSY] * 2

    first.writer.write(b".\r\n")
    assert (await first.reply()).startswith(f"{codes.OK} {codes.DELIVERED.decode()} <{SUPPORT}> delivered")
    assert lmtp.inflight == 0
    [(code, _), (code2, _)] = await deliver(lmtp.port, ALICE, [SUPPORT, "sales@xyzhosting.com"], other)
    assert (code, code2) == (codes.OK, codes.OK)
    async with db.session() as s:
        assert sorted(len(m.raw) for m in await s.scalars(select(Message))) == sorted([len(big), len(other), len(other)])
    for session in (first, second):
        session.close()


@one_database
async def test_a_client_gone_in_the_middle_of_data_gives_its_budget_back(listen, db):
    """Its bytes were charged as they came; a client that vanishes must not keep them charged (or the
    budget would run out, one broken connection at a time, and every message would get 452)."""
    lmtp = await listen(max_message_bytes=1_000_000, max_inflight_bytes=1_000_000)
    for _ in range(3):  # more than the budget in all, were the bytes kept
        s = await Session.open(lmtp.port)
        await s.start_data()
        s.writer.write(message(body="c" * 600_000 + "\n"))
        await until(lambda: lmtp.inflight >= 600_000, "the message's bytes to arrive")
        s.close()
        await until(lambda: lmtp.inflight == 0, "the vanished session's bytes to be released")
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(body="d" * 900_000 + "\n"))
    assert code == codes.OK


@one_database
async def test_a_declared_size_over_the_limit_is_refused_at_mail_from(listen):
    """EHLO advertises the limit; a client that declares a bigger message is refused before it sends it."""
    lmtp = await listen(max_message_bytes=20_000)

    def declare():
        with closing(smtplib.LMTP("127.0.0.1", lmtp.port)) as client:
            client.ehlo()
            return client.esmtp_features["size"], client.mail(ALICE, ["SIZE=40000"])

    advertised, (code, text) = await asyncio.to_thread(declare)
    assert advertised == "20000"
    assert (code, text) == (codes.TOO_BIG, b"5.3.4 Message exceeds the maximum size")


@one_database
async def test_a_path_over_256_octets_is_refused_for_good_at_mail_and_rcpt(listen, db):
    """RFC 5321 4.5.3.1.3 lets a server refuse it ("501 Path too long"); taken, the database might refuse
    to keep it, and answering 451 would have the MTA offer it for days."""
    lmtp = await listen()
    domain = "@customer.example"

    def session():
        with closing(smtplib.LMTP("127.0.0.1", lmtp.port)) as client:
            client.ehlo()
            too_long = client.mail("a" * (255 - len(domain)) + domain)
            at_the_limit = client.mail("a" * (254 - len(domain)) + domain)  # 256 octets with its <>
            recipient = client.rcpt("s" * 250 + "@xyzhosting.com")
            return too_long, at_the_limit, recipient

    too_long, at_the_limit, recipient = await asyncio.to_thread(session)
    assert too_long == (501, SENDER_TOO_LONG[4:].encode()) and at_the_limit[0] == codes.OK
    assert recipient == (501, RECIPIENT_TOO_LONG[4:].encode())
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 0
