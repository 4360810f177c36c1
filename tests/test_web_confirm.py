"""The confirmation pages as any client sees them: headers on every response, escaping, methods."""

from __future__ import annotations

import re

from aiohttp import web

from tests.challenge_helpers import BOB, SUPPORT, desk, start_desk, stop_desk  # noqa: F401 - desk: a fixture
from tests.conftest import one_database
from tests.mail import message
from ticketmail.config import Config
from web.app import create_app

STRICT = ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'", "base-uri 'none'")


def assert_protected(headers) -> None:
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    csp = headers["Content-Security-Policy"]
    assert all(rule in csp for rule in STRICT) and "unsafe" not in csp and "script-src" not in csp


@one_database
async def test_every_response_carries_the_security_headers(desk):
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    requests = [("GET", mail.link, 200), ("HEAD", mail.link, 200), ("GET", desk.url + "/healthz", 200),
                ("GET", desk.url + "/confirm/" + "x" * 43, 404), ("GET", desk.url + "/nothing/here", 404),
                ("PUT", mail.link, 405), ("POST", mail.link, 403)]
    for method, url, status in requests:
        async with desk.http.request(method, url, allow_redirects=False) as response:
            assert response.status == status, (method, url)
            assert_protected(response.headers)
    cookie = next(c for c in desk.http.cookie_jar if c.key == "tm_csrf")
    assert cookie["httponly"] and cookie["samesite"] == "Strict"


@one_database
async def test_redirect_after_post_is_relative_so_a_proxy_prefix_survives(desk):
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    async with desk.http.get(mail.link) as response:
        form = re.search(r'<form method="post">', await response.text())
        page = await response.text()
    assert form  # posts to the page's own URL, whatever the proxy made of it
    value = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    # A browser behind a proxy sends the proxy's origin; with no-referrer it sends "null".
    for origin in ("null", desk.url):
        async with desk.http.post(mail.link, data={"csrf": value}, headers={"Origin": origin},
                                  allow_redirects=False) as response:
            assert response.status == 303 and not response.headers["Location"].startswith(("/", "http"))
            assert_protected(response.headers)


@one_database
async def test_pages_escape_what_they_show(db, cli):
    name = '<img src=x onerror="alert(1)"> & Co'
    code, _, err = await cli("department", "add", name, "--address", SUPPORT, "--unknown-sender", "challenge")
    assert code == 0, err
    desk = await start_desk(db)
    try:
        await desk.deliver(message(frm=BOB))
        mail = await desk.challenge()
        async with desk.http.get(mail.link) as response:
            page = await response.text()
    finally:
        await stop_desk(desk)
    assert "<img" not in page and "&lt;img src=x onerror=&#34;alert(1)&#34;&gt; &amp; Co" in page


def test_the_app_serves_nothing_but_its_routes():
    # Outside /admin (tests/test_web_panel.py lists the panel's): the health check and the confirmation pages.
    app: web.Application = create_app(None, Config())
    routes = sorted({(r.method, r.resource.canonical) for r in app.router.routes()
                     if not r.resource.canonical.startswith("/admin")})
    assert routes == [("GET", "/confirm/{token}"), ("GET", "/confirm/{token}/done"), ("GET", "/healthz"),
                      ("HEAD", "/confirm/{token}"), ("HEAD", "/confirm/{token}/done"), ("HEAD", "/healthz"),
                      ("POST", "/confirm/{token}")]
