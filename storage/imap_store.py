"""The IMAP bridge's queries and writes: accounts, sync checkpoints, leases. Plain functions of a Session."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import selectinload

from storage.models import ImapAccount, ImapLease, Message, utcnow


def accounts(session) -> list[ImapAccount]:
    """Every account with its department, by name."""
    rows = session.scalars(
        select(ImapAccount).options(selectinload(ImapAccount.department)).order_by(ImapAccount.name)
    )
    return list(rows)


def account_by_name(session, name: str) -> ImapAccount | None:
    return session.scalar(
        select(ImapAccount)
        .where(func.lower(ImapAccount.name) == name.lower())
        .options(selectinload(ImapAccount.department))
    )


def account_by_id(session, account_id: int) -> ImapAccount | None:
    return session.get(ImapAccount, account_id)


def last_imported(session, source: str):
    """(subject, received_at) of the newest message from `source` ("imap:NAME"), or None. It walks the primary
    key down to the first match: quick while the account imports often (messages.source has no index)."""
    return session.execute(
        select(Message.subject, Message.received_at).where(Message.source == source)
        .order_by(Message.id.desc()).limit(1)
    ).first()


def checkpoint(session, account_id: int) -> tuple[int | None, int, int]:
    """(uidvalidity, last_uid, rescan_below) as committed."""
    row = session.execute(
        select(ImapAccount.uidvalidity, ImapAccount.last_uid, ImapAccount.rescan_below).where(
            ImapAccount.id == account_id
        )
    ).one()
    return row.uidvalidity, row.last_uid, row.rescan_below


def start_uidvalidity(session, account_id: int, uidvalidity: int, rescan_below: int) -> None:
    """A new UIDVALIDITY (or the first): start again from UID 0; mail below `rescan_below` was seen before."""
    session.execute(
        update(ImapAccount)
        .where(ImapAccount.id == account_id)
        .values(uidvalidity=uidvalidity, last_uid=0, rescan_below=rescan_below)
    )


def advance(session, account_id: int, uidvalidity: int, last_uid: int, backlog: int) -> None:
    """Move the checkpoint forward (never back, never across a UIDVALIDITY change) and note a good sync."""
    session.execute(
        update(ImapAccount)
        .where(ImapAccount.id == account_id, ImapAccount.uidvalidity == uidvalidity,
               ImapAccount.last_uid < last_uid)
        .values(last_uid=last_uid)
    )
    record_sync(session, account_id, backlog)


def record_sync(session, account_id: int, backlog: int) -> None:
    session.execute(
        update(ImapAccount)
        .where(ImapAccount.id == account_id)
        .values(last_sync=utcnow(), last_error="", backlog=backlog)
    )


def record_error(session, account_id: int, error: str) -> None:
    session.execute(
        update(ImapAccount).where(ImapAccount.id == account_id).values(last_error=error, last_error_at=utcnow())
    )


def imported_message_ids(session, source: str, message_ids: list[str]) -> set[str]:
    """Which of these Message-IDs were already imported from `source` (e.g. "imap:support")."""
    if not message_ids:
        return set()
    rows = session.scalars(
        select(Message.message_id).where(Message.message_id.in_(message_ids), Message.source == source)
    )
    return set(rows)


# --- leases (PostgreSQL: several `serve` processes share the accounts) ---


def take_lease(session, account_id: int, holder: str, seconds: float) -> bool:
    """Take or renew the account's lease if it is free, expired or already ours; the database's clock decides."""
    from sqlalchemy.dialects.postgresql import insert

    expires = func.now() + timedelta(seconds=seconds)
    stmt = insert(ImapLease).values(account_id=account_id, holder=holder, expires_at=expires)
    stmt = stmt.on_conflict_do_update(
        index_elements=[ImapLease.account_id],
        set_={"holder": holder, "expires_at": expires},
        where=(ImapLease.holder == holder) | (ImapLease.expires_at < func.now()),
    ).returning(ImapLease.account_id)
    return session.execute(stmt).first() is not None


def renew_leases(session, holder: str, account_ids: list[int], seconds: float) -> set[int]:
    """Extend the unexpired leases we hold among `account_ids`; returns those still ours."""
    if not account_ids:
        return set()
    rows = session.scalars(
        update(ImapLease)
        .where(ImapLease.account_id.in_(account_ids), ImapLease.holder == holder,
               ImapLease.expires_at > func.now())
        .values(expires_at=func.now() + timedelta(seconds=seconds))
        .returning(ImapLease.account_id)
    )
    return set(rows)


def release_leases(session, holder: str, account_ids: list[int] | None = None) -> None:
    """Give leases up (a clean stop, a disabled account): another process may take them at once."""
    stmt = delete(ImapLease).where(ImapLease.holder == holder)
    if account_ids is not None:
        stmt = stmt.where(ImapLease.account_id.in_(account_ids))
    session.execute(stmt)


def lease_holders(session) -> dict[int, tuple[str, datetime]]:
    """Who holds which account's lease, with its expiry (expired ones included)."""
    rows = session.execute(select(ImapLease.account_id, ImapLease.holder, ImapLease.expires_at))
    return {r.account_id: (r.holder, r.expires_at) for r in rows}
