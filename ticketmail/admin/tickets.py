"""Tickets and the messages on them, as an admin reads them; a ticket's status, priority and tags."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.rules import PRIORITIES
from storage import store, ticket_search
from storage.models import Attachment, Message, Ticket
from storage.ticket_search import Filters, Key
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError

STATUSES = ("open", "closed")
PAGE = 50
MAX_TAGS, MAX_TAG = 20, 64

__all__ = ["Filters", "Key", "STATUSES", "PRIORITIES", "TicketRow", "TicketView", "Page", "list_all", "page",
           "show", "attachment", "parse_tags", "set_status", "set_priority", "set_tags"]


@dataclass(frozen=True)
class TicketRow:
    ticket: Ticket
    department: str | None  # its name
    customer: str | None  # their address
    messages: int  # how many


@dataclass(frozen=True)
class TicketView:
    row: TicketRow
    messages: list[Message]  # oldest first, with their attachments and events


@dataclass(frozen=True)
class Page:
    rows: list[TicketRow]
    next: Key | None  # the key of the page after this one; None on the last page


async def list_all(db) -> list[TicketRow]:
    """Every ticket, newest first."""
    return [TicketRow(*row) for row in await db.run(store.tickets)]


def _check_filters(filters: Filters) -> None:
    if filters.status and filters.status not in STATUSES:
        raise AdminError(f"unknown status {filters.status!r} (expected {' or '.join(STATUSES)})", field="status")
    for name in ("department", "customer", "tag", "text"):
        if len(getattr(filters, name)) > 320:
            raise AdminError(f"{name}: at most 320 characters", field=name)


async def page(db, filters: Filters = Filters(), *, before: Key | None = None, limit: int = PAGE) -> Page:
    """A page of tickets matching `filters`, newest first, after the page whose last key is `before`."""
    _check_filters(filters)
    rows = await db.run(lambda s: ticket_search.tickets_page(s, filters, limit=limit + 1, before=before))
    shown = [TicketRow(*row) for row in rows[:limit]]
    last = shown[-1].ticket if shown else None
    return Page(shown, (last.updated_at, last.id) if len(rows) > limit else None)


async def show(db, number: int) -> TicketView:
    def collect(s):
        row = store.ticket_row(s, number)
        if row is None:
            raise AdminError(f"no ticket #{number}")
        return TicketView(TicketRow(*row), store.ticket_messages(s, number))

    return await db.run(collect)


async def attachment(db, number: int, attachment_id: int) -> Attachment:
    """An attachment of a message on ticket `number`, with its content."""
    found = await db.run(ticket_search.ticket_attachment, number, attachment_id)
    if found is None:
        raise AdminError(f"ticket #{number} has no attachment {attachment_id}")
    return found


def _ticket(s, number: int) -> Ticket:
    ticket = store.ticket(s, number)
    if ticket is None:
        raise AdminError(f"no ticket #{number}")
    return ticket


async def _change(db, number: int, field: str, value, by: str, shown=str):
    """Set one field of ticket `number`; returns the value before. A change (nothing else) is an update of
    the ticket, which the lists order by, and an entry in the audit log."""

    def change(s):
        ticket = _ticket(s, number)
        was = getattr(ticket, field)
        if was != value:
            setattr(ticket, field, value)
            store.touch(ticket)
            audit.record(s, by, f"ticket.{field}", f"#{number}", f"{shown(was)} -> {shown(value)}")
        return was

    return await db.run(change, write=True)


async def set_status(db, number: int, status: str, *, by: str) -> str:
    """Open or close the ticket; returns its status before."""
    if status not in STATUSES:
        raise AdminError(f"unknown status {status!r} (expected {' or '.join(STATUSES)})", field="status")
    return await _change(db, number, "status", status, by)


async def set_priority(db, number: int, priority: str, *, by: str) -> str:
    """Set the priority (one of PRIORITIES, as rules set it); returns the one before."""
    if priority not in PRIORITIES:
        raise AdminError(f"unknown priority {priority!r} (expected one of {', '.join(PRIORITIES)})",
                         field="priority")
    return await _change(db, number, "priority", priority, by)


def parse_tags(value: str) -> list[str]:
    """Tags written as "vip, billing": each once, in the order given."""
    tags = list(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if len(tags) > MAX_TAGS:
        raise AdminError(f"at most {MAX_TAGS} tags", field="tags")
    for tag in tags:
        if len(tag) > MAX_TAG or not tag.isprintable():
            raise AdminError(f"a tag is at most {MAX_TAG} printable characters: {tag[:MAX_TAG]!r}", field="tags")
    return tags


async def set_tags(db, number: int, tags: list[str], *, by: str) -> list[str]:
    """Replace the ticket's tags; returns the ones before."""
    return list(await _change(db, number, "tags", parse_tags(",".join(tags)), by, shown=tags_text))


def tags_text(tags: list[str]) -> str:
    """Tags as the audit log and the CLI write them: "vip, billing", or "(none)"."""
    return ", ".join(tags) or "(none)"
