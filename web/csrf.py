"""The confirmation form's CSRF check: a double-submit cookie, and no cross-site POST.

The token in the URL already proves the link was received; the check keeps another site from making
a visitor's browser confirm on the visitor's behalf. `Origin` may be "null" here: browsers send that
for a same-origin POST from a page served with `Referrer-Policy: no-referrer`.
"""

from __future__ import annotations

import hmac
import re
import secrets

from aiohttp import web

COOKIE = "tm_csrf"
_VALUE = re.compile(r"[A-Za-z0-9_-]{32}")


class CsrfError(Exception):
    pass


def value_for(request: web.Request) -> str:
    """The visitor's CSRF value: the cookie they have, else a new one."""
    existing = request.cookies.get(COOKIE, "")
    return existing if _VALUE.fullmatch(existing) else secrets.token_urlsafe(24)


def remember(response: web.StreamResponse, value: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", secure=secure, path="/",
                        max_age=24 * 3600)


def check(request: web.Request, form, public_origin: str) -> None:
    """Raise CsrfError unless the form's value matches the cookie and the POST is not cross-site."""
    sent, cookie = str(form.get("csrf", "")), request.cookies.get(COOKIE, "")
    if not sent or not cookie or not hmac.compare_digest(sent.encode(), cookie.encode()):
        raise CsrfError("form value does not match the cookie")
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CsrfError(f"Sec-Fetch-Site: {request.headers['Sec-Fetch-Site']}")
    origin = request.headers.get("Origin", "null")
    if origin != "null" and origin not in (public_origin, f"{request.scheme}://{request.host}"):
        raise CsrfError(f"Origin {origin}")
