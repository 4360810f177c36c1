"""Resubmissions: the same message (same Message-ID, department and body) again, with other Received
headers, is one message: 250, an event on the first, no second ticket."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from ingest.delivery import Delivery
from storage.models import Event, Message, utcnow
from tests.bridge_helpers import add_account, bridge_key, counts, departments, run_bridge, wait_until  # noqa: F401
from tests.conftest import deliver, race_in_two_processes
from tests.dovecot import dovecot  # noqa: F401 - fixture
from tests.mail import message
from tests.test_pipeline import ALICE, SALES, SUPPORT, as_json, helpdesk

HELP = "help@xyzhosting.com"  # a second address of Support


def relayed(raw: bytes, hop: str) -> bytes:
    """`raw` as it arrives after one more relay: a Received header of its own on top."""
    return f"Received: from {hop} by mx.xyzhosting.com; Sat, 28 Nov 2026 10:0{len(hop) % 10}:00 +0000\r\n".encode() + raw


async def events(db, kind: str) -> list[tuple[int, str]]:
    async with db.session() as s:
        rows = await s.execute(select(Event.message_id, Event.detail).where(Event.kind == kind).order_by(Event.id))
    return [tuple(r) for r in rows]


async def test_the_same_message_submitted_twice_is_one_ticket(cli, db, lmtp):
    await helpdesk(cli)
    raw = message(frm=ALICE, subject="Printer", Message_ID="<once@customer.example>")
    [(code, first)] = await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "client.customer.example"))
    [(code2, again)] = await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "retry.customer.example"))
    assert (code, code2) == (250, 250) and b"ticket #1" in first and b"ticket #1" in again
    assert len(await as_json(cli, "tickets", "list")) == 1
    async with db.session() as s:
        first, copy = await s.scalars(select(Message).order_by(Message.id))
    # The second is kept byte-exact, for what it is: not a ticket of its own.
    assert (copy.raw, copy.status, copy.ticket_id) == (relayed(raw, "retry.customer.example"), "resubmitted", None)
    assert await events(db, "resubmitted") == [
        (copy.id, f"the same message as message {first.id}"),
        (first.id, f"same message again, via lmtp from {ALICE} to {SUPPORT}")]


async def test_one_mail_to_two_addresses_of_one_department_is_one_ticket(cli, lmtp):
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--address", HELP,
                             "--unknown-sender", "accept")
    assert code == 0, err
    raw = message(frm=ALICE, subject="Two of you", Message_ID="<two@customer.example>")
    await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "a.example"))
    [(code, reply)] = await deliver(lmtp.port, ALICE, HELP, relayed(raw, "b.example"))
    assert code == 250 and b"ticket #1" in reply
    assert len(await as_json(cli, "tickets", "list")) == 1


async def test_other_departments_and_other_bodies_stay_apart(cli, lmtp):
    await helpdesk(cli)
    raw = message(frm=ALICE, subject="Both", Message_ID="<shared@customer.example>")
    await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "a.example"))
    await deliver(lmtp.port, ALICE, SALES, relayed(raw, "b.example"))  # another department: its own ticket
    reused = message(frm=ALICE, subject="Both", body="A different question.\n", Message_ID="<shared@customer.example>")
    await deliver(lmtp.port, ALICE, SUPPORT, relayed(reused, "c.example"))  # a broken mailer's reused id
    tickets = await as_json(cli, "tickets", "list")
    assert sorted(t["department"] for t in tickets) == ["Sales", "Support", "Support"]


async def test_after_the_window_it_is_a_message_of_its_own(cli, db, lmtp):
    await helpdesk(cli)
    raw = message(frm=ALICE, subject="Monthly", Message_ID="<monthly@customer.example>")
    await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "a.example"))
    async with db.session() as s:
        await s.execute(update(Message).values(received_at=utcnow() - timedelta(days=8)))
        await s.commit()
    [(code, reply)] = await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "b.example"))
    assert code == 250 and b"#" in reply
    assert await events(db, "resubmitted") == []
    async with db.session() as s:
        stored = list(await s.scalars(select(Message).order_by(Message.id)))
    assert [m.status for m in stored] == ["ticket", "ticket"]
    assert stored[0].resubmission_key is None and stored[1].resubmission_key  # the window starts again


async def test_a_resubmission_racing_in_two_processes_is_stored_once(cli, db):
    await helpdesk(cli)
    raws = [message(frm=ALICE, subject=f"race {n}", Message_ID=f"<race-{n}@customer.example>") for n in range(20)]
    outcomes = await race_in_two_processes(db, [
        (Delivery(relayed(raw, "a.example"), ALICE, SUPPORT), Delivery(relayed(raw, "bb.example"), ALICE, SUPPORT))
        for raw in raws])
    assert [a.ticket == b.ticket for a, b in zip(outcomes[::2], outcomes[1::2])] == [True] * 20
    assert sum(o.repeat == "resubmitted" for o in outcomes) == 20
    assert len(await as_json(cli, "tickets", "list")) == 20


async def test_the_same_mail_over_lmtp_and_over_imap_is_one_ticket(dovecot, add_account, run_bridge, db, cli, lmtp):
    raw = message(frm=ALICE, to=SUPPORT, subject="Both ways", Message_ID="<both@customer.example>")
    [(code, reply)] = await deliver(lmtp.port, ALICE, SUPPORT, relayed(raw, "mx.customer.example"))
    assert code == 250 and b"ticket #1" in reply
    await asyncio.to_thread(dovecot.append, "support", [relayed(raw, "imap.customer.example")])
    code, _, err = await add_account(dovecot)  # support@xyzhosting.com: the Support department
    assert code == 0, err
    await run_bridge()

    async def imported():
        _, stored = await counts(db)
        return stored == 2

    await wait_until(imported, 30, "the IMAP copy to be imported")
    assert len(await as_json(cli, "tickets", "list")) == 1
    [(_, detail)] = [e for e in await events(db, "resubmitted") if e[1].startswith("same message again")]
    assert detail.startswith("same message again, via imap:support")
