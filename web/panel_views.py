"""The panel's sign-in, sign-out and home. The guard in web/panel.py has checked the session and the
CSRF token before any of these runs."""

from __future__ import annotations

import logging
import math

from aiohttp import web

from ticketmail.admin import admins
from web import sessions
from web.keys import DB
from web.panel import ADMIN, PANEL, link, next_page, render

log = logging.getLogger(__name__)


async def to_home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(location=link(request, ""))


async def home(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther(location=link(request, "tickets"))


async def sign_in_page(request: web.Request) -> web.Response:
    if await sessions.current_admin(request, request.app[DB]):
        raise web.HTTPSeeOther(location=link(request, ""))
    return render(request, "sign_in.html", user="", next=next_page(request.query.get("next", "")), error="")


async def sign_in(request: web.Request) -> web.Response:
    """Refused unchecked while the throttle says wait; a failure counts for the name and the address."""
    form = await request.post()
    name, password = str(form.get("user", "")).strip().lower()[:64], str(form.get("password", ""))
    back = next_page(str(form.get("next", "")))
    keys = (f"user:{name}", f"address:{request.remote}")
    throttle = request.app[PANEL].throttle
    if (wait := throttle.wait(*keys)) > 0:
        seconds = math.ceil(wait)
        response = render(request, "sign_in.html", status=429, user=name, next=back,
                          error=f"Too many failed sign-ins. Wait {seconds} seconds, then try again.")
        response.headers["Retry-After"] = str(seconds)
        return response
    user = await admins.sign_in(request.app[DB], name, password)
    if user is None:
        throttle.failed(*keys)
        log.warning("admin sign-in refused: name %r from %s", name, request.remote)
        return render(request, "sign_in.html", status=403, user=name, next=back,
                      error="That name and password do not match an admin.")
    throttle.succeeded(*keys)
    await sessions.start(request, user)
    log.info("admin %s signed in from %s", user.name, request.remote)
    raise web.HTTPSeeOther(location=link(request, back))


async def sign_out(request: web.Request) -> web.Response:
    await sessions.end(request, request.app[DB], request[ADMIN])
    raise web.HTTPSeeOther(location=link(request, "sign-in"))
