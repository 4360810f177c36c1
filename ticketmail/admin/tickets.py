"""Tickets and the messages on them, as an admin reads them."""

from __future__ import annotations

from dataclasses import dataclass

from storage import store
from storage.models import Message, Ticket
from ticketmail.admin.errors import AdminError


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


async def list_all(db) -> list[TicketRow]:
    """Every ticket, newest first."""
    return [TicketRow(*row) for row in await db.run(store.tickets)]


async def show(db, number: int) -> TicketView:
    def collect(s):
        row = store.ticket_row(s, number)
        if row is None:
            raise AdminError(f"no ticket #{number}")
        return TicketView(TicketRow(*row), store.ticket_messages(s, number))

    return await db.run(collect)
