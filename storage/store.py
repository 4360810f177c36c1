"""The queries and writes of ticketmail: plain functions of a synchronous Session.

The pipeline's writer calls them directly (SQLite) or through `AsyncSession.run_sync` (PostgreSQL),
the CLI through `Database.run`; one session per task, never shared.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from storage.models import (
    Customer,
    Department,
    Event,
    Message,
    Meta,
    Rule,
    Ticket,
    utcnow,
)

REVISION = "revision"


def clean(text: str) -> str:
    """Text any database takes: no NUL (PostgreSQL refuses it), no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def customer_from_mail(email: str, name: str, *, verified: bool, added_by: str) -> Customer:
    """A new customer of what a message says: its display name kept to what customers.name holds (a longer
    one made PostgreSQL refuse the whole delivery)."""
    return Customer(email=email, name=clean(name)[:200], verified=verified, added_by=added_by)


def revision(session) -> int:
    """The counter bumped by every change of departments or rules (caches compare it)."""
    value = session.scalar(select(Meta.value).where(Meta.key == REVISION))
    return value or 0


def bump_revision(session) -> None:
    result = session.execute(update(Meta).where(Meta.key == REVISION).values(value=Meta.value + 1))
    if result.rowcount == 0:
        session.add(Meta(key=REVISION, value=1))


def departments(session) -> list[Department]:
    rows = session.scalars(
        select(Department).options(selectinload(Department.addresses)).order_by(Department.name)
    )
    return list(rows)


def department_by_name(session, name: str) -> Department | None:
    return session.scalar(select(Department).where(func.lower(Department.name) == name.lower()))


def rules(session) -> list[Rule]:
    return list(session.scalars(select(Rule).order_by(Rule.position)))


def replace_rules(session, definitions: list[tuple[str, dict]]) -> None:
    """Replace the whole rule list at once (import is all or nothing)."""
    for rule in rules(session):
        session.delete(rule)
    session.flush()
    for position, (name, definition) in enumerate(definitions):
        session.add(Rule(position=position, name=name, definition=definition))
    bump_revision(session)


def messages_by_key(session, dedup_keys: list[str]) -> dict[str, Message]:
    rows = session.scalars(select(Message).where(Message.dedup_key.in_(dedup_keys)))
    return {m.dedup_key: m for m in rows}


def messages_by_resubmission_key(session, keys: list[str], since: datetime) -> dict[str, Message]:
    """Messages that hold one of `keys`; a key older than `since` is cleared (its window is over)."""
    found = {}
    for m in session.scalars(select(Message).where(Message.resubmission_key.in_(keys))):
        if m.received_at >= since:
            found[m.resubmission_key] = m
        else:
            m.resubmission_key = None
    session.flush()
    return found


def ticket_by_message_ids(session, message_ids: list[str]) -> Ticket | None:
    """The ticket of the most recent message whose Message-ID is among `message_ids`."""
    if not message_ids:
        return None
    return session.scalar(
        select(Ticket)
        .join(Message, Message.ticket_id == Ticket.id)
        .where(Message.message_id.in_(message_ids[-100:]))
        .order_by(Message.id.desc())
        .limit(1)
    )


def ticket(session, number: int) -> Ticket | None:
    return session.get(Ticket, number)


def prefetch_customers(session, emails: set[str]) -> None:
    """Look up a group's senders in one query; `customer_by_email` then answers from memory.

    Without this, each message's lookup would flush the previous message's rows on its own, and the
    group could not be written in one batch of inserts."""
    found = {c.email: c for c in session.scalars(select(Customer).where(Customer.email.in_(emails)))}
    session.info["customers"] = {e: found.get(e) for e in emails}


def remember_customer(session, customer: Customer) -> None:
    session.info.get("customers", {})[customer.email] = customer


def forget_customers(session) -> None:
    session.info.pop("customers", None)


def customer_by_email(session, email: str) -> Customer | None:
    if not email:
        return None
    email = email.lower()
    cache = session.info.get("customers", {})
    if email in cache:
        return cache[email]
    return session.scalar(select(Customer).where(Customer.email == email))


def was_on_ticket(session, ticket: Ticket, address: str) -> bool:
    """True if `address` is the ticket's customer or was From/To/Cc on one of its messages."""
    if ticket.customer_id is not None:
        customer = session.get(Customer, ticket.customer_id)
        if customer and customer.email == address:
            return True
    rows = session.execute(
        select(Message.from_addr, Message.to_addrs, Message.cc_addrs).where(Message.ticket_id == ticket.id)
    )
    return any(address == f or address in (t or []) or address in (c or []) for f, t, c in rows)


def add_event(session, message: Message, kind: str, detail: str) -> None:
    session.add(Event(message=message, kind=kind, detail=clean(detail)))


def ticket_rows():
    """Tickets with their department's name, customer's address and number of messages."""
    count = (
        select(func.count(Message.id)).where(Message.ticket_id == Ticket.id).correlate(Ticket).scalar_subquery()
    )
    return (
        select(Ticket, Department.name, Customer.email, count)
        .outerjoin(Department, Department.id == Ticket.department_id)
        .outerjoin(Customer, Customer.id == Ticket.customer_id)
    )


def tickets(session) -> list[tuple[Ticket, str | None, str | None, int]]:
    """Every ticket with its department name, customer email and message count, newest first."""
    return [tuple(r) for r in session.execute(ticket_rows().order_by(Ticket.id.desc()))]


def ticket_row(session, number: int) -> tuple[Ticket, str | None, str | None, int] | None:
    row = session.execute(ticket_rows().where(Ticket.id == number)).first()
    return tuple(row) if row else None


def ticket_messages(session, number: int) -> list[Message]:
    rows = session.scalars(
        select(Message)
        .where(Message.ticket_id == number)
        .options(selectinload(Message.attachments), selectinload(Message.events))
        .order_by(Message.id)
    )
    return list(rows)


def held_messages(session) -> list[Message]:
    rows = session.scalars(
        select(Message).where(Message.status == "held").options(selectinload(Message.events)).order_by(Message.id)
    )
    return list(rows)


def message(session, message_id: int) -> Message | None:
    return session.get(Message, message_id)


def expired_messages(session, statuses: tuple[str, ...], before: datetime) -> list[Message]:
    rows = session.scalars(
        select(Message)
        .where(Message.status.in_(statuses), Message.received_at < before)
        .options(selectinload(Message.attachments))
    )
    return list(rows)


def touch(ticket: Ticket) -> None:
    ticket.updated_at = utcnow()


# Large blobs. As a bound parameter a 24 MiB message is copied by the driver (sqlite3 once more into
# the row SQLite builds; asyncpg into a buffer grown by doubling): storing it took 2-2.9x its size.
# Instead the row is inserted with a placeholder and the blob written a piece at a time. SQLite: a
# zeroblob() (kept out of memory because raw and content are their rows' last columns, migration
# 0007) filled after the flush through the blob API. PostgreSQL: b"", and the pieces go into a large
# object, which one UPDATE reads (lo_get) before it is dropped: 0.5x instead of 2.8x a 24 MiB
# message, but ~2.1 s instead of ~1.2 s to store it (appending with || rewrote the value each time: 4.2 s).
LARGE_BLOB = 1 << 20
_BLOB_PIECE = 1 << 20
_LO_PIECE = 4 << 20


def defer_large_blob(session, obj, column: str, data: bytes) -> None:
    """Insert a large `obj.column` as a placeholder; `write_deferred_blobs` writes it after the flush."""
    if len(data) < LARGE_BLOB:
        return
    sqlite = session.get_bind().dialect.name == "sqlite"
    setattr(obj, column, func.zeroblob(len(data)) if sqlite else b"")
    session.info.setdefault("blobs", []).append((obj, column, data))


def write_deferred_blobs(session) -> None:
    """Write the blobs `defer_large_blob` left as placeholders, now that their rows exist."""
    for obj, column, data in session.info.pop("blobs", []):
        view = memoryview(data)
        if session.get_bind().dialect.name == "sqlite":
            with session.connection().connection.driver_connection.blobopen(obj.__tablename__, column, obj.id) as blob:
                for at in range(0, len(view), _BLOB_PIECE):
                    blob.write(view[at : at + _BLOB_PIECE])
        else:
            oid = session.scalar(text("SELECT lo_create(0)"))
            for at in range(0, len(view), _LO_PIECE):
                session.execute(text("SELECT lo_put(:oid, :at, :piece)"),
                                {"oid": oid, "at": at, "piece": bytes(view[at : at + _LO_PIECE])})
            session.execute(text(f"UPDATE {obj.__tablename__} SET {column} = lo_get(:oid) WHERE id = :id"),
                            {"oid": oid, "id": obj.id})
            session.execute(text("SELECT lo_unlink(:oid)"), {"oid": oid})
        set_committed_value(obj, column, data)


# --- Held, rejected and failed mail (the admin panel, issue 10) ---


def messages_page(session, statuses: tuple[str, ...], *, limit: int, before: int | None = None) -> list[Message]:
    """Messages in one of `statuses`, newest first, with their events; `before`: ids below it (the next page)."""
    query = select(Message).where(Message.status.in_(statuses))
    if before is not None:
        query = query.where(Message.id < before)
    rows = session.scalars(query.options(selectinload(Message.events)).order_by(Message.id.desc()).limit(limit))
    return list(rows)


def count_received_before(session, statuses: tuple[str, ...], before: datetime) -> int:
    """How many messages in one of `statuses` arrived before `before` (what a purge would empty)."""
    return session.scalar(
        select(func.count(Message.id)).where(Message.status.in_(statuses), Message.received_at < before)
    ) or 0
