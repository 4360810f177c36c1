"""The real LMTP server over loopback, driven with smtplib.LMTP.

Most tests are about the protocol and what the pipeline decides: the `lmtp` listener runs the writer
on the test's loop. Three go through the writer process (`writer_process_lmtp`), as `serve` runs it,
because the process is part of what they claim: a message crosses the pipe byte for byte, a storage
failure in the process comes back as that recipient's 451, and a shutdown still answers the delivery
the process is storing. Tests where only the protocol is at stake run on one database."""

from __future__ import annotations

import asyncio
import json
import socket

from sqlalchemy import func, select, text

from ingest.lmtp import SHUTTING_DOWN, TEMPFAIL, LMTPListener
from storage.models import Event, Message, Ticket
from tests import statuscodes as codes
from tests.conftest import deliver, one_database
from tests.lmtp_session import Session, code_of, until
from tests.mail import message

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
ALICE = "alice@customer.example"


async def setup_helpdesk(cli, policy="hold"):
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", policy))[0] == 0
    assert (await cli("department", "add", "Sales", "--address", SALES, "--unknown-sender", policy))[0] == 0
    assert (await cli("customer", "add", ALICE, "--name", "Alice"))[0] == 0


async def tickets(cli) -> list[dict]:
    code, out, err = await cli("tickets", "list", "--json")
    assert code == 0, err
    return json.loads(out)


async def test_known_customer_mail_becomes_ticket_stored_byte_exact(cli, db, writer_process_lmtp):
    await setup_helpdesk(cli)
    raw = message(subject="Printer on fire")
    [(code, reply)] = await deliver(writer_process_lmtp.port, ALICE, SUPPORT, raw)
    assert code == codes.OK and b"ticket #1" in reply

    [ticket] = await tickets(cli)
    assert ticket["subject"] == "Printer on fire"
    assert ticket["department"] == "Support"
    assert ticket["customer"] == ALICE
    assert ticket["messages"] == 1 and ticket["status"] == "open"
    async with db.session() as s:
        stored = await s.scalar(select(Message))
    assert stored.raw == raw


@one_database
async def test_unknown_recipient_refused_at_rcpt(cli, lmtp):
    await setup_helpdesk(cli)
    replies = await deliver(lmtp.port, ALICE, ["nobody@xyzhosting.com"], message())
    assert replies[0][0] == codes.REFUSED and codes.NO_MAILBOX in replies[0][1]
    assert await tickets(cli) == []


@one_database
async def test_multi_recipient_one_reply_per_recipient_in_order(cli, lmtp):
    await setup_helpdesk(cli)
    raw = message(to=f"{SUPPORT}, {SALES}")
    replies = await deliver(lmtp.port, ALICE, [SUPPORT, "nobody@xyzhosting.com", SALES], raw)
    assert [c for c, _ in replies] == [codes.OK, codes.REFUSED, codes.OK]
    assert SUPPORT.encode() in replies[0][1] and SALES.encode() in replies[2][1]
    assert sorted(t["department"] for t in await tickets(cli)) == ["Sales", "Support"]


async def test_two_addresses_of_one_department_make_one_ticket(cli, lmtp):
    await cli("department", "add", "Support", "--address", SUPPORT, "--address", "help@xyzhosting.com")
    await cli("customer", "add", ALICE)
    replies = await deliver(lmtp.port, ALICE, [SUPPORT, "help@xyzhosting.com"], message())
    assert [c for c, _ in replies] == [codes.OK, codes.OK]
    assert len(await tickets(cli)) == 1


async def test_catch_all_address(cli, lmtp):
    await cli("department", "add", "Billing", "--address", "*@billing.example", "--unknown-sender", "accept")
    [(code, _)] = await deliver(lmtp.port, "bob@else.example", "anything@billing.example",
                                message(frm="bob@else.example", to="anything@billing.example"))
    assert code == codes.OK
    [ticket] = await tickets(cli)
    assert ticket["department"] == "Billing" and ticket["customer"] == "bob@else.example"


@one_database
async def test_message_over_size_limit_gets_552_per_recipient(cli, lmtp):
    await setup_helpdesk(cli)
    big = message(body="x" * 70) + b"y" * 4_100_000 + b"\r\n"
    replies = await deliver(lmtp.port, ALICE, [SUPPORT, SALES], big)
    assert [c for c, _ in replies] == [codes.TOO_BIG, codes.TOO_BIG]
    assert await tickets(cli) == []


async def test_redelivery_after_lost_250_creates_no_second_ticket(cli, db, lmtp):
    await setup_helpdesk(cli)
    raw = message()
    first = await deliver(lmtp.port, ALICE, SUPPORT, raw)
    again = await deliver(lmtp.port, ALICE, SUPPORT, raw)
    assert first[0][0] == again[0][0] == codes.OK
    assert b"ticket #1" in again[0][1]
    assert len(await tickets(cli)) == 1
    async with db.session() as s:
        assert await s.scalar(select(func.count(Message.id))) == 1


async def _break_storage_for(db, recipient: str) -> None:
    """A real storage failure: the database refuses to store messages for `recipient`."""
    async with db.writer() as s, s.begin():
        if db.is_sqlite:
            await s.execute(text(
                "CREATE TRIGGER broken BEFORE INSERT ON events WHEN "
                f"(SELECT envelope_recipient FROM messages WHERE id = NEW.message_id) = '{recipient}' "
                "BEGIN SELECT RAISE(ABORT, 'injected storage failure'); END"))
        else:
            await s.execute(text(
                "CREATE FUNCTION broken() RETURNS trigger AS $$ BEGIN IF (SELECT envelope_recipient FROM messages "
                f"WHERE id = NEW.message_id) = '{recipient}' THEN RAISE EXCEPTION 'injected storage failure'; "
                "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            await s.execute(text("CREATE TRIGGER broken BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION broken()"))


async def _repair_storage(db) -> None:
    async with db.writer() as s, s.begin():
        await s.execute(text("DROP TRIGGER broken" if db.is_sqlite else "DROP TRIGGER broken ON events"))
        if not db.is_sqlite:
            await s.execute(text("DROP FUNCTION broken"))


async def test_storage_failure_answers_451_and_writes_nothing_of_that_delivery(cli, db, writer_process_lmtp):
    await setup_helpdesk(cli)
    await _break_storage_for(db, SALES)
    try:
        await _storage_failure(cli, db, writer_process_lmtp)
    finally:
        await _repair_storage(db)


async def _storage_failure(cli, db, lmtp):
    replies = await deliver(lmtp.port, ALICE, [SUPPORT, SALES], message(to=f"{SUPPORT}, {SALES}"))
    assert replies[0][0] == codes.OK
    assert replies[1] == (codes.TEMPFAIL, TEMPFAIL.format(rcpt=SALES)[4:].encode())
    [ticket] = await tickets(cli)
    assert ticket["department"] == "Support"
    async with db.session() as s:
        # The failed delivery left no message, ticket or event behind (its events failed half-way).
        [stored] = (await s.scalars(select(Message))).all()
        assert stored.envelope_recipient == SUPPORT
        assert await s.scalar(select(func.count(Ticket.id))) == 1
        assert await s.scalar(select(func.count(Event.id)).where(Event.message_id != stored.id)) == 0


@one_database
async def test_reject_policy_answers_550_571(cli, lmtp):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "reject")
    [(code, reply)] = await deliver(lmtp.port, "eve@else.example", SUPPORT, message(frm="eve@else.example"))
    assert code == codes.REFUSED and codes.NOT_AUTHORIZED in reply and b"known customers" in reply
    assert await tickets(cli) == []


@one_database
async def test_shutdown_finishes_delivery_in_progress(cli, writer_process_lmtp):
    """A message whose end arrives after stop() began still gets its 250, and is a ticket."""
    await setup_helpdesk(cli)
    s = await Session.open(writer_process_lmtp.port)
    await s.start_data()
    s.writer.write(message())  # the message, not yet its end
    await until(lambda: writer_process_lmtp.inflight > 0, "the message's bytes to arrive")
    stopping = asyncio.create_task(writer_process_lmtp.stop(grace=10))
    await until(lambda: writer_process_lmtp.closing, "the listener to begin its shutdown")
    assert not stopping.done(), "stop() must wait for the message being sent"
    s.writer.write(b".\r\n")
    assert await s.reply() == f"{codes.OK} {codes.DELIVERED.decode()} <{SUPPORT}> delivered (ticket #1)"
    assert await s.reply() == SHUTTING_DOWN  # then the session is closed
    assert await s.closed()
    await stopping
    [ticket] = await tickets(cli)
    assert ticket["number"] == 1 and ticket["customer"] == ALICE


async def test_dot_lines_and_long_lines_arrive_byte_exact(cli, db, lmtp):
    """Lines that start with a dot are dot-stuffed on the wire and must come out as written."""
    await setup_helpdesk(cli)
    body = ".\n..\n.hidden\nline ending with a dot.\n.\r\nx" + "y" * 5000 + "\n\n."
    raw = message(body=body)
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, raw)
    assert code == codes.OK
    async with db.session() as s:
        assert (await s.scalar(select(Message))).raw == raw


async def test_empty_message_is_stored_not_lost(cli, db, lmtp):
    await setup_helpdesk(cli, policy="hold")
    # smtplib sends b"" as a single empty line, the same bytes as b"\r\n": one message.
    for raw in (b"", b"\r\n", b"Subject: only a header\r\n"):
        [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, raw)
        assert code == codes.OK
    async with db.session() as s:
        assert sorted(m.raw for m in await s.scalars(select(Message))) == [b"\r\n", b"Subject: only a header\r\n"]


@one_database
async def test_raw_session_empty_data_and_pipelined_quit(cli, lmtp):
    """A bare "." right after 354, with QUIT in the same packet: the reader must stop at the dot."""
    await setup_helpdesk(cli, policy="hold")
    reader, writer = await asyncio.open_connection("127.0.0.1", lmtp.port)
    replies = []

    async def reply() -> bytes:
        while (line := await reader.readline())[3:4] == b"-":
            pass
        replies.append(code_of(line.decode()))
        return line

    await reply()
    writer.write(f"LHLO test\r\nMAIL FROM:<{ALICE}>\r\nRCPT TO:<{SUPPORT}>\r\nDATA\r\n".encode())
    for _ in range(4):
        await reply()
    writer.write(b".\r\nQUIT\r\n")
    await reply()
    await reply()
    writer.close()
    assert replies == [codes.READY, codes.OK, codes.OK, codes.OK, codes.START_DATA, codes.OK, codes.CLOSING]


@one_database
async def test_the_greeting_names_this_host_or_the_configured_name(pipeline):
    """`220 <host> ticketmail LMTP`: the host's name by default ([lmtp] hostname overrides), as MTAs log it."""

    def greeting(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return s.makefile("rb").readline()

    for configured, shown in (("", socket.getfqdn()), ("mx.xyzhosting.com", "mx.xyzhosting.com")):
        listener = LMTPListener(pipeline, host="127.0.0.1", port=0, hostname=configured)
        await listener.start()
        try:
            assert await asyncio.to_thread(greeting, listener.port) == f"220 {shown} ticketmail LMTP\r\n".encode()
        finally:
            await listener.stop(grace=1)


@one_database
async def test_an_address_taken_from_its_department_is_refused_at_rcpt_once_the_snapshot_is_stale(cli, db, lmtp):
    """The LMTP side places recipients from a snapshot; one older than directory_seconds is checked
    against the database's revision, so a removed address is refused at RCPT, not accepted and held."""
    from ticketmail.admin import departments

    assert (await cli("department", "add", "Support", "--address", "support@xyzhosting.com",
                      "--address", "help@xyzhosting.com", "--unknown-sender", "accept"))[0] == 0
    [(code, _)] = await deliver(lmtp.port, "alice@customer.example", ["help@xyzhosting.com"], message())
    assert code == codes.OK
    await departments.edit(db, "Support", new_name="Support", addresses=["support@xyzhosting.com"],
                           unknown_sender="accept", by="test")
    lmtp.handler.pipeline.directory_seconds = 0  # stale at once (5 s in serve)
    [(code, text)] = await deliver(lmtp.port, "alice@customer.example", ["help@xyzhosting.com"], message())
    assert (code, text) == (codes.REFUSED, b"5.1.1 <help@xyzhosting.com> no such mailbox here")
