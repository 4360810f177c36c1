"""The queries and writes of ticketmail, each taking the caller's session (one per task)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import selectinload

from storage.models import (
    Customer,
    Department,
    DepartmentAddress,
    Event,
    Message,
    Meta,
    Rule,
    Ticket,
    utcnow,
)

REVISION = "revision"


async def revision(session) -> int:
    """The counter bumped by every change of departments or rules (caches compare it)."""
    value = await session.scalar(select(Meta.value).where(Meta.key == REVISION))
    return value or 0


async def bump_revision(session) -> None:
    result = await session.execute(update(Meta).where(Meta.key == REVISION).values(value=Meta.value + 1))
    if result.rowcount == 0:
        session.add(Meta(key=REVISION, value=1))


async def departments(session) -> list[Department]:
    rows = await session.scalars(
        select(Department).options(selectinload(Department.addresses)).order_by(Department.name)
    )
    return list(rows)


async def department_by_name(session, name: str) -> Department | None:
    return await session.scalar(select(Department).where(func.lower(Department.name) == name.lower()))


async def rules(session) -> list[Rule]:
    return list(await session.scalars(select(Rule).order_by(Rule.position)))


async def replace_rules(session, definitions: list[tuple[str, dict]]) -> None:
    """Replace the whole rule list at once (import is all or nothing)."""
    for rule in await rules(session):
        await session.delete(rule)
    await session.flush()
    for position, (name, definition) in enumerate(definitions):
        session.add(Rule(position=position, name=name, definition=definition))
    await bump_revision(session)


async def message_by_key(session, dedup_key: str) -> Message | None:
    return await session.scalar(select(Message).where(Message.dedup_key == dedup_key))


async def ticket_by_message_ids(session, message_ids: list[str]) -> Ticket | None:
    """The ticket of the most recent message whose Message-ID is among `message_ids`."""
    if not message_ids:
        return None
    return await session.scalar(
        select(Ticket)
        .join(Message, Message.ticket_id == Ticket.id)
        .where(Message.message_id.in_(message_ids[-100:]))
        .order_by(Message.id.desc())
        .limit(1)
    )


async def ticket(session, number: int) -> Ticket | None:
    return await session.get(Ticket, number)


async def customer_by_email(session, email: str) -> Customer | None:
    if not email:
        return None
    return await session.scalar(select(Customer).where(Customer.email == email.lower()))


async def was_on_ticket(session, ticket: Ticket, address: str) -> bool:
    """True if `address` is the ticket's customer or was From/To/Cc on one of its messages."""
    if ticket.customer_id is not None:
        customer = await session.get(Customer, ticket.customer_id)
        if customer and customer.email == address:
            return True
    rows = await session.execute(
        select(Message.from_addr, Message.to_addrs, Message.cc_addrs).where(Message.ticket_id == ticket.id)
    )
    return any(address == f or address in (t or []) or address in (c or []) for f, t, c in rows)


async def add_event(session, message: Message, kind: str, detail: str) -> None:
    session.add(Event(message_id=message.id, kind=kind, detail=detail))


async def tickets(session) -> list[tuple[Ticket, str | None, str | None, int]]:
    """Every ticket with its department name, customer email and message count, newest first."""
    count = (
        select(func.count(Message.id)).where(Message.ticket_id == Ticket.id).correlate(Ticket).scalar_subquery()
    )
    rows = await session.execute(
        select(Ticket, Department.name, Customer.email, count)
        .outerjoin(Department, Department.id == Ticket.department_id)
        .outerjoin(Customer, Customer.id == Ticket.customer_id)
        .order_by(Ticket.id.desc())
    )
    return [tuple(r) for r in rows]


async def ticket_messages(session, number: int) -> list[Message]:
    rows = await session.scalars(
        select(Message)
        .where(Message.ticket_id == number)
        .options(selectinload(Message.attachments), selectinload(Message.events))
        .order_by(Message.id)
    )
    return list(rows)


async def held_messages(session) -> list[Message]:
    rows = await session.scalars(
        select(Message).where(Message.status == "held").options(selectinload(Message.events)).order_by(Message.id)
    )
    return list(rows)


async def message(session, message_id: int) -> Message | None:
    return await session.get(Message, message_id)


async def expired_messages(session, statuses: tuple[str, ...], before: datetime) -> list[Message]:
    rows = await session.scalars(
        select(Message)
        .where(Message.status.in_(statuses), Message.received_at < before)
        .options(selectinload(Message.attachments))
    )
    return list(rows)


def touch(ticket: Ticket) -> None:
    ticket.updated_at = utcnow()
