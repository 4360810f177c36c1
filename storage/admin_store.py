"""The admin users' queries. Plain functions of a Session."""

from __future__ import annotations

from sqlalchemy import select

from storage.models import AdminUser, AuditEntry


def admins(session) -> list[AdminUser]:
    """Every admin user, by name."""
    return list(session.scalars(select(AdminUser).order_by(AdminUser.name)))


def admin_by_name(session, name: str) -> AdminUser | None:
    return session.scalar(select(AdminUser).where(AdminUser.name == name))


def admin_by_id(session, admin_id: int) -> AdminUser | None:
    return session.get(AdminUser, admin_id)


def audit_entries(session, *, limit: int, before: int | None = None) -> list[AuditEntry]:
    """The newest audit entries (below id `before`, for the next page), newest first."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return list(session.scalars(query))
