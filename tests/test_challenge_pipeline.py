"""What the pipeline does with unknown senders of a challenging department: when a challenge goes out
and when not (suppression, Authentication-Results, caps), expiry and the sweeper, a relay that is down."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, update

from ingest.challenges import token_hash
from ingest.parse import parse_message
from storage.models import Challenge, Event, Message, Outbox, utcnow
from tests.challenge_helpers import BOB, SUPPORT, SmtpSink, as_json, desk, start_desk, stop_desk  # noqa: F401
from tests.mail import message

MX = "mx.xyzhosting.com"


async def count(db, model, *where) -> int:
    async with db.session() as s:
        return await s.scalar(select(func.count()).select_from(model).where(*where))


async def events_of(db, message_id: int) -> list[tuple[str, str]]:
    async with db.session() as s:
        rows = await s.execute(select(Event.kind, Event.detail).where(Event.message_id == message_id)
                               .order_by(Event.id))
    return [tuple(r) for r in rows]


async def helpdesk(cli, db, configure=None):
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "challenge")
    assert code == 0, err
    return await start_desk(db, configure)


SUPPRESSED = [
    # (raw, envelope sender, source): each must be kept without anybody being mailed
    (message(frm=BOB, subject="null"), "", "lmtp"),
    (message(frm="noreply@shop.example", subject="robot"), "noreply@shop.example", "lmtp"),
    (message(frm="MAILER-DAEMON@mx.newcomer.example", subject="daemon"), "", "imap:box"),
    (message(frm=BOB, subject="auto", Auto_Submitted="auto-replied"), BOB, "lmtp"),
    (message(frm=BOB, subject="bulk", Precedence="bulk"), BOB, "lmtp"),
    (message(frm=BOB, subject="list", List_Unsubscribe="<mailto:u@list.example>"), BOB, "lmtp"),
    (message(frm=BOB, subject="list-id", List_Id="<l.list.example>"), BOB, "lmtp"),
    (message(frm=BOB, subject="loop", X_Loop="somewhere@else.example"), BOB, "lmtp"),
    (message(frm=BOB, subject="oof", X_Auto_Response_Suppress="OOF"), BOB, "lmtp"),
    (message(frm="support@xyzhosting.com", subject="own"), "support@xyzhosting.com", "lmtp"),
    (message(frm=BOB, subject="reply", In_Reply_To="<ticketmail-challenge.00ff@xyzhosting.com>"), BOB, "lmtp"),
    (message(frm=BOB, subject="marker", X_Ticketmail_Challenge="confirmation request"), BOB, "imap:box"),
    (message(frm=BOB, subject="[SPAM] cheap"), BOB, "lmtp"),
]


async def test_no_challenge_for_robots_lists_loops_bounces_and_spam(cli, db, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "spam"\nconditions = [{ field = "subject", op = "contains", '
                     'value = "[SPAM]" }]\nactions = [{ action = "tag", tag = "spam" }]\n')
    desk = await helpdesk(cli, db)
    try:
        assert (await cli("rules", "import", str(rules)))[0] == 0
        outcomes = [await desk.deliver(raw, sender, source=source) for raw, sender, source in SUPPRESSED]
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert desk.sink.received == [] and await count(db, Outbox) == 0 and await count(db, Challenge) == 0
    # Every one is kept, silently, with the reason in its log: held by the challenge step, or ignored by
    # the loop and auto-reply steps before it (as in any department). What is automatic mail is one set of
    # checks (ingest/automatic.py) for both: the bounce, list and OOF mail is ignored, not held.
    for n, result in enumerate(outcomes, 1):
        assert result.status in ("held", "ignored") and result.ticket is None
        kinds = [k for k, _ in await events_of(db, n)]
        assert {"no-challenge", "auto-reply", "ignore"} & set(kinds), (n, kinds)
    status = {parse_message(raw).subject: result.status for (raw, _, _), result in zip(SUPPRESSED, outcomes)}
    assert {subject for subject, s in status.items() if s == "held"} == {"robot", "reply", "marker", "[SPAM] cheap"}
    held = await as_json(cli, "held", "list")
    assert {h["subject"] for h in held} == {"robot", "reply", "marker", "[SPAM] cheap"}
    assert all("without a challenge" in h["reason"] for h in held)


async def test_forged_looking_mail_is_held_for_review_without_a_challenge(cli, db):
    def trust_mx(config):
        config.challenge.trusted_authserv_id = MX

    desk = await helpdesk(cli, db, trust_mx)
    try:
        dmarc_fail = await desk.deliver(message(frm=BOB, subject="dmarc", Authentication_Results=(
            f"{MX}; dmarc=fail (p=reject) header.from=newcomer.example")))
        spf_fail = await desk.deliver(message(frm="carol@newcomer.example", subject="spf", Authentication_Results=(
            f"{MX}; spf=fail smtp.mailfrom=carol@newcomer.example; dkim=none")), sender="carol@newcomer.example")
        # A header claiming our MTA's verdict below the real one changes nothing.
        forged = await desk.deliver(
            (f"Authentication-Results: {MX}; dmarc=fail header.from=newcomer.example\r\n".encode()
             + message(frm="dave@newcomer.example", subject="forged pass",
                       Authentication_Results=f"{MX}; dmarc=pass header.from=newcomer.example")),
            sender="dave@newcomer.example")
        passed = await desk.deliver(message(frm="erin@newcomer.example", subject="good", Authentication_Results=(
            f"{MX}; spf=fail smtp.mailfrom=erin@newcomer.example; dkim=pass header.d=newcomer.example")),
            sender="erin@newcomer.example")
        unauthenticated = await desk.deliver(message(frm="frank@newcomer.example", subject="plain"),
                                             sender="frank@newcomer.example")
        [mail1, mail2] = [await desk.challenge(1), await desk.challenge(2)]
    finally:
        await stop_desk(desk)
    assert {o.status for o in (dmarc_fail, spf_fail, forged, passed, unauthenticated)} == {"held"}
    assert sorted(m.rcpt_tos[0] for m in (mail1, mail2)) == ["erin@newcomer.example", "frank@newcomer.example"]
    held = {h["subject"]: h["reason"] for h in await as_json(cli, "held", "list")}
    assert "held for review, no challenge" in held["dmarc"] and "DMARC fail" in held["dmarc"]
    assert "SPF fail and no aligned DKIM pass" in held["spf"]
    assert "disagree on dmarc" in held["forged pass"]


async def test_unauthenticated_mail_is_not_challenged_when_so_configured(cli, db):
    def strict(config):
        config.challenge.challenge_unauthenticated = False
        config.challenge.trusted_authserv_id = MX

    desk = await helpdesk(cli, db, strict)
    try:
        await desk.deliver(message(frm=BOB, subject="no header"))
        await desk.deliver(message(frm="erin@newcomer.example", subject="with pass", Authentication_Results=(
            f"{MX}; dmarc=pass header.from=newcomer.example")), sender="erin@newcomer.example")
        [mail] = await desk.sink.wait_for(1)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert mail.rcpt_tos == ["erin@newcomer.example"] and len(desk.sink.received) == 1
    held = {h["subject"]: h["reason"] for h in await as_json(cli, "held", "list")}
    assert "challenge_unauthenticated = false" in held["no header"]


async def test_a_trusted_header_that_cannot_be_trusted_holds_for_review(cli, db):
    """Each of these was challenged before (issue 7 C), although the MTA's verdict was not a pass for the
    From address, or could not be read."""
    def trust_mx(config):
        config.challenge.trusted_authserv_id = MX  # challenge_unauthenticated stays true

    desk = await helpdesk(cli, db, trust_mx)
    try:
        unreadable = await desk.deliver(message(
            frm="victim@bank.example", subject="unreadable", Authentication_Results=(
                f'{MX}; spf=fail (sender "x(y"@bank.example) smtp.mailfrom=bank.example; '
                "dmarc=fail header.from=bank.example")), sender='"x(y"@bank.example')
        ambiguous = await desk.deliver(message(frm="victim@bank.example <attacker@evil.example>", subject="ambiguous",
                                               Authentication_Results=f"{MX}; dmarc=pass header.from=evil.example"),
                                       sender="attacker@evil.example")
        disagreeing = await desk.deliver(
            (f"Authentication-Results: {MX}; dmarc=pass header.from=bank.example\r\n".encode()
             + message(frm="teller@bank.example", subject="disagreeing",
                       Authentication_Results=f"{MX}; dmarc=fail header.from=bank.example")),
            sender="teller@bank.example")
        suffix = await desk.deliver(message(frm="owner@co.uk", subject="suffix",
                                            Authentication_Results=f"{MX}; dkim=pass header.d=evil.co.uk; spf=fail"),
                                    sender="owner@co.uk")
        good = await desk.deliver(message(frm="erin@newcomer.example", subject="good", Authentication_Results=(
            f"{MX}; dkim=pass header.d=newcomer.example")), sender="erin@newcomer.example")
        [mail] = await desk.sink.wait_for(1)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert {o.status for o in (unreadable, ambiguous, disagreeing, suffix, good)} == {"held"}
    assert mail.rcpt_tos == ["erin@newcomer.example"] and len(desk.sink.received) == 1
    held = {h["subject"]: h["reason"] for h in await as_json(cli, "held", "list")}
    for subject in ("unreadable", "ambiguous", "disagreeing", "suffix"):
        assert "held for review, no challenge" in held[subject], held[subject]
    assert "unreadable" in held["unreadable"] and "DMARC judged evil.example" in held["ambiguous"]
    assert "disagree on dmarc" in held["disagreeing"] and "no aligned DKIM pass" in held["suffix"]


async def test_a_catch_all_department_challenges_from_its_own_address_only(cli, db):
    """The challenge went out From the address the attacker wrote to (issue 7 D)."""
    for name, addresses in (("Help", ["*@help.example", "desk@help.example", "other@help.example"]),
                            ("Wild", ["*@wild.example"])):
        argv = [a for address in addresses for a in ("--address", address)]
        code, _, err = await cli("department", "add", name, *argv, "--unknown-sender", "challenge")
        assert code == 0, err
    desk = await start_desk(db)
    try:
        chosen = "it-security.password-expired@help.example"
        helped = await desk.deliver(message(frm=BOB, to=chosen, subject="catch-all"), recipient=chosen)
        wild = await desk.deliver(message(frm="carol@newcomer.example", to="x@wild.example", subject="wild"),
                                  sender="carol@newcomer.example", recipient="x@wild.example")
        [mail] = await desk.sink.wait_for(1)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert (helped.status, wild.status) == ("held", "held") and len(desk.sink.received) == 1
    sent_from = mail.message["From"].addresses[0]
    assert (sent_from.addr_spec, sent_from.display_name) == ("desk@help.example", "Help")  # the first literal one
    assert chosen not in mail.content.decode() and mail.rcpt_tos == [BOB]
    held = {h["subject"]: h["reason"] for h in await as_json(cli, "held", "list")}
    assert "no challenge: Wild has no address of its own to send one from" in held["wild"]


async def test_a_thousand_unknown_senders_get_a_bounded_number_of_challenges(cli, db):
    def caps(config):
        config.challenge.per_domain_hourly = 5
        config.challenge.total_hourly = 30

    desk = await helpdesk(cli, db, caps)
    try:
        # 950 forged-looking senders in 19 domains, and one address used 50 times.
        senders = [f"user{n}@d{n % 19}.example" for n in range(950)] + ["victim@target.example"] * 50
        outcomes = await asyncio.gather(*(
            desk.deliver(message(frm=s, subject=f"offer {n}"), sender=s) for n, s in enumerate(senders)))
        await desk.sink.wait_for(30)
        await desk.outbox.run_once()
    finally:
        await stop_desk(desk)
    assert [o.status for o in outcomes] == ["held"] * 1000
    assert await count(db, Challenge) == 30 and len(desk.sink.received) == 30
    async with db.session() as s:
        per_domain = (await s.execute(select(Challenge.domain, func.count()).group_by(Challenge.domain))).all()
        victim = await s.scalar(select(func.count()).select_from(Challenge)
                                .where(Challenge.sender == "victim@target.example"))
        capped = await s.scalar(select(func.count(func.distinct(Event.message_id)))
                                .where(Event.kind == "challenge-capped"))
    assert max(n for _, n in per_domain) <= 5 and victim <= 1
    assert capped >= 1000 - 30 - 50  # all but the challenged ones and the victim's joined mail


async def test_challenge_waits_while_the_relay_is_down_and_is_sent_when_it_is_back(cli, db):
    code, _, _ = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "challenge")
    desk = await start_desk(db, sink_up=False, retry_base=0.05)
    try:
        outcome = await desk.deliver(message(frm=BOB))
        assert outcome.status == "held"  # the delivery does not wait for the relay
        for _ in range(500):  # bounded: until a few attempts have failed
            async with db.session() as s:
                row = await s.scalar(select(Outbox))
            if row.attempts >= 3:
                break
            await asyncio.sleep(0.02)
        assert row.state == "pending" and row.attempts >= 3 and row.last_error
        assert [h["subject"] for h in await as_json(cli, "held", "list")] == ["Printer on fire"]
        sink = await SmtpSink(desk.sink.port).start()  # the relay comes back
        try:
            [mail] = await sink.wait_for(1)
            for _ in range(250):
                async with db.session() as s:
                    row = await s.scalar(select(Outbox))
                if row.state == "sent":
                    break
                await asyncio.sleep(0.02)
        finally:
            await sink.stop()
    finally:
        await stop_desk(desk)
    assert mail.rcpt_tos == [BOB] and row.state == "sent"
    kinds = [k for k, _ in await events_of(db, 1)]
    assert kinds.count("challenge-sent") == 1


async def test_sweeper_expires_challenges_and_purges_old_held_mail(cli, db, desk):
    await desk.deliver(message(frm=BOB, subject="old"))
    first = await desk.challenge()
    async with db.writer() as s, s.begin():
        await s.execute(update(Challenge).values(expires_at=Challenge.created_at))
    swept = await desk.sweeper.run_once()
    assert swept.expired == 1 and swept.purged == 0
    async with desk.http.get(first.link) as response:
        assert response.status == 410
    # The sender writes again: a new challenge, and confirming it releases both messages.
    await desk.deliver(message(frm=BOB, subject="again"))
    second = await desk.challenge(2)
    assert second.link != first.link
    # Held mail past held_days is purged (the record stays), with an event saying so.
    async with db.writer() as s, s.begin():
        await s.execute(update(Message).where(Message.subject == "old")
                        .values(received_at=utcnow() - timedelta(days=15)))
    swept = await desk.sweeper.run_once()
    assert swept.purged == 1
    kinds = [k for k, _ in await events_of(db, 1)]
    assert kinds[-1] == "purged"
    async with db.session() as s:
        old = await s.scalar(select(Message).where(Message.subject == "old"))
    assert (old.status, old.raw) == ("purged", b"")
    assert [h["subject"] for h in await as_json(cli, "held", "list")] == ["again"]


async def test_keep_for_review_keeps_unconfirmed_mail_held(cli, db):
    def keep(config):
        config.challenge.keep_for_review = True

    desk = await helpdesk(cli, db, keep)
    try:
        await desk.deliver(message(frm=BOB, subject="old"))
        await desk.challenge()
        async with db.writer() as s, s.begin():
            await s.execute(update(Message).values(received_at=utcnow() - timedelta(days=15)))
        first, again = await desk.sweeper.run_once(), await desk.sweeper.run_once()
    finally:
        await stop_desk(desk)
    assert (first.kept, first.purged, again.kept) == (1, 0, 0)
    [held] = await as_json(cli, "held", "list")
    assert "kept for review" in held["reason"]


async def test_unsent_mail_of_an_expired_challenge_is_given_up(cli, db):
    code, _, _ = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "challenge")
    desk = await start_desk(db, sink_up=False)
    try:
        await desk.deliver(message(frm=BOB))
        async with db.writer() as s, s.begin():
            await s.execute(update(Challenge).values(expires_at=Challenge.created_at))
        swept = await desk.sweeper.run_once()
    finally:
        await stop_desk(desk)
    assert (swept.expired, swept.given_up) == (1, 1)
    async with db.session() as s:
        row = await s.scalar(select(Outbox))
    assert (row.state, row.content) == ("failed", b"")


async def test_token_is_looked_up_by_hash_only(db, desk):
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    token = mail.link.rsplit("/", 1)[1]
    async with db.session() as s:
        hashes = (await s.scalars(select(Challenge.token_hash))).all()
    assert hashes == [token_hash(token)] and token not in hashes


async def test_waiting_mail_of_a_sender_who_became_a_customer_is_released_by_the_sweeper(cli, db, desk):
    """As when a confirmation in another process commits while this message is being held."""
    await desk.deliver(message(frm=BOB, subject="meanwhile"))
    mail = await desk.challenge()
    assert (await cli("customer", "add", BOB))[0] == 0
    swept = await desk.sweeper.run_once()
    assert swept.released == 1
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["customer"], ticket["subject"]) == (BOB, "meanwhile")
    async with desk.http.get(mail.link) as response:
        assert response.status == 410  # closed: there is nothing left to confirm
