"""The queries and writes of challenge-response: plain functions of a synchronous Session (as store.py).

Single use and "one open challenge per mailbox" are enforced by the database (a conditional UPDATE, a
partial unique index), so they hold across processes sharing PostgreSQL, not only within one. A mailbox
is an address as the caps count it (ingest.challenges.mailbox: no case, no sub-address tag).

The pipeline's lookups run without autoflush: a flush per message would write each of a group's
messages on its own instead of in one batch (see store.prefetch_customers). Challenges opened earlier
in the same group, not yet flushed, are found in the session itself (`_unflushed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, inspect, select, update

from storage import store
from storage.models import BlockedSender, Challenge, ChallengeWait, Customer, Message, Outbox, utcnow


# --- blocked senders ---


def is_blocked(session, address: str) -> bool:
    """Whether `address` is blocked. The list (admins' blocks: short) is read once per transaction, so a
    group of deliveries costs one query, not one per unknown sender."""
    if not address:
        return False
    blocked = session.info.get("blocked_senders")
    if blocked is None:
        with session.no_autoflush:  # the pipeline never writes this table
            blocked = session.info["blocked_senders"] = set(session.scalars(select(BlockedSender.address)))
    return address.lower() in blocked


def block(session, address: str, reason: str) -> bool:
    """Block `address`; False if it already was."""
    if is_blocked(session, address):
        return False
    session.add(BlockedSender(address=address.lower(), reason=store.clean(reason)))
    session.info.pop("blocked_senders", None)
    return True


def unblock(session, address: str) -> bool:
    result = session.execute(delete(BlockedSender).where(BlockedSender.address == address.lower()))
    session.info.pop("blocked_senders", None)
    return result.rowcount > 0


# --- challenges ---


def _unflushed(session) -> list[Challenge]:
    """Challenges added to this session and not written yet (gone again if their savepoint rolled back)."""
    return [c for c in session.info.get("new_challenges", []) if inspect(c).pending]


def add_challenge(session, challenge: Challenge, outbox: Outbox) -> None:
    session.add_all([challenge, outbox])
    session.info.setdefault("new_challenges", []).append(challenge)


def open_challenge(session, mailbox: str, now: datetime) -> Challenge | None:
    """The mailbox's challenge whose link still works, if any."""
    with session.no_autoflush:
        found = session.scalar(
            select(Challenge).where(Challenge.mailbox == mailbox, Challenge.state == "open",
                                    Challenge.expires_at > now)
        )
    return found or next((c for c in _unflushed(session) if c.mailbox == mailbox and c.state == "open"), None)


def challenged_since(session, mailbox: str, since: datetime) -> bool:
    """Whether the mailbox got a challenge at or after `since` (whatever became of it)."""
    return session.scalar(
        select(func.count()).select_from(Challenge).where(Challenge.mailbox == mailbox, Challenge.created_at >= since)
    ) > 0


def expire_stale(session, mailbox: str, now: datetime) -> None:
    """Mark the mailbox's run-out challenge expired, so that a new one may be opened."""
    with session.no_autoflush:
        session.execute(
            update(Challenge)
            .where(Challenge.mailbox == mailbox, Challenge.state == "open", Challenge.expires_at <= now)
            .values(state="expired")
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class RecentChallenges:
    sender_day: int  # to this mailbox in the last 24 hours
    domain_hour: int  # to this (registrable) domain in the last hour
    total_hour: int  # to anyone in the last hour
    unauthenticated_hour: int = 0  # to senders the trusted MTA did not authenticate, in the last hour


def recent_challenges(session, mailbox: str, domain: str, now: datetime) -> RecentChallenges:
    hour, day = now - timedelta(hours=1), now - timedelta(days=1)
    query = select(
        func.count().filter(Challenge.mailbox == mailbox),
        func.count().filter(Challenge.domain == domain, Challenge.created_at > hour),
        func.count().filter(Challenge.created_at > hour),
        func.count().filter(Challenge.authenticated.is_(False), Challenge.created_at > hour),
    ).where(Challenge.created_at > day)
    with session.no_autoflush:
        stored = session.execute(query).one()
    new = _unflushed(session)
    return RecentChallenges(
        sender_day=stored[0] + sum(c.mailbox == mailbox for c in new),
        domain_hour=stored[1] + sum(c.domain == domain for c in new),
        total_hour=stored[2] + len(new),
        unauthenticated_hour=stored[3] + sum(not c.authenticated for c in new),
    )


# Drains of capped mail in several processes take turns on this PostgreSQL advisory lock.
_DRAIN_LOCK = 0x7469636B  # "tick"


def lock_budget(session) -> None:
    """Hold the challenge budget until this transaction ends, so that two processes' drains do not both
    spend the same room (SQLite's writers take turns anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_DRAIN_LOCK)))


def challenge_by_hash(session, token_hash: str) -> Challenge | None:
    return session.scalar(select(Challenge).where(Challenge.token_hash == token_hash))


def claim(session, token_hash: str, now: datetime) -> bool:
    """Mark the open, unexpired challenge confirmed; True only for the one caller whose UPDATE took it.

    Two confirmations racing both run this UPDATE: the database serialises them on the row, and the
    second finds the state no longer 'open'."""
    result = session.execute(
        update(Challenge)
        .where(Challenge.token_hash == token_hash, Challenge.state == "open", Challenge.expires_at > now)
        .values(state="confirmed", used_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def close_open(session, sender: str, reason: str, now: datetime) -> bool:
    """Close the sender's open challenge (its link stops working); False if there was none."""
    result = session.execute(
        update(Challenge)
        .where(Challenge.sender == sender, Challenge.state == "open")
        .values(state="closed", used_at=now, closed_reason=store.clean(reason))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount > 0


def expire_challenges(session, now: datetime) -> int:
    """Every open challenge past its expiry becomes expired; returns how many."""
    result = session.execute(
        update(Challenge)
        .where(Challenge.state == "open", Challenge.expires_at <= now)
        .values(state="expired")
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


# --- held mail waiting for a confirmation ---


def add_wait(session, message: Message, sender: str, mailbox: str, challenge: Challenge | None, *,
             authenticated: bool, capped: bool) -> None:
    session.add(ChallengeWait(message=message, sender=sender, mailbox=mailbox, challenge=challenge,
                              authenticated=authenticated, capped=capped))


def waiting_messages(session, mailbox: str) -> list[Message]:
    """The mailbox's held mail waiting for a confirmation (from any spelling of it), in arrival order."""
    rows = session.scalars(
        select(Message)
        .join(ChallengeWait, ChallengeWait.message_id == Message.id)
        .where(ChallengeWait.mailbox == mailbox, Message.status == "held")
        .order_by(Message.received_at, Message.id)
    )
    return list(rows)


def capped_waits(session, limit: int) -> list[tuple[ChallengeWait, datetime]]:
    """Held mail a cap kept from being challenged, with its arrival: authenticated senders first, then
    oldest first."""
    rows = session.execute(
        select(ChallengeWait, Message.received_at)
        .join(Message, ChallengeWait.message_id == Message.id)
        .where(ChallengeWait.capped.is_(True), Message.status == "held")
        .order_by(ChallengeWait.authenticated.desc(), Message.received_at, Message.id)
        .limit(limit)
    )
    return [tuple(r) for r in rows]


def waiting_count(session, *, mailbox: str = "", sender: str = "") -> int:
    """How many held messages wait for a confirmation: of a mailbox (what confirming it would release),
    or of exactly one address."""
    which = ChallengeWait.mailbox == mailbox if mailbox else ChallengeWait.sender == sender
    return session.scalar(
        select(func.count(Message.id))
        .join(ChallengeWait, ChallengeWait.message_id == Message.id)
        .where(which, Message.status == "held")
    ) or 0


def drop_waits(session, message_ids: list[int]) -> None:
    if message_ids:
        session.execute(delete(ChallengeWait).where(ChallengeWait.message_id.in_(message_ids)))


def stragglers(session) -> list[tuple[Message, str]]:
    """Held mail still waiting although its sender is a verified customer now, with the sender: it
    arrived while a confirmation committed in another process, or an admin added the customer."""
    rows = session.execute(
        select(Message, ChallengeWait.sender)
        .join(ChallengeWait, ChallengeWait.message_id == Message.id)
        .join(Customer, Customer.email == ChallengeWait.sender)
        .where(Customer.verified.is_(True), Message.status == "held")
        .order_by(Message.received_at, Message.id)
    )
    return [tuple(r) for r in rows]


def close_for_customers(session, now: datetime) -> int:
    """Close the open challenges of senders who are verified customers: there is nothing to confirm."""
    result = session.execute(
        update(Challenge)
        .where(Challenge.state == "open",
               Challenge.sender.in_(select(Customer.email).where(Customer.verified.is_(True))))
        .values(state="closed", used_at=now, closed_reason="the sender is a verified customer")
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def overdue_waits(session, before: datetime) -> list[Message]:
    """Held mail still waiting for a confirmation that arrived before `before`."""
    rows = session.scalars(
        select(Message)
        .join(ChallengeWait, ChallengeWait.message_id == Message.id)
        .where(Message.status == "held", Message.received_at < before)
        .order_by(Message.id)
    )
    return list(rows)


# --- the outbox ---


@dataclass(frozen=True)
class Mail:
    """An outbox row as the sender needs it, detached from the session."""

    id: int
    mail_from: str
    rcpt_to: str
    content: bytes
    attempts: int
    expires_at: datetime
    held_message_id: int | None


def claim_due(session, now: datetime, lease_until: datetime, limit: int = 20) -> list[Mail]:
    """Take up to `limit` due mails for sending until `lease_until` (another process skips them).

    Mail of a challenge that ended meanwhile (closed by an admin, expired) is left for the sweeper to
    give up: its link would not work."""
    ended = select(Challenge.id).where(Challenge.state != "open")
    rows = session.scalars(
        select(Outbox)
        .where(Outbox.state == "pending", Outbox.next_attempt_at <= now, Outbox.expires_at > now,
               Outbox.challenge_id.is_(None) | Outbox.challenge_id.not_in(ended))
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    mails = []
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = lease_until
        mails.append(Mail(row.id, row.mail_from, row.rcpt_to, row.content, row.attempts,
                          row.expires_at, row.held_message_id))
    return mails


def mark_sent(session, mail: Mail, now: datetime, detail: str) -> None:
    """Sent: forget the content (it carries the token) and log it on the held message."""
    session.execute(
        update(Outbox).where(Outbox.id == mail.id)
        .values(state="sent", sent_at=now, content=b"", last_error="")
        .execution_options(synchronize_session=False)
    )
    _log(session, mail, "challenge-sent", detail)


def mark_failed(session, mail: Mail, error: str, retry_at: datetime | None) -> None:
    """A failed attempt: try again at `retry_at`, or give up (None)."""
    values = {"last_error": store.clean(error)[:2000], "next_attempt_at": retry_at or utcnow()}
    if retry_at is None:
        values |= {"state": "failed", "content": b""}
        _log(session, mail, "challenge-failed", f"challenge mail to {mail.rcpt_to} not sent, given up: {error}")
    session.execute(update(Outbox).where(Outbox.id == mail.id).values(**values)
                    .execution_options(synchronize_session=False))


def abandon_unsent(session, now: datetime) -> int:
    """Give up mail that could not be sent before its link expired, or whose challenge is no longer open."""
    closed = select(Challenge.id).where(Challenge.state != "open")
    rows = session.scalars(
        select(Outbox).where(
            Outbox.state == "pending", (Outbox.expires_at <= now) | Outbox.challenge_id.in_(closed)
        )
    ).all()
    for row in rows:
        row.state, row.content = "failed", b""
        row.last_error = row.last_error or "the challenge ended before the mail could be sent"
        mail = Mail(row.id, row.mail_from, row.rcpt_to, b"", row.attempts, row.expires_at,
                    row.held_message_id)
        _log(session, mail, "challenge-failed",
             f"challenge mail to {row.rcpt_to} not sent: {row.last_error}; given up")
    return len(rows)


def _log(session, mail: Mail, kind: str, detail: str) -> None:
    if mail.held_message_id is not None:
        message = session.get(Message, mail.held_message_id)
        if message is not None:
            store.add_event(session, message, kind, detail)


def challenge_waits(session, message_ids: list[int]) -> dict[int, tuple]:
    """For held messages waiting for a confirmation: (the wait, its challenge or None, the challenge mail's
    state, sent_at and last_error or None) by message id. A message without a wait was held without a
    challenge. The mail's content is not read: until sent, it carries the token."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(ChallengeWait, Challenge, Outbox.state, Outbox.sent_at, Outbox.last_error)
        .outerjoin(Challenge, Challenge.id == ChallengeWait.challenge_id)
        .outerjoin(Outbox, Outbox.challenge_id == Challenge.id)
        .where(ChallengeWait.message_id.in_(message_ids))
        .order_by(Outbox.id)
    )
    return {wait.message_id: (wait, challenge, tuple(mail) if mail[0] else None)
            for wait, challenge, *mail in rows}
