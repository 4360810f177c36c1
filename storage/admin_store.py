"""The admin users' queries. Plain functions of a Session."""

from __future__ import annotations

from sqlalchemy import select

from storage.models import AdminUser


def admins(session) -> list[AdminUser]:
    """Every admin user, by name."""
    return list(session.scalars(select(AdminUser).order_by(AdminUser.name)))


def admin_by_name(session, name: str) -> AdminUser | None:
    return session.scalar(select(AdminUser).where(AdminUser.name == name))


def admin_by_id(session, admin_id: int) -> AdminUser | None:
    return session.get(AdminUser, admin_id)
