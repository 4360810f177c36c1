"""The admin panel's frame: its state on the app, the guard every /admin request passes, links, pages.

The guard runs the session middleware for /admin paths only, sends a request without a valid session to
the sign-in page (nothing else runs for it), and checks the CSRF token of every POST (web/csrf.py: the
double-submit cookie and the same-origin check of the confirmation pages). Links and redirects are
relative to the page, so the panel works behind a reverse proxy with a path prefix.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp_session
from aiohttp import web

from storage.models import AdminUser
from ticketmail.admin import audit
from ticketmail.admin.errors import AdminError
from web import csrf, sessions
from web.csrf import CsrfError
from web.keys import DB, PAGES, SITE
from web.throttle import SignInThrottle

log = logging.getLogger(__name__)

PREFIX = "/admin"
SIGN_IN = "/admin/sign-in"
_NEXT = re.compile(r"[a-z0-9-]+(?:/[a-z0-9-]+)*")  # where sign-in may send the admin back to: a panel page


@dataclass
class Panel:
    bridge_config: object  # [bridge]: the IMAP passwords' key, from which the session key is derived
    sessions: sessions.Sessions
    throttle: SignInThrottle


PANEL = web.AppKey("panel", Panel)
ADMIN = web.RequestKey("admin", AdminUser)


def install(app: web.Application, config) -> None:
    app[PANEL] = Panel(config.bridge, sessions.Sessions(config.bridge, secure=app[SITE].secure_cookies),
                       SignInThrottle())


def link(request: web.Request, target: str) -> str:
    """The URL of panel page `target` ("imap-accounts", "" for the home page) relative to this page."""
    folder, name = posixpath.split(f"{PREFIX}/{target}")
    up = posixpath.relpath(folder, posixpath.dirname(request.path))
    return name if up == "." and name else f"{up}/{name}"


def by(request: web.Request) -> str:
    """Who the audit log says made a change: the signed-in admin."""
    return audit.admin(request[ADMIN].name)


_ROW_ID = re.compile(r"[0-9]{1,9}")  # not str.isdigit: it takes "²", which int() refuses


def row_id(text: str) -> int | None:
    """The row a path or query names by its id, or None: the id columns are 32-bit integers on
    PostgreSQL, so a longer number names no row (asked for, it would be an error, not a 404)."""
    return int(text) if _ROW_ID.fullmatch(text) else None


def place(errors: dict, e: AdminError, fields) -> None:
    """Put an admin-layer error beside its form field if the form has one, else above the form."""
    errors.setdefault(e.field if e.field in fields else "form", str(e))


async def notify(request: web.Request, notices: list[str] = (), alerts: list[str] = ()) -> None:
    """Sentences for the page a POST redirects to (post/redirect/get), shown there once."""
    session = await aiohttp_session.get_session(request)
    session["notices"], session["alerts"] = list(notices), list(alerts)


async def shown_once(request: web.Request) -> tuple[list[str], list[str]]:
    """The notices and alerts a POST left for this page; gone once read."""
    session = await aiohttp_session.get_session(request)
    return session.pop("notices", []), session.pop("alerts", [])


def next_page(value: str) -> str:
    """A page to return to after signing in, if `value` names one (never another site)."""
    return value if _NEXT.fullmatch(value) else ""


def render(request: web.Request, name: str, status: int = 200, **values) -> web.Response:
    """A panel page, with the CSRF value its forms carry and the signed-in admin."""
    token = csrf.value_for(request)
    response = request.app[PAGES].render(name, status=status, csrf=token, admin=request.get(ADMIN),
                                         link=lambda target: link(request, target), **values)
    csrf.remember(response, token, secure=request.app[SITE].secure_cookies)
    return response


@web.middleware
async def guard(request: web.Request, handler):
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return await handler(request)  # the confirmation pages and /healthz: no session

    async def signed_in(request: web.Request):
        if request.path != SIGN_IN:
            admin = await sessions.current_admin(request, request.app[DB])
            if admin is None:
                back = request.path.removeprefix(PREFIX + "/")
                query = f"?{urlencode({'next': back})}" if next_page(back) and request.method == "GET" else ""
                raise web.HTTPSeeOther(location=link(request, "sign-in") + query)
            request[ADMIN] = admin
        if request.method == "POST":
            try:
                csrf.check(request, await request.post(), request.app[SITE].public_origin)
            except CsrfError as e:
                log.info("%s %s refused by the CSRF check: %s", request.method, request.path, e)
                return render(request, "panel_error.html", status=403, heading="Please try again",
                              text="The form could not be checked. Reload the page and send it again.")
        return await handler(request)

    return await request.app[PANEL].sessions.middleware()(request, signed_in)
