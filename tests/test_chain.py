"""The decision steps of ingest/chain.py, one at a time and in their declared order.

Steps that only look at the message run on a Directory built here, without a database; those that
look up tickets, customers or blocked senders get a real session (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ingest import chain, challenges
from ingest.delivery import Delivery
from ingest.directory import DepartmentInfo, Directory
from ingest.parse import parse_message
from ingest.rules import RuleSet, rules_from_data
from ingest.writer import record
from storage.models import BlockedSender, Challenge, Customer, Department, Ticket, utcnow
from tests.mail import message

SUPPORT, SALES = "support@xyzhosting.com", "sales@xyzhosting.com"
ALICE = "alice@customer.example"
BOB = "bob@else.example"
DEPARTMENTS = {"Support": (1, SUPPORT), "Sales": (2, SALES)}


def directory(rules: list[dict] = (), policy: str = "hold") -> Directory:
    """Support and Sales, both with `policy` for unknown senders, and the given rules."""
    d = Directory(rules=RuleSet(rules_from_data(list(rules))))
    for name, (number, address) in DEPARTMENTS.items():
        info = DepartmentInfo(number, name, policy)
        d.departments[name.lower()], d.addresses[address] = info, info
    return d


def context(raw: bytes | None = None, *, sender: str = ALICE, recipient: str = SUPPORT, source: str = "lmtp",
            session=None, rules: list[dict] = (), policy: str = "hold") -> chain.Context:
    d = directory(rules, policy)
    return chain.Context(session=session, directory=d, parsed=parse_message(raw or message()), sender=sender,
                         recipient=recipient, source=source, account="", ticket_prefix="Ticket",
                         department=d.department_for(recipient))


def rule(name: str, field: str, value: str, *actions: dict) -> dict:
    return {"name": name, "conditions": [{"field": field, "op": "contains", "value": value}], "actions": list(actions)}


def test_the_order_of_decisions():
    assert [step.__name__ for step in chain.CHAIN] == [
        "detect_loop", "detect_auto_reply", "apply_rules", "blocked_sender", "find_followup", "sender_standing",
        "unknown_sender_policy",
        "challenge_suppressed", "challenge_unauthenticated", "challenge_joined", "challenge_without_address",
        "challenge_capped", "challenge"]


def test_sender_address_is_the_from_address_else_the_envelope_sender():
    assert chain.sender_address(parse_message(message(frm="Alice <Alice@Customer.Example>")), BOB) == ALICE
    assert chain.sender_address(parse_message(b"Subject: no From\r\n\r\nhi\r\n"), "Bob@Else.Example") == BOB
    assert chain.sender_address(parse_message(b"Subject: no From\r\n\r\nhi\r\n"), "") == ""
    # A stored message too (held mail, released or discarded later): the same address.
    raw = b"Subject: no From\r\n\r\nhi\r\n"
    stored = record(Delivery(raw=raw, sender="Bob@Else.Example", recipient=SUPPORT), parse_message(raw), "k")
    assert chain.sender_address(stored, stored.envelope_sender) == BOB


# --- detect_loop ---


def test_mail_from_our_own_address_is_ignored_as_a_loop():
    ctx = context(message(frm=f"Support <{SUPPORT.upper()}>"))
    assert chain.detect_loop(ctx) == chain.Decision(
        "ignore", f"mail loop: From {SUPPORT} is one of our own addresses")


def test_x_loop_naming_our_address_is_ignored_as_a_loop():
    ctx = context(message(X_Loop=f"other@list.example, {SALES}"))
    assert chain.detect_loop(ctx) == chain.Decision(
        "ignore", f"mail loop: X-Loop names our address other@list.example, {SALES}")


def test_x_loop_naming_someone_else_and_plain_mail_are_no_loop():
    assert chain.detect_loop(context(message(X_Loop="list@list.example"))) is None
    assert chain.detect_loop(context()) is None


# --- detect_auto_reply ---


def test_automatic_mail_is_marked_and_noted_but_not_decided():
    for headers, why in (
        ({"Auto_Submitted": "auto-replied; owner-email=x@y"}, "Auto-Submitted: auto-replied"),
        ({"Precedence": "Bulk"}, "Precedence: bulk"),
        ({"List_Id": "<news.list.example>"}, "mailing list mail (List-Id)"),
    ):
        ctx = context(message(**headers))
        assert chain.detect_auto_reply(ctx) is None
        assert ctx.auto == why
        assert ctx.events == [("auto-reply", f"automatic message: {why}")]


def test_the_null_envelope_sender_is_automatic_over_lmtp_only():
    ctx = context(sender="")
    assert chain.detect_auto_reply(ctx) is None
    assert ctx.auto == "null envelope sender (a bounce or notification)"
    imported = context(sender="", source="imap:support")  # IMAP has no envelope sender at all
    assert chain.detect_auto_reply(imported) is None
    assert imported.auto is None and imported.events == []


def test_an_imported_bounce_is_known_by_its_return_path_or_mailer_daemon():
    ctx = context(message(Return_Path="<>"), sender="", source="imap:support")
    chain.detect_auto_reply(ctx)
    assert ctx.auto == "null envelope sender (a bounce or notification)"
    ctx = context(message(frm="Mail Delivery System <MAILER-DAEMON@mx.customer.example>"), source="imap:support")
    chain.detect_auto_reply(ctx)
    assert ctx.auto == "mailer-daemon@mx.customer.example is an automatic address (MAILER-DAEMON: a bounce)"


# Each of these was automatic to one of the two paths only: now to both, for the same reason.
AUTOMATIC = [
    ({"List_Post": "<mailto:news@list.example>"}, "mailing list mail (List-Post)"),
    ({"List_Unsubscribe": "<mailto:u@list.example>"}, "mailing list mail (List-Unsubscribe)"),
    ({"X_Auto_Response_Suppress": "All"}, "X-Auto-Response-Suppress: All"),
    ({"X_Auto_Response_Suppress": "DR, OOF, AutoReply"}, "X-Auto-Response-Suppress: DR, OOF, AutoReply"),
    ({"Precedence": "auto_reply"}, "Precedence: auto_reply"),
]


@pytest.mark.parametrize("headers, why", AUTOMATIC)
def test_the_auto_reply_step_and_the_challenge_agree_on_what_is_automatic(headers, why):
    ctx = context(message(frm=BOB, **headers), sender=BOB, policy="challenge")
    assert chain.detect_auto_reply(ctx) is None
    assert ctx.auto == why
    assert chain.find_followup(ctx) == chain.Decision(
        "ignore", f"automatic message ({why}) answering no ticket: no ticket created")
    assert chain.challenge_suppressed(ctx) == chain.Decision(
        "hold", f"unknown sender {BOB} held without a challenge: {why}")
    assert ctx.events == [("auto-reply", f"automatic message: {why}"), ("no-challenge", why)]


def test_x_auto_response_suppress_other_than_all_or_oof_is_automatic_to_neither():
    ctx = context(message(frm=BOB, X_Auto_Response_Suppress="DR, RN"), sender=BOB, policy="challenge")
    assert chain.detect_auto_reply(ctx) is None and ctx.auto is None
    assert chain.challenge_suppressed(ctx) is None and ctx.events == []


def test_a_person_s_mail_is_not_automatic():
    ctx = context(message(Auto_Submitted="no"))
    assert chain.detect_auto_reply(ctx) is None
    assert ctx.auto is None and ctx.events == []


# --- apply_rules ---


def test_a_rule_assigns_another_department_and_its_hit_is_noted():
    ctx = context(message(subject="Invoice 42"),
                  rules=[rule("billing", "subject", "Invoice", {"action": "assign", "department": "Sales"},
                              {"action": "priority", "priority": "high"})])
    assert chain.apply_rules(ctx) is None
    assert ctx.department.name == "Sales"
    assert ctx.verdict.priority == "high" and not ctx.verdict.delete
    [(kind, detail)] = ctx.events
    assert kind == "rule" and detail.startswith('rule "billing" matched:')


def test_a_rule_assigning_an_unknown_department_keeps_the_recipient_s():
    ctx = context(rules=[rule("lost", "subject", "Printer", {"action": "assign", "department": "Nowhere"})])
    assert chain.apply_rules(ctx) is None
    assert ctx.department.name == "Support"
    assert ctx.events[-1] == ("warning", "rule assigns unknown department 'Nowhere'; kept Support")


def test_a_delete_rule_decides_delete():
    ctx = context(message(subject="[Spam] cheap"), rules=[rule("spam", "subject", "[Spam]", {"action": "delete"})])
    assert chain.apply_rules(ctx) == chain.Decision(
        "delete", "deleted by rule; the raw message is kept until `held purge`")


def test_no_rule_matching_decides_nothing_and_notes_nothing():
    ctx = context(rules=[rule("spam", "subject", "[Spam]", {"action": "delete"})])
    assert chain.apply_rules(ctx) is None
    assert ctx.verdict.hits == [] and ctx.events == [] and ctx.department.name == "Support"


# --- find_followup, without references (no lookup) ---


def test_automatic_mail_answering_no_ticket_is_ignored():
    ctx = context(message(Auto_Submitted="auto-replied"))
    chain.detect_auto_reply(ctx)
    assert chain.find_followup(ctx) == chain.Decision(
        "ignore", "automatic message (Auto-Submitted: auto-replied) answering no ticket: no ticket created")


def test_a_new_message_without_references_is_no_followup():
    ctx = context()
    assert chain.find_followup(ctx) is None and ctx.ticket is None


# --- the steps that read the database ---


def add_ticket(session, customer_email: str, *, on_it: str = "") -> tuple[int, str]:
    """A ticket of `customer_email` with one message (From the customer, Cc `on_it`); (number, Message-ID)."""
    customer = Customer(email=customer_email)
    ticket = Ticket(subject="Printer on fire", customer=customer)
    session.add_all([customer, ticket])
    session.flush()
    raw = message(frm=customer_email, **({"Cc": on_it} if on_it else {}))
    parsed = parse_message(raw)
    stored = record(Delivery(raw=raw, sender=customer_email, recipient=SUPPORT), parsed, f"{ticket.id}:key")
    stored.ticket_id, stored.status = ticket.id, "ticket"
    session.add(stored)
    session.flush()
    return ticket.id, parsed.message_id


async def test_in_reply_to_a_ticket_s_message_is_a_followup(db):
    number, message_id = await db.run(add_ticket, ALICE, write=True)

    def step(session):
        ctx = context(message(frm=BOB, In_Reply_To=message_id, subject="Re: something else"), session=session)
        return chain.find_followup(ctx), ctx.ticket.id

    decision, ticket = await db.run(step)
    assert decision == chain.Decision("append", f"follow-up on ticket #{number} (In-Reply-To/References)")
    assert ticket == number


async def test_subject_reference_appends_only_for_someone_on_the_ticket(db):
    number, _ = await db.run(lambda s: add_ticket(s, ALICE, on_it="carol@customer.example"), write=True)

    def step(session, frm):
        ctx = context(message(frm=frm, subject=f"Re: [Ticket #{number}] Printer on fire"), session=session)
        return chain.find_followup(ctx), ctx.events

    for someone in (ALICE, "carol@customer.example"):
        decision, events = await db.run(step, someone)
        assert decision == chain.Decision("append", f"follow-up on ticket #{number} (subject reference)")
        assert events == []
    decision, events = await db.run(step, BOB)
    assert decision is None
    assert events == [("reference", f"subject names ticket #{number}, but {BOB} is not its customer nor was "
                                    "on it: not appended")]


async def test_subject_reference_to_a_missing_ticket_is_noted(db):
    def step(session):
        ctx = context(message(subject="Re: [Ticket #999] gone"), session=session)
        return chain.find_followup(ctx), ctx.events

    decision, events = await db.run(step)
    assert decision is None and events == [("reference", "subject names ticket #999, which does not exist")]


async def test_sender_standing(db):
    def add_alice(session):
        session.add(Customer(email=ALICE, name="Alice"))

    await db.run(add_alice, write=True)
    trust_bob = [rule("partner", "from", BOB, {"action": "trust"})]

    def step(session, raw, sender, rules=()):
        ctx = context(raw, sender=sender, session=session, rules=rules)
        chain.apply_rules(ctx)
        decision = chain.sender_standing(ctx)
        customer = (ctx.customer.email, ctx.customer.added_by, ctx.customer.verified) if ctx.customer else None
        return decision, customer, ctx.events

    decision, customer, _ = await db.run(step, message(frm=f"Alice <{ALICE.upper()}>"), ALICE)
    assert decision == chain.Decision("create", f"known customer {ALICE}") and customer[0] == ALICE

    decision, customer, _ = await db.run(step, message(frm=BOB), BOB, trust_bob)
    assert decision == chain.Decision("create", f"unknown sender {BOB} trusted by rule")
    assert customer == (BOB, "trusted", False)

    decision, customer, _ = await db.run(step, message(frm=BOB), BOB)
    assert decision is None and customer is None  # for the department's policy to decide

    decision, _, events = await db.run(step, b"Subject: no From\r\n\r\nhi\r\n", ALICE)
    assert decision == chain.Decision("create", f"known customer {ALICE}")
    assert events == [("warning", f"no usable From header; using the envelope sender {ALICE}")]

    decision, _, _ = await db.run(step, b"Subject: no From\r\n\r\nhi\r\n", "")
    assert decision == chain.Decision("hold", "no sender address (no From, null envelope sender): held for review")


async def test_unknown_sender_policy(db):
    def block(session):
        session.add(BlockedSender(address="eve@evil.example"))

    await db.run(block, write=True)

    def step(session, policy, frm=BOB, recipient=SUPPORT, steps=(chain.unknown_sender_policy,)):
        ctx = context(message(frm=frm), sender=frm, recipient=recipient, session=session, policy=policy)
        decision = next(filter(None, (s(ctx) for s in steps)), None)
        return decision, (ctx.customer.email, ctx.customer.added_by) if ctx.customer else None, ctx.events

    def blocked(session, policy, frm):
        return step(session, policy, frm, steps=(chain.blocked_sender, chain.unknown_sender_policy))

    def challenge_steps(session, frm):
        after_policy = chain.CHAIN[chain.CHAIN.index(chain.unknown_sender_policy):]
        return step(session, "challenge", frm, steps=after_policy)

    assert await db.run(step, "accept") == (
        chain.Decision("create", f"unknown sender {BOB} accepted (Support accepts unknown senders)"),
        (BOB, "accepted"), [])
    assert await db.run(step, "reject") == (
        chain.Decision("reject", f"unknown sender {BOB} rejected (Support accepts only known customers)"), None, [])
    assert await db.run(step, "hold") == (
        chain.Decision("hold", f"unknown sender {BOB} held for review (Support holds unknown senders)"), None, [])
    assert await db.run(step, "accept", BOB, "nobody@elsewhere.example") == (
        chain.Decision("hold", f"unknown sender {BOB} held for review (no department holds unknown senders)"),
        None, [])
    # A blocked sender is deleted whatever the policy: its step comes before the policy's.
    assert chain.CHAIN.index(chain.blocked_sender) < chain.CHAIN.index(chain.unknown_sender_policy)
    assert await db.run(step, "hold", BOB, SUPPORT, (chain.blocked_sender,)) == (None, None, [])
    for policy in ("accept", "hold", "challenge"):
        decision, customer, _ = await db.run(blocked, policy, "eve@evil.example")
        assert decision == chain.Decision("delete", "sender eve@evil.example is blocked by an admin (held unblock lifts it); "
                                                    "the raw message is kept until `held purge`")
        assert customer is None
    # Challenge: the policy leaves it to the challenge steps; a robot address is never challenged, and the
    # event log says why.
    assert await db.run(step, "challenge") == (None, None, [])
    decision, _, events = await db.run(challenge_steps, "noreply@shop.example")
    assert decision.action == "hold" and "held without a challenge" in decision.reason
    assert events == [("no-challenge", "noreply@shop.example is an automatic address (MAILER-DAEMON, "
                                       "postmaster, noreply and the like)")]


async def test_decide_takes_the_first_step_that_decides(db):
    def add_alice(session):
        session.add(Customer(email=ALICE))

    await db.run(add_alice, write=True)

    def decide(session, raw, sender=ALICE, rules=(), policy="accept"):
        ctx = context(raw, sender=sender, session=session, rules=rules, policy=policy)
        return chain.decide(ctx), ctx.events

    # A known customer's mail is a ticket...
    decision, _ = await db.run(decide, message())
    assert decision == chain.Decision("create", f"known customer {ALICE}")
    # ...unless a step before decides: a loop (before the rules), a delete rule (before the sender).
    decision, _ = await db.run(decide, message(X_Loop=SUPPORT), ALICE,
                               [rule("all", "subject", "Printer", {"action": "delete"})])
    assert decision.action == "ignore" and "mail loop" in decision.reason
    decision, events = await db.run(decide, message(), ALICE, [rule("all", "subject", "Printer", {"action": "delete"})])
    assert decision.action == "delete" and events[0][0] == "rule"
    # An auto-reply from a known customer answering no ticket is ignored, not a ticket.
    decision, events = await db.run(decide, message(Auto_Submitted="auto-replied"))
    assert decision.action == "ignore" and events == [("auto-reply", "automatic message: Auto-Submitted: auto-replied")]
    # An unknown sender falls through to the department's policy.
    decision, _ = await db.run(decide, message(frm=BOB), BOB)
    assert decision == chain.Decision("create", f"unknown sender {BOB} accepted (Support accepts unknown senders)")


async def test_the_challenge_steps_in_their_order(db):
    """After the policy: authentication, an open challenge to join, a department without an address, the
    caps, then the challenge; each holds the message and leaves its plan for tickets.act to carry out."""
    def add_support(session):
        session.add(Department(id=1, name="Support", unknown_sender="challenge"))

    await db.run(add_support, write=True)
    trusted = "mx.xyzhosting.com"

    def decide(session, settings=None, department=None, auth=None):
        headers = {"Authentication_Results": auth} if auth else {}
        ctx = context(message(frm=BOB, **headers), sender=BOB, session=session, policy="challenge")
        ctx.settings, ctx.department = settings, department or ctx.department
        decision = chain.decide(ctx)
        plan = ctx.challenge
        return decision, (plan.reason, plan.wait, plan.send, plan.capped, plan.authenticated), \
            plan.join.id if plan.join else None, ctx.events

    def planned(reason, wait=False, send=False, capped=False, authenticated=False):
        return reason, wait, send, capped, authenticated

    # Nothing stops it: challenged, from the unauthenticated budget.
    decision, plan, join, events = await db.run(decide)
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held: Support challenges unknown senders")
    assert plan == planned(decision.reason, wait=True, send=True) and join is None
    assert events == [("authentication", "no trusted_authserv_id configured: the sender is not authenticated")]
    # Authenticated by the trusted MTA: challenged, from the authenticated budget.
    decision, plan, _, _ = await db.run(decide, challenges.ChallengeSettings(trusted_authserv_id=trusted),
                                        None, f"{trusted}; dmarc=pass header.from=else.example")
    assert plan == planned(decision.reason, wait=True, send=True, authenticated=True)
    # Failing authentication, or none when that is not enough: held for review, no wait.
    decision, plan, _, events = await db.run(decide, challenges.ChallengeSettings(trusted_authserv_id=trusted),
                                             None, f"{trusted}; dmarc=fail header.from=else.example")
    detail = f"Authentication-Results of {trusted}: dmarc=fail (DMARC fail)"
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held for review, no challenge: {detail}")
    assert plan == planned(decision.reason) and events == [("authentication", detail)]
    decision, plan, _, _ = await db.run(decide, challenges.ChallengeSettings(challenge_unauthenticated=False))
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held for review, no challenge: not "
                                              "authenticated (challenge_unauthenticated = false)")
    assert plan == planned(decision.reason)
    # A department with no address of its own: waits, unchallenged.
    decision, plan, _, _ = await db.run(decide, None, DepartmentInfo(3, "Lost", "challenge"))
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held, no challenge: Lost has no address "
                                              "of its own to send one from")
    assert plan == planned(decision.reason, wait=True)

    # An open challenge of the mailbox: the message waits with it (before the caps are counted).
    now = utcnow().replace(microsecond=0)

    def open_one(session):
        challenge = Challenge(token_hash="0" * 64, sender=BOB, mailbox=BOB, domain="else.example", department_id=1,
                              state="open", created_at=now, expires_at=now + timedelta(days=7), tickets=[],
                              closed_reason="", mail_id="<ticketmail-challenge.1@xyzhosting.com>")
        session.add(challenge)
        session.flush()
        return challenge.id

    opened = await db.run(open_one, write=True)
    decision, plan, join, _ = await db.run(decide, challenges.ChallengeSettings(per_sender_daily=1))
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held: waits for the challenge sent "
                                              f"{now:%Y-%m-%d %H:%M} UTC")
    assert plan == planned(decision.reason, wait=True) and join == opened

    # Closed, it still counts against the mailbox's daily cap: waits for the budget.
    def close(session):
        session.get(Challenge, opened).state = "closed"

    await db.run(close, write=True)
    decision, plan, join, events = await db.run(decide, challenges.ChallengeSettings(per_sender_daily=1))
    capped = "1 challenges to this mailbox in 24 hours (per_sender_daily = 1)"
    assert decision == chain.Decision("hold", f"unknown sender {BOB} held, challenged once the budget allows: "
                                              f"{capped}")
    assert plan == planned(decision.reason, wait=True, capped=True) and join is None
    assert events[-1] == ("challenge-capped", f"no challenge sent yet: {capped}")
