"""Who may sign in to the web panel. Passwords are kept as argon2id hashes (argon2-cffi's defaults:
64 MiB and about 50 ms per hash), computed in a thread so that the event loop serving LMTP never waits."""

from __future__ import annotations

import asyncio
import re
import threading
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from bridge.accounts import Secret
from storage import admin_store
from storage.models import AdminUser, utcnow
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
MIN_PASSWORD = 10

_hasher = PasswordHasher()
# Each hash takes 64 MiB: at most two at once, however many sign-ins arrive together.
_hashing = threading.BoundedSemaphore(2)


@cache
def _nobody() -> str:
    """Checked when the name is unknown, so that an unknown name takes as long as a wrong password."""
    return _hasher.hash("no such admin")


def _hash(password: str) -> str:
    with _hashing:
        return _hasher.hash(password)


def _matches(stored: str, password: str) -> bool:
    with _hashing:
        try:
            return _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def check_name(name: str) -> str:
    """The name as stored: lowercased; letters, digits, '.', '_', '@' or '-', up to 64."""
    value = name.strip().lower()
    if not NAME_RE.fullmatch(value):
        raise AdminError(f"admin name {name!r}: use letters, digits, '.', '_', '@' or '-' (up to 64)")
    return value


def _check_password(password: Secret) -> str:
    value = password.reveal()
    if len(value) < MIN_PASSWORD:
        raise AdminError(f"the password is shorter than {MIN_PASSWORD} characters; nothing saved")
    return value


async def add(db, name: str, password: Secret, *, by: str) -> AdminUser:
    name = check_name(name)
    hashed = await asyncio.to_thread(_hash, _check_password(password))

    def create(s):
        if admin_store.admin_by_name(s, name):
            raise AdminError(f"admin {name} already exists (`ticketmail admin passwd {name}` sets a new password)")
        user = AdminUser(name=name, password_hash=hashed)
        s.add(user)
        audit.record(s, by, "admin.add", name)
        return user

    try:
        return await db.run(create, write=True)
    except IntegrityError:
        raise AdminError(f"admin {name} already exists") from None


async def list_all(db) -> list[AdminUser]:
    return await db.run(admin_store.admins)


async def _change(db, name: str, change, *, by: str | None = None, action: str = "") -> AdminUser:
    name = name.strip().lower()

    def apply(s):
        user = admin_store.admin_by_name(s, name)
        if user is None:
            raise AdminError(f"no admin {name} (see `ticketmail admin list`)")
        change(s, user)
        if by is not None:
            audit.record(s, by, action, name)
        return user

    return await db.run(apply, write=True)


async def set_password(db, name: str, password: Secret, *, by: str) -> AdminUser:
    """A new password; every session of the admin ends."""
    hashed = await asyncio.to_thread(_hash, _check_password(password))

    def change(s, user):
        user.password_hash, user.password_changed_at = hashed, utcnow()
        user.session_epoch += 1

    return await _change(db, name, change, by=by, action="admin.passwd")


async def remove(db, name: str, *, by: str) -> AdminUser:
    """Remove the admin; their sessions end with them."""
    return await _change(db, name, lambda s, user: s.delete(user), by=by, action="admin.remove")


async def sign_in(db, name: str, password: str) -> AdminUser | None:
    """The admin if `password` is theirs, else None (the same time either way). A hash made with older
    parameters is replaced by one made with the current ones."""
    user = await db.run(admin_store.admin_by_name, name.strip().lower())
    stored = user.password_hash if user else await asyncio.to_thread(_nobody)
    if not await asyncio.to_thread(_matches, stored, password) or user is None:
        return None
    if _hasher.check_needs_rehash(stored):
        hashed = await asyncio.to_thread(_hash, password)
        await _change(db, user.name, lambda s, row: setattr(row, "password_hash", hashed))
    return user


async def session_admin(db, admin_id: int, epoch: int) -> AdminUser | None:
    """The admin of a session, while the session is still valid (same epoch, admin not removed)."""
    user = await db.run(admin_store.admin_by_id, admin_id)
    return user if user is not None and user.session_epoch == epoch else None


async def end_sessions(db, admin_id: int) -> None:
    """Sign out: every session of this admin ends, in every browser and process."""

    def bump(s):
        user = admin_store.admin_by_id(s, admin_id)
        if user is not None:
            user.session_epoch += 1

    await db.run(bump, write=True)
