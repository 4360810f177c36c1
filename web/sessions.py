"""Admin sessions: an encrypted, HttpOnly, SameSite=Lax cookie (aiohttp-session's EncryptedCookieStorage).

The cookie's key is derived (HKDF-SHA256) from the bridge key (`[bridge] key` or `key_file`, created 0600
on first use): every `serve` process that can open the IMAP passwords signs the same sessions in, and no
second secret needs handing around. The derivation is one way, so a session key does not open the IMAP
passwords. The cookie holds the admin's id, the session epoch (a new password or a sign-out ends every
session), when the session began and when it was last used; the server refuses one idle for
IDLE_SECONDS or older than LONGEST_SECONDS, whatever the browser keeps.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import aiohttp_session
from aiohttp import web
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.accounts import load_key
from storage.models import AdminUser
from ticketmail.admin import admins

COOKIE = "tm_admin"
IDLE_SECONDS = 30 * 60
LONGEST_SECONDS = 12 * 3600


def session_key(bridge_config) -> Fernet:
    """The cookie key, derived from the bridge key (created 0600 if there is none yet)."""
    load_key(bridge_config, create=True)  # checks it, or creates the key file, with the bridge's messages
    text = bridge_config.key or Path(bridge_config.key_file).read_text()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"ticketmail admin session cookie").derive(base64.urlsafe_b64decode(text.strip()))
    return Fernet(base64.urlsafe_b64encode(derived))


class Sessions:
    """The session middleware of the admin pages, made on their first request (so that an app that
    serves only confirmation pages never needs the key)."""

    def __init__(self, bridge_config, *, secure: bool):
        self.bridge_config, self.secure = bridge_config, secure
        self._middleware = None

    def middleware(self):
        if self._middleware is None:
            storage = EncryptedCookieStorage(session_key(self.bridge_config), cookie_name=COOKIE, path="/",
                                             httponly=True, samesite="Lax", secure=self.secure)
            self._middleware = aiohttp_session.session_middleware(storage)
        return self._middleware


async def current_admin(request: web.Request, db) -> AdminUser | None:
    """The signed-in admin, or None (and the cookie emptied) when the session is missing or over."""
    session = await aiohttp_session.get_session(request)
    now = time.time()
    try:
        admin_id, epoch, since, seen = (int(session[k]) for k in ("admin", "epoch", "since", "seen"))
    except (KeyError, TypeError, ValueError):
        admin_id = None
    if admin_id is None or now - seen > IDLE_SECONDS or now - since > LONGEST_SECONDS:
        if not session.empty:
            session.invalidate()
        return None
    user = await admins.session_admin(db, admin_id, epoch)
    if user is None:
        session.invalidate()
        return None
    session["seen"] = int(now)
    return user


async def start(request: web.Request, user: AdminUser) -> None:
    session = await aiohttp_session.new_session(request)
    now = int(time.time())
    session.update(admin=user.id, epoch=user.session_epoch, since=now, seen=now)


async def end(request: web.Request, db, user: AdminUser) -> None:
    """Sign out: this admin's sessions end everywhere (a copied cookie included), and the cookie goes."""
    await admins.end_sessions(db, user.id)
    (await aiohttp_session.get_session(request)).invalidate()
