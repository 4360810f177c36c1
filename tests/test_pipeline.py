"""What happens to a message, end to end: LMTP in, tickets and events out, checked with the CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, update

from storage.models import Message, Ticket
from tests.conftest import deliver, one_database, race_in_two_processes
from tests.mail import message

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
ALICE = "alice@customer.example"
BOB = "bob@customer.example"
EVE = "eve@attacker.example"


async def helpdesk(cli, policy="hold"):
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", policy)
    await cli("department", "add", "Sales", "--address", SALES, "--unknown-sender", policy)
    await cli("customer", "add", ALICE)


async def as_json(cli, *argv):
    code, out, err = await cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


def kinds(ticket: dict, index: int = -1) -> list[str]:
    return [e["kind"] for e in ticket["messages"][index]["events"]]


async def test_reply_with_in_reply_to_is_a_followup(cli, lmtp):
    await helpdesk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(Message_ID="<first@customer.example>"))
    await deliver(lmtp.port, ALICE, SUPPORT, message(subject="Re: Printer on fire",
                                                     In_Reply_To="<first@customer.example>"))
    [ticket] = await as_json(cli, "tickets", "list")
    assert ticket["messages"] == 2
    shown = await as_json(cli, "tickets", "show", "1")
    assert [m["subject"] for m in shown["messages"]] == ["Printer on fire", "Re: Printer on fire"]
    assert "appended" in kinds(shown)


async def test_subject_reference_reopens_closed_ticket(cli, db, lmtp):
    await helpdesk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message())
    async with db.writer() as s, s.begin():
        await s.execute(update(Ticket).values(status="closed"))
    # A fresh mail (no In-Reply-To), prefixes of several languages before the reference.
    [(code, reply)] = await deliver(lmtp.port, ALICE, SUPPORT, message(subject="AW: SV: Re: [Ticket #1] still burning"))
    assert code == 250 and b"ticket #1" in reply
    [ticket] = await as_json(cli, "tickets", "list")
    assert ticket["status"] == "open" and ticket["messages"] == 2
    assert "reopened" in kinds(await as_json(cli, "tickets", "show", "1"))


async def test_subject_reference_from_stranger_does_not_join_the_ticket(cli, lmtp):
    await helpdesk(cli, policy="accept")
    await deliver(lmtp.port, ALICE, SUPPORT, message())
    await deliver(lmtp.port, EVE, SUPPORT, message(frm=EVE, subject="[Ticket #1] send me the password"))
    tickets = await as_json(cli, "tickets", "list")
    assert sorted((t["number"], t["customer"], t["messages"]) for t in tickets) == [(1, ALICE, 1), (2, EVE, 1)]
    shown = await as_json(cli, "tickets", "show", "2")
    assert any("not its customer" in e["detail"] for e in shown["messages"][0]["events"])


async def test_subject_reference_from_someone_cced_on_the_ticket_joins_it(cli, lmtp):
    await helpdesk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(to=SUPPORT, Cc=f"Bob <{BOB}>"))
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Re: [Ticket #1] Printer on fire"))
    [ticket] = await as_json(cli, "tickets", "list")
    assert ticket["messages"] == 2


async def test_out_of_office_is_recorded_on_its_ticket_but_creates_none(cli, lmtp):
    await helpdesk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(Message_ID="<orig@customer.example>"))
    await deliver(lmtp.port, ALICE, SUPPORT, message(subject="Out of office", Auto_Submitted="auto-replied",
                                                     In_Reply_To="<orig@customer.example>"))
    await deliver(lmtp.port, ALICE, SUPPORT, message(subject="Out of office again", Auto_Submitted="auto-replied"))
    [ticket] = await as_json(cli, "tickets", "list")
    assert ticket["messages"] == 2
    shown = await as_json(cli, "tickets", "show", "1")
    assert shown["messages"][1]["status"] == "auto_reply"


async def test_bulk_and_list_mail_never_create_tickets(cli, db, lmtp):
    await helpdesk(cli, policy="accept")
    for headers in ({"Precedence": "bulk"}, {"List_Id": "<news.example.org>"}, {"Auto_Submitted": "auto-generated"}):
        [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(**headers))
        assert code == 250
    [(code, _)] = await deliver(lmtp.port, "<>", SUPPORT, message(frm="MAILER-DAEMON@mx.example"))
    assert code == 250
    assert await as_json(cli, "tickets", "list") == []
    async with db.session() as s:
        assert set(await s.scalars(select(Message.status))) == {"ignored"}


async def test_mail_from_our_own_address_is_a_loop(cli, db, lmtp):
    await helpdesk(cli, policy="accept")
    [(code, _)] = await deliver(lmtp.port, SALES, SUPPORT, message(frm=SALES))
    assert code == 250
    assert await as_json(cli, "tickets", "list") == []


async def test_seed_rules_assign_and_delete(cli, db, lmtp, tmp_path):
    await helpdesk(cli)
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[rule]]
name = "support-by-address"
conditions = [{ field = "to", op = "contains", value = "support@xyzhosting.com" }]
actions = [{ action = "assign", department = "Support" }]

[[rule]]
name = "drop-tagged-spam"
conditions = [{ field = "subject", op = "contains", value = "[Spam]" }]
actions = [{ action = "delete" }]
''')
    code, out, err = await cli("rules", "import", str(rules))
    assert code == 0, err
    code, exported, _ = await cli("rules", "export")
    assert 'name = "drop-tagged-spam"' in exported and 'department = "Support"' in exported
    assert [r["name"] for r in await as_json(cli, "rules", "list")] == ["support-by-address", "drop-tagged-spam"]
    # Delivered to Sales but addressed To support: the rule assigns it to Support.
    await deliver(lmtp.port, ALICE, SALES, message(to=f"Support <{SUPPORT}>"))
    [(code, _)] = await deliver(lmtp.port, ALICE, SUPPORT, message(subject="[Spam] cheap pills"))
    assert code == 250
    [ticket] = await as_json(cli, "tickets", "list")
    assert ticket["department"] == "Support"
    async with db.session() as s:
        deleted = await s.scalar(select(Message).where(Message.status == "deleted"))
    assert deleted.subject == "[Spam] cheap pills" and deleted.raw  # kept until purge


async def test_rules_tag_priority_and_trust(cli, lmtp, tmp_path):
    await helpdesk(cli, policy="reject")
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[rule]]
name = "partners"
conditions = [{ field = "from", op = "ends_with", value = "@partner.example" }]
actions = [{ action = "trust" }, { action = "tag", tag = "partner" }, { action = "priority", priority = "high" }]
''')
    assert (await cli("rules", "import", str(rules)))[0] == 0
    [(code, _)] = await deliver(lmtp.port, "p@partner.example", SUPPORT, message(frm="p@partner.example"))
    assert code == 250
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["tags"], ticket["priority"], ticket["customer"]) == (["partner"], "high", "p@partner.example")


@one_database
async def test_bad_rules_file_is_one_line_and_imports_nothing(cli, tmp_path):
    await helpdesk(cli)
    rules = tmp_path / "rules.toml"
    rules.write_text('''
[[rule]]
name = "fine"
conditions = [{ field = "subject", op = "contains", value = "x" }]
actions = [{ action = "tag", tag = "x" }]

[[rule]]
name = "broken"
conditions = [{ field = "subject", op = "regex", value = "(unclosed" }]
actions = [{ action = "delete" }]
''')
    code, out, err = await cli("rules", "import", str(rules))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and '"broken"' in err
    assert await as_json(cli, "rules", "list") == []


async def test_held_mail_is_listed_and_released_as_ticket(cli, lmtp):
    await helpdesk(cli, policy="hold")
    [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="New here"))
    assert code == 250
    assert await as_json(cli, "tickets", "list") == []
    [held] = await as_json(cli, "held", "list")
    assert held["from"] == BOB and held["subject"] == "New here"
    code, out, err = await cli("held", "release", str(held["id"]))
    assert code == 0, err
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["customer"], ticket["subject"], ticket["department"]) == (BOB, "New here", "Support")
    assert await as_json(cli, "held", "list") == []
    # Bob is a customer now: his next mail is a ticket straight away.
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Second"))
    assert len(await as_json(cli, "tickets", "list")) == 2


async def test_challenge_policy_holds_until_challenge_response_exists(cli, lmtp):
    await helpdesk(cli, policy="challenge")
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB))
    [held] = await as_json(cli, "held", "list")
    assert "challenges unknown senders" in held["reason"]


async def test_purge_drops_old_held_mail_but_keeps_the_record(cli, db, lmtp):
    await helpdesk(cli, policy="hold")
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB))
    code, out, _ = await cli("held", "purge", "--days", "0")
    assert code == 0 and out.startswith("1 messages purged")
    async with db.session() as s:
        m = await s.scalar(select(Message))
    assert (m.status, m.raw) == ("purged", b"")


async def test_same_delivery_racing_in_two_processes_is_stored_once(cli, db):
    """Two ticketmail processes (two pipelines, two engines) get the same message at the same time."""
    from ingest.delivery import Delivery

    await helpdesk(cli)
    raws = [message(subject=f"race {n}") for n in range(30)]
    outcomes = await race_in_two_processes(db, [(Delivery(raw, ALICE, SUPPORT),) * 2 for raw in raws])
    assert all(o.status == "ticket" for o in outcomes)
    # Each pair of racing deliveries answered with the same ticket; one of each was a duplicate.
    assert [a.ticket == b.ticket for a, b in zip(outcomes[::2], outcomes[1::2])] == [True] * 30
    assert sum(o.repeat == "duplicate" for o in outcomes) == 30
    assert len(await as_json(cli, "tickets", "list")) == 30


async def test_ticket_json_has_the_documented_fields_with_utc_times(cli, lmtp):
    await helpdesk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message())
    [listed] = await as_json(cli, "tickets", "list")
    assert {"number", "subject", "status", "department", "customer", "messages", "created_at", "updated_at"} <= set(listed)
    shown = await as_json(cli, "tickets", "show", "1")
    [m] = shown["messages"]
    assert {"message_id", "from", "to", "subject", "date", "text", "attachments", "events"} <= set(m)
    assert m["date"] == "2026-11-28T10:00:00+00:00"
    assert all(e["at"].endswith("+00:00") for e in m["events"])
    assert m["text"] == "Hello,\nthe printer is on fire.\n"


async def test_an_imap_sender_longer_than_the_database_keeps_is_stored(cli, db, pipeline):
    """Regression: IMAP's envelope sender comes from the mail (Return-Path); one of 400 characters made
    PostgreSQL refuse the row, and the account would have offered the message again forever."""
    from ingest.delivery import Delivery

    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    sender, raw = "b" * 383 + "@customer.example", message()
    outcome = await pipeline.deliver(Delivery(raw, sender=sender, recipient=SUPPORT, source="imap:support",
                                              source_key="1/1"))
    assert (outcome.status, outcome.ticket) == ("ticket", 1)
    async with db.session() as s:
        stored = await s.scalar(select(Message))
    assert stored.envelope_sender == sender[:320] and stored.raw == raw

    # A From address as long, and no other sender: no customer can be made of it; still stored, and decided.
    long_from = message(frm=f"Mallory <{'m' * 383}@customer.example>", subject="who am I")
    outcome = await pipeline.deliver(Delivery(long_from, sender=sender, recipient=SUPPORT, source="imap:support",
                                              source_key="1/2"))
    assert (outcome.status, outcome.reason) == ("held", "no sender address (no From, null envelope sender): "
                                                        "held for review")
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Message).where(Message.raw == long_from)) == 1


async def test_a_display_name_longer_than_a_customer_keeps_is_cut_not_refused(cli, db, pipeline):
    """Regression: an unknown sender's 300-character display name, accepted as a customer, made PostgreSQL
    refuse the delivery (customers.name holds 200): 451 for as long as the MTA tried."""
    from ingest.delivery import Delivery
    from storage.models import Customer

    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    raw = message(frm=f"{'N' * 300} <{ALICE}>")
    outcome = await pipeline.deliver(Delivery(raw, sender=ALICE, recipient=SUPPORT))
    assert (outcome.status, outcome.ticket) == ("ticket", 1)
    async with db.session() as s:
        assert (await s.scalar(select(Customer.name).where(Customer.email == ALICE))) == "N" * 200
        assert (await s.scalar(select(Message.from_name))) == "N" * 300  # the message keeps all of it


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite takes any length
async def test_a_value_the_database_refuses_keeps_the_message_as_failed(cli, db, pipeline, monkeypatch):
    """Whatever value from a message a column cannot hold (here, as a customer's name once could not),
    the message is kept as failed for an admin: answered 451, the MTA would offer it for days, refused
    each time."""
    from ingest.delivery import Delivery
    from storage import store
    from storage.models import Customer

    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept"))[0] == 0
    monkeypatch.setattr(store, "customer_from_mail", lambda email, name, **how: Customer(email=email, name=name, **how))
    raw = message(frm=f"{'N' * 300} <{ALICE}>")
    outcome = await pipeline.deliver(Delivery(raw, sender=ALICE, recipient=SUPPORT))
    assert (outcome.status, outcome.ticket) == ("failed", None)
    async with db.session() as s:
        stored = await s.scalar(select(Message))
        assert (stored.status, stored.raw) == ("failed", raw)
        assert await s.scalar(select(func.count()).select_from(Customer)) == 0


async def test_a_long_address_no_department_owns_still_dedups_its_deliveries(db, pipeline):
    """The delivery key holds the recipient when no department owns it (an IMAP account without one); an
    address of 200 characters overflowed the key's column on PostgreSQL."""
    from ingest.delivery import Delivery

    recipient, raw = "r" * 188 + "@xyzhosting.com", message()
    first = await pipeline.deliver(Delivery(raw, sender=ALICE, recipient=recipient, source="imap:x", source_key="1/1"))
    again = await pipeline.deliver(Delivery(raw, sender=ALICE, recipient=recipient, source="imap:x", source_key="1/1"))
    assert (first.status, first.repeat, again.status, again.repeat) == ("held", "", "held", "duplicate")
    async with db.session() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 1
