"""Releasing held mail: the sender becomes a customer and the message a ticket."""

from __future__ import annotations

from ingest import chain, directory, tickets
from ingest.parse import parse_message
from storage import store
from storage.models import Customer, Message


class ReleaseError(ValueError):
    pass


def stored_context(session, message: Message, *, ticket_prefix: str, snapshot: directory.Directory | None = None,
                   settings=None) -> chain.Context:
    """The chain's Context of a stored message as the pipeline saw it, to act on it later."""
    snapshot = snapshot or directory.load(session)
    return chain.Context(
        session=session,
        directory=snapshot,
        parsed=parse_message(message.raw),
        sender=message.envelope_sender,
        recipient=message.envelope_recipient,
        source=message.source,
        account="",
        ticket_prefix=ticket_prefix,
        department=next((d for d in snapshot.departments.values() if d.id == message.department_id), None),
        settings=settings,
    )


def release(session, message: Message, *, ticket_prefix: str, by: str) -> int:
    """Turn a held message into a ticket for its sender (created if new); returns the ticket number."""
    if message.status != "held":
        raise ReleaseError(f"message {message.id} is not held (it is {message.status})")
    ctx = stored_context(session, message, ticket_prefix=ticket_prefix)
    parsed = ctx.parsed
    address = ctx.sender_address
    if not address:
        raise ReleaseError(f"message {message.id} has no sender address to make a customer of")
    ctx.customer = store.customer_by_email(session, address) or Customer(
        email=address, name=parsed.from_name, verified=False, added_by="released"
    )
    tickets.act(ctx, message, chain.Decision("create", f"released by {by}"))
    session.flush()
    return message.ticket_id
