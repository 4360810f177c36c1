"""Held mail: release it as a ticket, discard it (and perhaps block its sender), purge old held, deleted and
rejected mail; and the listings of the panel's held and rejected pages.

Releasing or discarding also settles the sender's challenge, so the link they were sent stops working.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ingest import chain
from ingest import release as releasing
from storage import challenge_store, store
from storage.models import Message, utcnow
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError


@dataclass(frozen=True)
class Released:
    ticket: int  # its number
    sender: str
    challenge_closed: bool  # the sender's pending challenge was closed
    still_held: int  # more held messages from the sender


@dataclass(frozen=True)
class Discarded:
    sender: str
    blocked: bool
    still_held: int  # more held messages from the sender (counted when blocked)


def _sender(message: Message) -> str:
    """Whom a stored message is from, as the pipeline saw it (From, else the envelope sender)."""
    return chain.sender_address(message, message.envelope_sender)


def _held(session, message_id: int) -> Message:
    message = store.message(session, message_id)
    if message is None:
        raise AdminError(f"no message {message_id}")
    if message.status != "held":
        raise AdminError(f"message {message_id} is not held (it is {message.status})")
    return message


def _still_held(session, sender: str) -> int:
    return challenge_store.waiting_count(session, sender=sender) if sender else 0


async def list_all(db) -> list[Message]:
    """Held messages, oldest first, with their events (the last says why it is held)."""
    return await db.run(store.held_messages)


@dataclass(frozen=True)
class Listed:
    """A held, rejected or deleted message as the panel lists it."""

    message: Message
    department: str  # its name, "" for none
    reason: str  # why it is where it is: its deciding event
    rules: list[str]  # the processing rules it matched
    challenge: str = ""  # held: its sender's challenge, in one word (sent, queued, capped, suppressed, ...)
    challenge_detail: str = ""  # ... and in a sentence


def department_names(session) -> dict[int, str]:
    return {d.id: d.name for d in store.departments(session)}


def _reason(message: Message, kind: str) -> str:
    """The detail of the message's last `kind` event (what decided it), else of its last event."""
    events = [e for e in message.events if e.kind == kind] or message.events
    return events[-1].detail if events else ""


def _rules(message: Message) -> list[str]:
    return [e.detail for e in message.events if e.kind == "rule"]


def challenge_state(message: Message, wait, challenge, mail, now) -> tuple[str, str]:
    """A held message's challenge in one word and a sentence, from its wait (None: it waits for none), the
    challenge it joined and that challenge's mail (state, sent_at, last_error)."""
    def last(kind: str) -> str:
        return next((e.detail for e in reversed(message.events) if e.kind == kind), "")

    if wait is None:
        why = last("no-challenge")
        return ("suppressed", f"no challenge: {why}") if why else ("none", "no challenge: held for review")
    if challenge is None:
        if wait.capped:
            return "capped", last("challenge-capped") or "no challenge sent yet: a rate cap was reached"
        return "none", last("challenge-failed") or "waits without a challenge: no address to send one from"
    expires = f"{challenge.expires_at:%Y-%m-%d %H:%M} UTC"
    if challenge.state == "open" and challenge.expires_at <= now or challenge.state == "expired":
        return "expired", f"challenge of {challenge.created_at:%Y-%m-%d %H:%M} UTC expired {expires} unanswered"
    if challenge.state == "closed":
        return "closed", f"challenge closed: {challenge.closed_reason}"
    if challenge.state == "confirmed":
        return "confirmed", f"confirmed {challenge.used_at:%Y-%m-%d %H:%M} UTC"
    state, sent_at, error = mail or ("pending", None, "")
    if state == "sent":
        return "sent", (f"challenge sent {sent_at:%Y-%m-%d %H:%M} UTC to {challenge.sender}; "
                        f"the link works until {expires}")
    if state == "failed":
        return "failed", f"the challenge mail to {challenge.sender} could not be sent: {error}"
    retry = f" (last attempt: {error})" if error else ""
    return "queued", (f"challenge to {challenge.sender} queued {challenge.created_at:%Y-%m-%d %H:%M} UTC, "
                      f"not sent yet{retry}; the link works until {expires}")


async def held_page(db, *, limit: int = 100, before: int | None = None) -> list[Listed]:
    """Held messages, newest first, with the reason and their sender's challenge state."""

    def read(s):
        messages = store.messages_page(s, ("held",), limit=limit, before=before)
        waits, now, names = challenge_store.challenge_waits(s, [m.id for m in messages]), utcnow(), department_names(s)
        return [Listed(m, names.get(m.department_id, ""), _reason(m, "held"), _rules(m),
                       *challenge_state(m, *waits.get(m.id, (None, None, None)), now)) for m in messages]

    return await db.run(read)


async def rejected_page(db, *, limit: int = 100, before: int | None = None) -> list[Listed]:
    """Rejected and deleted messages (by rule, blocked sender or admin), newest first, with the reason."""

    def read(s):
        messages = store.messages_page(s, ("rejected", "deleted"), limit=limit, before=before)
        names = department_names(s)
        return [Listed(m, names.get(m.department_id, ""), _reason(m, "reject" if m.status == "rejected" else "delete"),
                       _rules(m)) for m in messages]

    return await db.run(read)


async def release(db, message_id: int, *, ticket_prefix: str, by: str) -> Released:
    """Make a held message a ticket; its sender is a customer now, so their pending challenge is closed."""

    def release_one(s):
        message = _held(s, message_id)
        try:
            number = releasing.release(s, message, ticket_prefix=ticket_prefix, by="admin (ticketmail held release)")
        except releasing.ReleaseError as e:
            raise AdminError(str(e)) from None
        challenge_store.drop_waits(s, [message.id])
        sender = _sender(message)
        closed = challenge_store.close_open(s, sender, "released by admin (held release)", utcnow())
        audit.record(s, by, "held.release", f"message {message_id}", f"ticket #{number}, from {sender}")
        return Released(number, sender, closed, _still_held(s, sender))

    return await db.run(release_one, write=True)


async def discard(db, message_id: int, *, block: bool = False, by: str) -> Discarded:
    """Drop a held message (its raw bytes stay until `purge`); `block` deletes its sender's mail from now on."""

    def discard_one(s):
        message = _held(s, message_id)
        sender = _sender(message)
        if block and not sender:
            raise AdminError(f"message {message_id} has no sender address to block")
        message.status = "deleted"
        store.add_event(s, message, "discarded", "discarded by admin (ticketmail held discard); the raw message "
                                                 "is kept until `held purge`")
        challenge_store.drop_waits(s, [message.id])
        audit.record(s, by, "held.discard", f"message {message_id}", f"from {sender}" + (", sender blocked" if block else ""))
        if not block:
            return Discarded(sender, blocked=False, still_held=0)
        challenge_store.block(s, sender, f"ticketmail held discard {message_id} --block")
        challenge_store.close_open(s, sender, "sender blocked by admin", utcnow())
        store.add_event(s, message, "blocked", f"sender {sender} blocked: their mail is deleted on arrival")
        return Discarded(sender, blocked=True, still_held=_still_held(s, sender))

    return await db.run(discard_one, write=True)


async def unblock(db, address: str, *, by: str) -> str:
    """Accept mail from a blocked sender again; returns the address as stored."""

    def unblock_one(s):
        if not challenge_store.unblock(s, address):
            raise AdminError(f"{address} is not blocked")
        audit.record(s, by, "sender.unblock", address.lower())

    await db.run(unblock_one, write=True)
    return address.lower()


PURGED = ("held", "deleted", "rejected")  # what `purge` empties once old enough


async def purgeable(db, days: int) -> int:
    """How many messages `purge(db, days)` would empty now."""
    if days < 0:
        raise AdminError("--days must be 0 or more", field="days")
    return await db.run(store.count_received_before, PURGED, utcnow() - timedelta(days=days))


async def purge(db, days: int, *, by: str) -> int:
    """Empty held, deleted and rejected mail older than `days` (their event log stays); returns how many."""
    if days < 0:
        raise AdminError("--days must be 0 or more", field="days")

    def purge_old(s):
        expired = store.expired_messages(s, PURGED, utcnow() - timedelta(days=days))
        for m in expired:
            was = m.status
            m.status, m.raw, m.text, m.html, m.attachments = "purged", b"", "", "", []
            store.add_event(s, m, "purged", f"{was} message purged after {days} days; the log entry remains")
        audit.record(s, by, "held.purge", f"{len(expired)} messages", f"held, deleted or rejected over {days} days")
        return len(expired)

    return await db.run(purge_old, write=True)
