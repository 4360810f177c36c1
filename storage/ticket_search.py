"""The panel's ticket list: filters, text search and keyset paging; a ticket's attachment. Plain functions of
a Session.

A page is the tickets below a key (updated_at, id), newest first, read through the index
ix_tickets_updated: the 2,000th page costs what the first does (no OFFSET). Text search finds messages
whose subject, sender name, sender address or text body has every word of the query, and lists their
tickets; the objects it reads are created by migration 0010 (SQLite FTS5, PostgreSQL GIN).

A query is hostile input: on SQLite each word is quoted as an FTS5 string (so AND, NEAR, "*", "(" and
column filters are plain text); on PostgreSQL it goes to plainto_tsquery as a bound value. Either way it
is a bound parameter, never SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, and_, literal, select, text, tuple_
from sqlalchemy.orm import Session

from storage import store
from storage.models import Attachment, Customer, Department, Message, Ticket, UTCDateTime

# The same expression as migration 0010's index, with the table named (the list joins tickets, which has a
# subject too): PostgreSQL uses the index only for a query with this very expression.
PG_DOCUMENT = ("to_tsvector('simple'::regconfig, messages.subject || ' ' || messages.from_name || ' ' || "
               "messages.from_addr || ' ' || left(messages.\"text\", 100000))")
MAX_WORDS = 20
MANY_MATCHES = 5000  # on SQLite, a search matching this many messages reads the tickets first (_sqlite_search)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Tables and indexes of migration 0010 that storage/models.py does not (cannot) declare: an FTS5 virtual
# table with its shadow tables, an expression index. Autogenerate comparisons leave them out.
NOT_IN_MODELS = {
    "table": {"message_search", *(f"message_search_{shadow}" for shadow in ("data", "idx", "content", "docsize",
                                                                            "config"))},
    "index": {"ix_messages_search"},
}


def in_models(name: str | None, type_: str, parent_names: dict) -> bool:
    """An Alembic `include_name` hook: False for the search objects above."""
    return name not in NOT_IN_MODELS.get(type_, ())


@dataclass(frozen=True)
class Filters:
    department: str = ""  # a department's name
    status: str = ""  # open | closed
    customer: str = ""  # the customer's address
    tag: str = ""
    text: str = ""  # words to search for

    def any(self) -> bool:
        return any((self.department, self.status, self.customer, self.tag, self.text))


Key = tuple[datetime, int]  # (updated_at, id) of the last ticket a page showed


def words(query: str) -> list[str]:
    """The words of a search, at most MAX_WORDS of them, without control characters."""
    return _CONTROL.sub(" ", query).split()[:MAX_WORDS]


def fts5_query(query: str) -> str:
    """An FTS5 MATCH expression finding rows with every word of `query`, each word a quoted string."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words(query))


def _sqlite_search(session: Session, query: str):
    """Tickets with a message matching `query`, read the way that is fast for how many messages match.

    Few: their rowids from the FTS index, then their tickets, sorted (all of them: cheap while few). Many
    (the word is in most mail): the tickets in the list's order, each asked whether a message of it matches
    (FTS5 looks a rowid up in the word's list), until the page is full. Either way alone is 100 times slower
    in the other case (100,000 tickets: 110 ms against 2 ms for a common word, 1.2 s against 0.1 ms for a
    rare one). PostgreSQL's planner makes this choice itself."""
    fts = fts5_query(query)
    many = session.scalar(text("SELECT count(*) FROM (SELECT 1 FROM message_search WHERE message_search MATCH :fts "
                               "LIMIT :many)"), {"fts": fts, "many": MANY_MATCHES}) >= MANY_MATCHES
    if many:
        return text("EXISTS (SELECT 1 FROM messages AS m JOIN message_search ON message_search.rowid = m.id "
                    "WHERE m.ticket_id = tickets.id AND message_search MATCH :fts)").bindparams(fts=fts)
    rowids = text("SELECT rowid FROM message_search WHERE message_search MATCH :fts").bindparams(fts=fts).columns(
        Message.id)
    return Ticket.id.in_(select(Message.ticket_id).where(Message.id.in_(rowids)))


def _search(session: Session, query: str):
    if session.get_bind().dialect.name == "sqlite":
        return _sqlite_search(session, query)
    document = text(f"{PG_DOCUMENT} @@ plainto_tsquery('simple', :tsq)").bindparams(tsq=" ".join(words(query)))
    # asyncpg prepares statements; after five runs PostgreSQL may keep a generic plan, which cannot tell a
    # rare word from a common one and computed to_tsvector on every message instead of reading the index
    # (165 ms instead of 6 on 3,000 tickets). A plan for each query, in this transaction.
    session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
    return Ticket.id.in_(select(Message.ticket_id).where(document))


def _has_tag(session: Session, tag: str):
    if session.get_bind().dialect.name == "sqlite":
        return text("EXISTS (SELECT 1 FROM json_each(tickets.tags) WHERE json_each.value = :tag)").bindparams(tag=tag)
    return text("CAST(tickets.tags AS jsonb) @> jsonb_build_array(CAST(:tag AS text))").bindparams(tag=tag)


def tickets_page(session: Session, filters: Filters, *, limit: int, before: Key | None = None) -> list[tuple]:
    """Up to `limit` tickets matching `filters`, newest (by updated_at, then number) first, below `before`."""
    query = store.ticket_rows().order_by(Ticket.updated_at.desc(), Ticket.id.desc()).limit(limit)
    conditions = []
    if filters.department:
        conditions.append(Department.name == filters.department)
    if filters.status:
        conditions.append(Ticket.status == filters.status)
    if filters.customer:
        conditions.append(Customer.email == filters.customer.lower())
    if filters.tag:
        conditions.append(_has_tag(session, filters.tag))
    if words(filters.text):
        conditions.append(_search(session, filters.text))
    if before is not None:
        at, number = before
        conditions.append(tuple_(Ticket.updated_at, Ticket.id) < tuple_(literal(at, UTCDateTime()),
                                                                         literal(number, Integer())))
    if conditions:
        query = query.where(and_(*conditions))
    return [tuple(row) for row in session.execute(query)]


def ticket_attachment(session: Session, number: int, attachment_id: int) -> Attachment | None:
    """The attachment, if it belongs to a message of ticket `number`."""
    return session.scalar(
        select(Attachment).join(Message, Message.id == Attachment.message_id)
        .where(Attachment.id == attachment_id, Message.ticket_id == number)
    )

