"""Releasing held mail: the sender becomes a customer and the message a ticket, with what the rules
decided when it arrived."""

from __future__ import annotations

from ingest import chain, directory, tickets
from ingest.parse import ParsedMessage, parse_message
from ingest.rules import Verdict
from storage import store
from storage.models import Message


class ReleaseError(ValueError):
    pass


def stored_fields(message: Message) -> ParsedMessage:
    """What parsing found when the message arrived, as stored (no headers: what acting on it needs)."""
    return ParsedMessage(message_id=message.message_id, from_addr=message.from_addr, from_name=message.from_name,
                         to=list(message.to_addrs), cc=list(message.cc_addrs), subject=message.subject,
                         date=message.date, text=message.text, html=message.html)


def stored_context(session, message: Message, *, ticket_prefix: str, snapshot: directory.Directory | None = None,
                   settings=None, parsed: ParsedMessage | None = None) -> chain.Context:
    """The chain's Context of a stored message as the pipeline saw it, to act on it later: its rules
    verdict, and `parsed` (by default the raw message parsed again, headers and all)."""
    snapshot = snapshot or directory.load(session)
    return chain.Context(
        session=session,
        directory=snapshot,
        parsed=parsed or parse_message(message.raw),
        sender=message.envelope_sender,
        recipient=message.envelope_recipient,
        source=message.source,
        account="",
        ticket_prefix=ticket_prefix,
        department=next((d for d in snapshot.departments.values() if d.id == message.department_id), None),
        settings=settings,
        verdict=Verdict(**message.verdict) if message.verdict else None,
    )


def release(session, message: Message, *, ticket_prefix: str, by: str,
            snapshot: directory.Directory | None = None) -> int:
    """Turn a held message into a ticket for its sender (created if new), with the priority and tags its
    rules gave it; returns the ticket number. `snapshot`: the directory, when releasing several."""
    if message.status != "held":
        raise ReleaseError(f"message {message.id} is not held (it is {message.status})")
    ctx = stored_context(session, message, ticket_prefix=ticket_prefix, snapshot=snapshot,
                         parsed=stored_fields(message))
    address = ctx.sender_address
    if not address:
        raise ReleaseError(f"message {message.id} has no sender address to make a customer of")
    ctx.customer = store.customer_by_email(session, address) or store.customer_from_mail(
        address, message.from_name, verified=False, added_by="released")
    tickets.act(ctx, message, chain.Decision("create", f"released by {by}"))
    session.flush()
    return message.ticket_id
