"""Confirming a challenge: one transaction marks the token used, makes the sender a verified customer
and releases the sender's waiting mail as tickets, oldest first.

The token is looked up by its hash. Single use holds even when two confirmations race, in one process
or several: `challenge_store.claim` is a conditional UPDATE, and only the transaction whose UPDATE took
the row releases anything; the other sees the challenge confirmed and answers with its tickets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from ingest import directory
from ingest.challenges import token_hash
from ingest.release import release
from storage import challenge_store, store
from storage.models import Challenge, Customer, Department, utcnow

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")  # secrets.token_urlsafe(32) is 43 of these


class ChallengeNotFound(LookupError):
    """No challenge has this token (or there is nothing to show for it yet)."""


class ChallengeGone(Exception):
    """The challenge exists but its link no longer works."""

    def __init__(self, why: str):  # expired | used | closed
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class Pending:
    """What the confirmation page shows before anything happens."""

    sender: str
    department: str
    waiting: int  # held messages that the confirmation releases
    expires_at: datetime


def _find(session, token: str) -> Challenge:
    challenge = challenge_store.challenge_by_hash(session, token_hash(token)) if _TOKEN.fullmatch(token) else None
    if challenge is None:
        raise ChallengeNotFound(token)
    return challenge


def _state(challenge: Challenge, now: datetime) -> str:
    """The state as of `now`: an open challenge past its expiry is expired, swept or not."""
    if challenge.state == "open" and challenge.expires_at <= now:
        return "expired"
    return challenge.state


def _gone(state: str) -> ChallengeGone:
    return ChallengeGone({"confirmed": "used"}.get(state, state))


def pending(session, token: str) -> Pending:
    """The open challenge of `token`, for the page that asks to confirm it; changes nothing."""
    challenge = _find(session, token)
    state = _state(challenge, utcnow())
    if state != "open":
        raise _gone(state)
    department = session.get(Department, challenge.department_id)
    return Pending(challenge.sender, department.name if department else "",
                   challenge_store.waiting_count(session, mailbox=challenge.mailbox), challenge.expires_at)


def confirm(session, token: str, *, ticket_prefix: str) -> list[int]:
    """Confirm the challenge of `token` and release the waiting mail of its mailbox (`victim+1@` and
    `victim@` alike: whoever reads the one reads the other); returns the ticket numbers.

    Confirming again returns the first confirmation's tickets and releases nothing."""
    now = utcnow()
    if not _TOKEN.fullmatch(token) or not challenge_store.claim(session, token_hash(token), now):
        challenge = _find(session, token)
        if challenge.state == "confirmed":
            return list(challenge.tickets)
        raise _gone(_state(challenge, now))
    challenge = _find(session, token)
    messages = challenge_store.waiting_messages(session, challenge.mailbox)
    verify(session, challenge.sender, messages[0].from_name if messages else "")
    snapshot = directory.load(session)
    numbers = [release(session, m, ticket_prefix=ticket_prefix, by=f"{challenge.sender} confirming the challenge",
                       snapshot=snapshot) for m in messages]
    challenge.tickets = numbers
    challenge_store.drop_waits(session, [m.id for m in messages])
    return numbers


def verify(session, address: str, name: str) -> Customer:
    """Make `address` a verified customer: it answered a challenge sent to it."""
    customer = store.customer_by_email(session, address)
    if customer is None:
        customer = store.customer_from_mail(address, name, verified=True, added_by="challenge")
        session.add(customer)
    else:
        customer.verified = True
    return customer


def outcome(session, token: str) -> list[int]:
    """The tickets a confirmed challenge released, while its link would still have worked."""
    challenge = _find(session, token)
    if challenge.state != "confirmed":
        state = _state(challenge, utcnow())
        if state == "open":
            raise ChallengeNotFound(token)  # nothing confirmed yet: nothing to show
        raise _gone(state)
    if challenge.expires_at <= utcnow():
        raise ChallengeGone("used")
    return list(challenge.tickets)


def release_stragglers(session, *, ticket_prefix: str) -> int:
    """Release waiting mail of senders who are verified customers by now, and close their challenges.

    On PostgreSQL a message can be held while, in another process, its sender's confirmation commits;
    this (run by the sweeper) releases it soon after."""
    found = challenge_store.stragglers(session)
    snapshot = directory.load(session) if found else None
    for message, sender in found:
        release(session, message, ticket_prefix=ticket_prefix, by=f"the sweeper: {sender} is a verified customer",
                snapshot=snapshot)
    challenge_store.drop_waits(session, [m.id for m, _ in found])
    challenge_store.close_for_customers(session, utcnow())
    return len(found)
