"""A message the pipeline cannot process (deciding or acting on it raises) is stored byte-exact as `failed`,
with its error, and answered 250; a database failure is still answered 451 and stores nothing."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import selectinload

from ingest import tickets
from ingest.delivery import Delivery
from storage.models import Message
from tests.conftest import deliver
from tests.mail import message

SUPPORT = "support@xyzhosting.com"
ALICE = "alice@customer.example"
BOB = "bob@customer.example"


def poison(monkeypatch, error: Exception, marker: str = "POISON") -> None:
    """Make acting on any message whose subject contains `marker` raise `error`."""
    act = tickets.act

    def failing(ctx, message, decision):
        if marker in ctx.parsed.subject:
            raise error
        return act(ctx, message, decision)

    monkeypatch.setattr(tickets, "act", failing)


async def stored(db) -> list[Message]:
    async with db.session() as s:
        return list((await s.scalars(select(Message).options(selectinload(Message.events)).order_by(Message.id))).all())


async def test_a_message_that_cannot_be_processed_is_stored_as_failed_and_answered_250(cli, db, lmtp, monkeypatch):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    poison(monkeypatch, RuntimeError("boom\n  File \"x.py\", line 1"))
    raw = message(frm=BOB, subject="POISON pill", body="caf\u00e9 \r\n\r\n.\r\nend\n")
    [(code, reply)] = await deliver(lmtp.port, BOB, SUPPORT, raw)
    assert (code, reply) == (250, f"2.0.0 <{SUPPORT}> stored, processing failed: kept for an admin to retry".encode())
    [m] = await stored(db)
    assert (m.status, m.ticket_id, m.raw, m.subject) == ("failed", None, raw, "POISON pill")
    assert m.department_id is not None
    [event] = m.events
    assert event.kind == "failed"
    assert event.detail == ("processing failed: RuntimeError: boom; the message is kept as it arrived, "
                            "for an admin to retry")
    # The MTA offering it again (a lost 250) finds it stored: no second copy, no second failure.
    [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, raw)
    assert code == 250
    assert [(m.id, len(m.events)) for m in await stored(db)] == [(m.id, 1)]


async def test_the_failing_message_fails_alone_in_its_group(cli, db, pipeline, monkeypatch):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    poison(monkeypatch, KeyError("department"))
    good, bad = message(frm=ALICE, subject="Fine"), message(frm=BOB, subject="POISON")
    outcomes = await asyncio.gather(pipeline.deliver(Delivery(good, ALICE, SUPPORT)),
                                    pipeline.deliver(Delivery(bad, BOB, SUPPORT)))
    assert [o.status for o in outcomes] == ["ticket", "failed"]
    by_raw = {m.raw: m for m in await stored(db)}
    assert by_raw[good].status == "ticket" and by_raw[good].ticket_id == outcomes[0].ticket
    assert by_raw[bad].status == "failed" and by_raw[bad].events[-1].detail.startswith(
        "processing failed: KeyError: 'department';")


async def test_a_database_error_is_still_a_storage_failure_answered_451(cli, db, lmtp, monkeypatch):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    poison(monkeypatch, OperationalError("INSERT ...", {}, Exception("database is locked")))
    [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="POISON"))
    assert code == 451
    async with db.session() as s:
        assert await s.scalar(select(func.count(Message.id))) == 0


async def test_the_log_names_the_failure_without_the_mails_text_on_lines_of_its_own(cli, db, lmtp, monkeypatch,
                                                                                     caplog):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    poison(monkeypatch, ValueError("bad subject POISON\n2026-01-01 ERROR forged: log line"))
    with caplog.at_level(logging.INFO, logger="ticketmail.writer"):
        [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="POISON"))
    assert code == 250
    [record] = [r for r in caplog.records if "stored as failed" in r.getMessage()]
    text = record.getMessage()
    assert record.levelname == "ERROR" and record.exc_info is None
    assert "ValueError: bad subject POISON" in text and "forged" not in text
    assert "test_writer_failed.py" in text  # where it failed: the code's frames
