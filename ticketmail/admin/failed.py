"""Mail whose processing failed: the writer stored it byte-exact as `failed`, with the error in its event log
(ingest/writer.py), instead of answering 451 for ever. Once the cause is fixed, `retry` runs it through the
same decisions and actions as a delivery (ingest/chain.py, ingest/tickets.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from ingest import chain, directory, tickets
from ingest.delivery import Delivery
from ingest.parse import parse_message
from ingest.writer import failure
from storage import store
from storage.models import Message
from ticketmail.admin import audit, held
from ticketmail.admin.errors import AdminError


@dataclass(frozen=True)
class Failed:
    message: Message
    department: str  # its name, "" for none
    error: str  # the last failure's event detail


@dataclass(frozen=True)
class Retried:
    status: str  # what the message is now: ticket, followup, held, ... or failed again
    ticket: int | None
    reason: str  # the decision's reason, or the new error


async def page(db, *, limit: int = 100, before: int | None = None) -> list[Failed]:
    """Failed messages, newest first, each with its last error."""

    def read(s):
        messages, names = store.messages_page(s, ("failed",), limit=limit, before=before), held.department_names(s)
        return [Failed(m, names.get(m.department_id, ""),
                       next((e.detail for e in reversed(m.events) if e.kind == "failed"), "")) for m in messages]

    return await db.run(read)


def _context(session, message: Message, *, ticket_prefix: str, settings) -> chain.Context:
    """The chain's Context as the writer built it for the delivery: the stored message delivered again."""
    snapshot = directory.load(session)
    department = next((d.name for d in snapshot.departments.values() if d.id == message.department_id), None)
    account = message.source.removeprefix("imap:") if message.source.startswith("imap:") else ""
    again = Delivery(message.raw, message.envelope_sender, message.envelope_recipient, source=message.source,
                     department=department, account=account)
    return chain.delivery_context(session, snapshot, again, parse_message(message.raw), ticket_prefix=ticket_prefix,
                                  settings=settings)


async def retry(db, message_id: int, *, ticket_prefix: str, settings=None, by: str) -> Retried:
    """Decide and act on a failed message again. If it raises again, the message stays failed with the new
    error in its event log (and the audit entry says so). `settings`: the [challenge] settings
    (ingest.challenges.ChallengeSettings), for a challenge the decision may send; None: the defaults."""

    def retry_one(s):
        message = store.message(s, message_id)
        if message is None:
            raise AdminError(f"no message {message_id}")
        if message.status != "failed":
            raise AdminError(f"message {message_id} has not failed (it is {message.status})")
        subject = f"message {message_id}"
        try:
            with s.begin_nested():
                ctx = _context(s, message, ticket_prefix=ticket_prefix, settings=settings)
                decision = chain.decide(ctx)
                ctx.note("retried", f"processed again by {by}")
                tickets.act(ctx, message, decision)
                s.flush()
        except DBAPIError as e:  # the database, not the message: nothing is recorded
            raise AdminError(f"the database refused the retry of message {message_id}: {failure(e)}") from None
        except Exception as e:
            what = failure(e)
            store.add_event(s, message, "failed", f"retry by {by} failed: {what}")
            audit.record(s, by, "failed.retry", subject, f"failed again: {what}")
            return Retried("failed", None, what)
        audit.record(s, by, "failed.retry", subject,
                     f"now {message.status}" + (f", ticket #{message.ticket_id}" if message.ticket_id else ""))
        return Retried(message.status, message.ticket_id, decision.reason)

    return await db.run(retry_one, write=True)
