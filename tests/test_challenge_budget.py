"""The backscatter budget (issue 7 B): caps count mailboxes, unauthenticated senders have a budget of their
own, and mail a cap held is challenged later, once the budget allows, by the sweeper."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import func, select, update

from ingest.sweeper import challenge_capped
from storage.database import Database
from storage.models import Challenge, ChallengeWait, Outbox, utcnow
from tests.challenge_helpers import BOB, SUPPORT, as_json, settings_for, start_desk, stop_desk
from tests.mail import message
from tests.test_challenge_flow import press_confirm
from tests.test_challenge_pipeline import MX, count, events_of

VICTIM = "victim@target.example"


async def helpdesk(cli, db, **challenge):
    """Support challenges unknown senders; `challenge` sets [challenge] keys."""
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "challenge")
    assert code == 0, err

    def configure(config):
        for key, value in challenge.items():
            setattr(config.challenge, key, value)

    return await start_desk(db, configure)


def authenticated(sender: str, subject: str) -> bytes:
    domain = sender.rpartition("@")[2]
    return message(frm=sender, subject=subject, Authentication_Results=f"{MX}; dmarc=pass header.from={domain}")


async def age_challenges(db, hours: float = 2) -> None:
    """As if every challenge so far had been sent `hours` ago: the hourly budget is free again."""
    async with db.writer() as s, s.begin():
        for challenge in await s.scalars(select(Challenge)):  # in Python: SQLite has no datetime arithmetic
            challenge.created_at -= timedelta(hours=hours)


async def test_sub_addresses_and_case_are_one_mailbox(cli, db):
    """25 spellings of one mailbox got 20 challenges (per domain cap) before; now one, which releases all."""
    desk = await helpdesk(cli, db)
    try:
        senders = [f"victim+{n}@target.example" for n in range(24)] + ["Victim@TARGET.example"]
        outcomes = [await desk.deliver(message(frm=s, subject=f"try {n}"), sender=s) for n, s in enumerate(senders)]
        mail = await desk.challenge()
        await desk.outbox.run_once()
        assert len(desk.sink.received) == 1 and mail.rcpt_tos == ["victim+0@target.example"]
        assert [o.status for o in outcomes] == ["held"] * 25
        held = await as_json(cli, "held", "list")
        assert all("waits for the challenge" in h["reason"] for h in held[1:])
        status, _, _ = await press_confirm(desk, mail.link)
    finally:
        await stop_desk(desk)
    assert status == 303
    tickets = await as_json(cli, "tickets", "list")
    assert sorted(t["subject"] for t in tickets) == sorted(f"try {n}" for n in range(25))
    assert await as_json(cli, "held", "list") == []


@pytest.mark.parametrize("spelling", ["bob@newcomer.example", "bob+{n}@newcomer.example"])
async def test_per_sender_daily_counts_the_mailbox_not_its_spelling(cli, db, spelling):
    """One address, or one mailbox spelt with sub-address tags: at most per_sender_daily challenges."""
    desk = await helpdesk(cli, db, per_sender_daily=2)
    try:
        for n in range(4):
            sender = spelling.format(n=n)
            await desk.deliver(message(frm=sender, subject=f"try {n}"), sender=sender)
            if n < 2:
                await desk.challenge(n + 1)
            async with db.writer() as s, s.begin():  # each challenge runs out before the next mail
                await s.execute(update(Challenge).values(expires_at=Challenge.created_at))
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert await count(db, Challenge) == 2 and len(desk.sink.received) == 2
    held = await as_json(cli, "held", "list")
    assert "per_sender_daily = 2" in held[2]["reason"] and "per_sender_daily = 2" in held[3]["reason"]


async def test_forged_senders_get_at_most_unauthenticated_hourly_challenges_by_default(cli, db):
    """With the defaults (no trusted_authserv_id) a flood of 60 forged senders got 60 challenges; now 30."""
    desk = await helpdesk(cli, db)
    try:
        senders = [f"victim{n}@d{n}.example" for n in range(60)]
        await asyncio.gather(*(desk.deliver(message(frm=s, subject=f"offer {n}"), sender=s)
                               for n, s in enumerate(senders)))
        await desk.sink.wait_for(30)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert await count(db, Challenge) == 30 and len(desk.sink.received) == 30
    assert await count(db, ChallengeWait, ChallengeWait.capped.is_(True)) == 30
    held = await as_json(cli, "held", "list")
    assert sum("unauthenticated_hourly = 30" in h["reason"] for h in held) == 30


async def test_a_flood_of_unauthenticated_senders_leaves_the_budget_of_authenticated_ones(cli, db):
    desk = await helpdesk(cli, db, trusted_authserv_id=MX, unauthenticated_hourly=3, total_hourly=5)
    try:
        for n in range(10):
            await desk.deliver(message(frm=f"forged{n}@d{n}.example", subject=f"forged {n}"),
                               sender=f"forged{n}@d{n}.example")
        await desk.deliver(authenticated("carol@customer.example", "real one"), sender="carol@customer.example")
        await desk.deliver(authenticated("dave@other.example", "real two"), sender="dave@other.example")
        mails = await desk.sink.wait_for(5)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert len(desk.sink.received) == 5
    assert {m.rcpt_tos[0] for m in mails} == {"forged0@d0.example", "forged1@d1.example", "forged2@d2.example",
                                             "carol@customer.example", "dave@other.example"}
    held = {h["subject"]: h["reason"] for h in await as_json(cli, "held", "list")}
    assert "unauthenticated_hourly = 3" in held["forged 3"] and "challenged once the budget allows" in held["forged 3"]


async def test_capped_mail_is_challenged_later_authenticated_first_then_oldest_first(cli, db):
    desk = await helpdesk(cli, db, trusted_authserv_id=MX, unauthenticated_hourly=1, total_hourly=2)
    u1, u2 = "u1@one.example", "u2@two.example"
    a1, a2, a3 = "a1@three.example", "a2@four.example", "a3@five.example"
    try:
        await desk.deliver(message(frm=u1, subject="u1"), sender=u1)  # challenged
        await desk.deliver(message(frm=u2, subject="u2"), sender=u2)  # capped: unauthenticated budget
        for sender in (a1, a2, a3):  # a1 challenged; a2 and a3 capped: total budget
            await desk.deliver(authenticated(sender, sender[:2]), sender=sender)
        await desk.challenge(2)
        assert (await desk.sweeper.run_once()).challenged == 0  # the hour is not over: nothing fits
        await age_challenges(db)
        first = await desk.sweeper.run_once()
        await desk.challenge(4)
        await age_challenges(db)
        second = await desk.sweeper.run_once()
        await desk.challenge(5)
        third = await desk.sweeper.run_once()  # nothing is left capped: nobody is challenged twice
        await desk.outbox.run_once()
        a2_mail = desk.sink.received[2]
        status, _, _ = await press_confirm(desk, a2_mail.link)
    finally:
        await stop_desk(desk)
    assert (first.challenged, second.challenged, third.challenged) == (2, 1, 0)
    assert [m.rcpt_tos[0] for m in desk.sink.received] == [u1, a1, a2, a3, u2]
    assert status == 303
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["customer"], ticket["subject"]) == (a2, "a2")
    kinds = [k for k, _ in await events_of(db, 4)]  # a2's message: capped, then challenged by the sweeper
    assert kinds.index("challenge-capped") < kinds.index("challenge") < kinds.index("challenge-sent")


async def test_capped_mail_of_a_sender_who_wrote_again_is_not_challenged_twice(cli, db):
    desk = await helpdesk(cli, db, total_hourly=1)
    try:
        await desk.deliver(message(frm="first@one.example", subject="first"), sender="first@one.example")
        await desk.deliver(message(frm=BOB, subject="capped"))
        await desk.challenge(1)
        await age_challenges(db)
        again = "Bob+again@newcomer.example"  # the same mailbox as BOB: challenged on arrival
        await desk.deliver(message(frm=again, subject="again"), sender=again)
        await desk.challenge(2)
        swept = await desk.sweeper.run_once()
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert swept.challenged == 0 and len(desk.sink.received) == 2
    kinds = [k for k, _ in await events_of(db, 2)]
    assert kinds[-1] == "no-challenge"
    assert await count(db, ChallengeWait, ChallengeWait.capped.is_(True)) == 0


async def test_drains_in_several_processes_challenge_each_capped_message_once_within_the_budget(cli, db):
    desk = await helpdesk(cli, db, total_hourly=0)  # every message is capped on arrival
    try:
        for n in range(8):
            await desk.deliver(message(frm=f"user{n}@d{n}.example", subject=f"m{n}"), sender=f"user{n}@d{n}.example")
        settings = replace(settings_for(desk.config), total_hourly=5)
        engines = [Database(db.url) for _ in range(3)]
        try:
            drains = await asyncio.gather(*(
                e.run(partial(challenge_capped, settings=settings, ticket_prefix="Ticket"), utcnow(), write=True)
                for e in engines))
        finally:
            for e in engines:
                await e.dispose()
        await desk.sink.wait_for(5)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert sum(drains) == 5 and len(desk.sink.received) == 5
    assert len({m.rcpt_tos[0] for m in desk.sink.received}) == 5
    async with db.session() as s:
        per_mailbox = (await s.execute(select(Challenge.mailbox, func.count()).group_by(Challenge.mailbox))).all()
    assert len(per_mailbox) == 5 and {n for _, n in per_mailbox} == {1}
    assert await count(db, Outbox) == 5
    assert await count(db, ChallengeWait, ChallengeWait.capped.is_(True)) == 3


async def test_the_migrated_schema_is_what_the_models_say(db):
    """Migration 0004 and storage/models.py describe the same tables and indexes, on both databases."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from storage.models import Base
    from storage.ticket_search import in_models

    def differences(connection):  # the text search objects (0010) are not described in the models
        return compare_metadata(MigrationContext.configure(connection, opts={"include_name": in_models}),
                                Base.metadata)

    async with db.engine.connect() as conn:
        diff = await conn.run_sync(differences)
    assert diff == []


def test_upgrading_keeps_challenges_and_waits_and_challenges_nobody(tmp_path):
    """Rows from before 0004 get their address as their mailbox and are not marked capped."""
    import sqlite3

    from alembic import command

    from storage.database import _alembic_config, upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    command.upgrade(_alembic_config(url), "0003")
    with sqlite3.connect(tmp_path / "old.db") as old:
        old.executescript("""
            INSERT INTO departments (id, name, unknown_sender, created_at)
                VALUES (1, 'Support', 'challenge', '2026-01-01');
            INSERT INTO messages (id, dedup_key, status, from_addr, from_name, to_addrs, cc_addrs, subject, text,
                                  html, raw, sha256, size, source, source_key, envelope_sender, envelope_recipient,
                                  received_at)
                VALUES (1, 'k', 'held', 'bob+x@newcomer.example', '', '[]', '[]', 's', '', '', x'00', 'h', 1, 'lmtp',
                        '', '', '', '2026-01-01');
            INSERT INTO challenges (id, token_hash, sender, domain, department_id, state, created_at, expires_at,
                                    closed_reason, tickets, mail_id)
                VALUES (1, 'h', 'bob+x@newcomer.example', 'newcomer.example', 1, 'open', '2026-01-01', '2026-01-08',
                        '', '[]', 'm@x');
            INSERT INTO challenge_waits (message_id, sender, challenge_id) VALUES (1, 'bob+x@newcomer.example', NULL);
        """)
    upgrade(url)
    with sqlite3.connect(tmp_path / "old.db") as new:
        challenge = new.execute("SELECT sender, mailbox, authenticated FROM challenges").fetchall()
        waits = new.execute("SELECT sender, mailbox, authenticated, capped FROM challenge_waits").fetchall()
    assert challenge == [("bob+x@newcomer.example", "bob+x@newcomer.example", 0)]
    assert waits == [("bob+x@newcomer.example", "bob+x@newcomer.example", 0, 0)]
