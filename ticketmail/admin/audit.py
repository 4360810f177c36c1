"""The audit log: every change an admin makes, in the panel or with the CLI, is recorded in the same
transaction as the change (so a change that fails records nothing) and logged in one line.

`by` says who: "cli USER" for the command line (ticketmail/commands.py), `admin(name)` for the panel. What a
change records never includes a secret: passwords are "changed", not shown.
"""

from __future__ import annotations

import logging

from sqlalchemy import event
from sqlalchemy.orm import Session

from storage import admin_store
from storage.models import AuditEntry

log = logging.getLogger("ticketmail.audit")


def admin(name: str) -> str:
    """Who acts in the panel: the signed-in admin."""
    return f"admin {name}"


def record(session, by: str, action: str, subject: str, detail: str = "") -> None:
    """Add the entry to `session`'s transaction; its log line follows once the transaction commits."""
    session.add(AuditEntry(actor=by, action=action, subject=subject, detail=detail))
    session.info.setdefault("audit", []).append((by, action, subject, detail))


@event.listens_for(Session, "after_commit")
def _log_committed(session) -> None:
    for by, action, subject, detail in session.info.pop("audit", ()):
        # repr: subject and detail may come from mail (a sender's address) or a form
        log.info("admin change: %s %r%s by %r", action, subject, f" ({detail!r})" if detail else "", by)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session) -> None:
    session.info.pop("audit", None)


async def recent(db, *, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
    return await db.run(lambda s: admin_store.audit_entries(s, limit=limit, before=before))
