"""The admin panel over real HTTP on loopback: sign-in, sessions, CSRF, and the IMAP accounts page."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.accounts import Secret
from storage import imap_store
from tests.panel_helpers import PASSWORD, Clock, csrf_of, form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from tests.test_web_confirm import assert_protected
from ticketmail.admin import admins, imap
from ticketmail.config import Config
from web import sessions
from web.app import create_app
from web.keys import DB

PAGES = ("/admin/", "/admin/imap-accounts", "/admin/imap-accounts/add")
POSTS = ("/admin/sign-out", "/admin/imap-accounts/add")
ADD = {"name": "support-inbox", "email": "support@xyzhosting.com", "server": "imap.example.net", "port": "993",
       "security": "tls", "user": "", "department": "", "password": "s3cret-pass", "confirm": "s3cret-pass",
       "no_test": "on"}


async def test_every_admin_page_needs_a_session(panel):
    for path in PAGES:
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303
            # Relative, so that a proxy's path prefix survives.
            assert re.fullmatch(r"(\.\./)?sign-in(\?next=[a-z/0-9-]+)?", response.headers["Location"]), path
            assert_protected(response.headers)
    token = await form_token(panel, "/admin/sign-in")
    for path in POSTS:  # a valid CSRF pair is not a session
        async with panel.post(path, data=ADD | {"csrf": token}, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"]
    assert await imap_accounts(panel) == []


async def imap_accounts(client) -> list[str]:
    return [s.account.name for s in await imap.list_all(client.app[DB])]


async def test_sign_in_sets_a_protected_cookie_and_returns_to_the_page_asked_for(panel):
    async with panel.get("/admin/imap-accounts/add", allow_redirects=False) as response:
        location = response.headers["Location"]
    assert location == "../sign-in?next=imap-accounts/add"
    async with await sign_in(panel, user="Alice", next="imap-accounts/add") as response:
        assert response.status == 303 and response.headers["Location"] == "imap-accounts/add"
        cookie = response.cookies[sessions.COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
        assert not cookie["secure"]  # public_url is http here
    async with panel.get("/admin/imap-accounts") as response:
        page = await response.text()
        assert response.status == 200 and "Signed in as <strong>alice</strong>" in page
    async with await sign_in(panel, next="https://evil.example/") as response:
        assert response.headers["Location"] == "./"  # never to another site


async def test_the_cookie_is_secure_when_public_url_is_https(db, tmp_path):
    config = Config(database_url=db.url)
    config.web.public_url = "https://help.example.com"
    config.bridge.key_file = str(tmp_path / "secret.key")
    await admins.add(db, "alice", Secret(PASSWORD), by="test")
    async with TestClient(TestServer(create_app(db, config), host="127.0.0.1")) as client:
        async with client.get("/admin/sign-in") as response:
            token = csrf_of(await response.text())
            assert response.cookies["tm_csrf"]["secure"]
        # The test's plain-HTTP client keeps Secure cookies to itself: the CSRF cookie goes by hand.
        async with client.post("/admin/sign-in", data={"csrf": token, "user": "alice", "password": PASSWORD},
                               headers={"Origin": "https://help.example.com"}, cookies={"tm_csrf": token},
                               allow_redirects=False) as response:
            assert response.status == 303 and response.cookies[sessions.COOKIE]["secure"]
    assert (tmp_path / "secret.key").stat().st_mode & 0o777 == 0o600  # the key it derives from, made private


async def test_a_wrong_password_is_refused_and_repeated_ones_are_slowed(panel):
    for _ in range(3):
        async with await sign_in(panel, password="wrong password") as response:
            assert response.status == 403 and "do not match an admin" in await response.text()
            assert sessions.COOKIE not in response.cookies
    async with await sign_in(panel) as response:  # the right password too: the wait is not over
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert "Wait 1 seconds" in await response.text()
    async with await sign_in(panel, user="nobody") as response:  # from the same address
        assert response.status == 429
    panel.clock.now += 1.5
    async with await sign_in(panel, password="wrong again") as response:
        assert response.status == 403
    async with await sign_in(panel) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "2"  # the wait doubles
    panel.clock.now += 2.5
    async with await sign_in(panel) as response:
        assert response.status == 303 and sessions.COOKIE in response.cookies


async def test_the_per_name_counter_holds_whatever_the_address():
    from web.throttle import SignInThrottle

    clock = Clock()
    throttle = SignInThrottle(clock)
    for n in range(4):
        throttle.failed("user:alice", f"address:10.0.0.{n}")
    assert throttle.wait("user:alice", "address:10.0.0.9") == 2.0
    assert throttle.wait("user:bob", "address:10.0.0.9") == 0
    clock.now += 15 * 60 + 1
    assert throttle.wait("user:alice", "address:10.0.0.3") == 0  # forgotten after a quiet quarter hour


async def test_csrf_is_checked_on_every_post(panel):
    async with await sign_in(panel) as response:
        assert response.status == 303
    token = await form_token(panel)
    for path in POSTS + ("/admin/sign-in",):
        for data, headers in (({}, {}), ({"csrf": "x" * 32}, {}),
                              ({"csrf": token}, {"Origin": "https://evil.example"}),
                              ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"})):
            async with panel.post(path, data=ADD | {"user": "alice", "password": PASSWORD} | data,
                                  headers=headers, allow_redirects=False) as response:
                assert response.status == 403, (path, data, headers)
                assert "The form could not be checked" in await response.text()
                assert_protected(response.headers)
    assert await imap_accounts(panel) == []
    async with panel.get("/admin/imap-accounts", allow_redirects=False) as response:
        assert response.status == 200  # still signed in: the refused sign-out did nothing


async def test_get_changes_nothing(panel, db, cli):
    code, _, err = await cli("department", "add", "Support", "--address", "support@xyzhosting.com")
    assert code == 0, err
    async with await sign_in(panel) as response:
        assert response.status == 303
    query = "&".join(f"{k}={v}" for k, v in ADD.items())
    for path in PAGES + ("/admin/sign-out", "/admin/sign-in"):
        async with panel.get(f"{path}?{query}", allow_redirects=False) as response:
            assert response.status in (200, 303, 405), path
    assert await imap_accounts(panel) == []
    async with panel.get("/admin/imap-accounts", allow_redirects=False) as response:
        assert response.status == 200  # GET /admin/sign-out did not sign out


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(panel):
    async with await sign_in(panel) as response:
        copied = response.cookies[sessions.COOKIE].value
    token = await form_token(panel, "/admin/imap-accounts")
    async with panel.post("/admin/sign-out", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "sign-in"
    panel.session.cookie_jar.update_cookies({sessions.COOKIE: copied})
    async with panel.get("/admin/imap-accounts", allow_redirects=False) as response:
        assert response.status == 303 and "sign-in" in response.headers["Location"]


async def test_an_idle_session_ends(panel, monkeypatch):
    async with await sign_in(panel) as response:
        assert response.status == 303
    real = sessions.time.time
    monkeypatch.setattr(sessions.time, "time", lambda: real() + sessions.IDLE_SECONDS + 1)
    async with panel.get("/admin/imap-accounts", allow_redirects=False) as response:
        assert response.status == 303 and "sign-in" in response.headers["Location"]


async def test_the_accounts_page_escapes_a_hostile_account(panel, db, cli):
    hostile = '<script>alert(1)</script>'
    code, _, err = await cli("department", "add", hostile, "--address", "support@xyzhosting.com")
    assert code == 0, err
    async with await sign_in(panel) as response:
        assert response.status == 303
    token = await form_token(panel)
    async with panel.post("/admin/imap-accounts/add", data=ADD | {"csrf": token, "server": '"><img src=x>'},
                          allow_redirects=False) as response:
        assert response.status == 303, await response.text()

    def spoil(s):
        row = imap_store.account_by_name(s, "support-inbox")
        row.last_error = '<img src=x onerror="alert(2)">'

    await db.run(spoil, write=True)
    async with panel.get("/admin/imap-accounts") as response:
        page = await response.text()
        assert_protected(response.headers)
    assert "Home</a> » Help Desk » Settings » Email Parser »" in page and "IMAP Accounts</span>" in page
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page
    assert "Saved without testing the connection." in page and "IMAP account support-inbox added" in page


async def test_adding_an_account_from_the_form(panel, db, cli):
    code, _, err = await cli("department", "add", "Support", "--address", "support@xyzhosting.com")
    assert code == 0, err
    async with await sign_in(panel) as response:
        assert response.status == 303
    async with panel.get("/admin/imap-accounts/add") as response:
        page = await response.text()
    assert 'name="port" type="text" value="993"' in page and "Confirm password" in page
    token = csrf_of(page)
    async with panel.post("/admin/imap-accounts/add", data=ADD | {"csrf": token, "port": "110"},
                          allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "../imap-accounts"
    async with panel.get("/admin/imap-accounts") as response:
        page = await response.text()
    assert "Warning: port 110 is the POP3 port, not IMAP&#39;s" in page  # the seed's form said 110
    row = await db.run(imap_store.account_by_name, "support-inbox")
    assert (row.port, row.username, row.enabled) == (110, "support@xyzhosting.com", True)
    assert b"s3cret-pass" not in row.password_encrypted


async def test_mismatched_passwords_are_shown_next_to_the_field(panel):
    async with await sign_in(panel) as response:
        assert response.status == 303
    token = await form_token(panel)
    async with panel.post("/admin/imap-accounts/add", data=ADD | {"csrf": token, "confirm": "something else"},
                          allow_redirects=False) as response:
        page = await response.text()
        assert response.status == 400
    confirm = page[page.index('<label for="confirm">'):]
    confirm = confirm[:confirm.index("</p>")]
    assert 'aria-describedby="confirm-error"' in confirm and "The two passwords do not match." in confirm
    assert "s3cret-pass" not in page  # passwords are never sent back
    assert 'value="support-inbox"' in page and 'value="imap.example.net"' in page  # the rest is kept
    assert await imap_accounts(panel) == []


async def test_an_error_from_the_admin_layer_sits_beside_its_field(panel):
    async with await sign_in(panel) as response:
        assert response.status == 303
    token = await form_token(panel)
    cases = {"port": ({"port": "70000"}, "not a TCP port"), "email": ({"email": "nobody"}, "is not an email address"),
             "name": ({"name": "bad name!"}, "account name"),
             "department": ({}, "no department owns support@xyzhosting.com"),
             "port ": ({"port": "99a"}, "A port is a number")}
    for field, (change, text) in cases.items():
        async with panel.post("/admin/imap-accounts/add", data=ADD | {"csrf": token} | change) as response:
            page = await response.text()
            assert response.status == 400, field
        assert re.search(rf'id="{field.strip()}-error" class="field-error">[^<]*{re.escape(text)}', page), field
    assert await imap_accounts(panel) == []


def admin_routes(app: web.Application) -> list[tuple[str, str]]:
    """Every panel route but the sign-in page, as (method, a path with each {placeholder} filled in)."""
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical
        if route.method in ("GET", "POST") and path.startswith("/admin") and path != "/admin/sign-in":
            routes.add((route.method, re.sub(r"\{[^}]+\}", "1", path)))
    return sorted(routes)


async def row_counts(db) -> dict[str, int]:
    from sqlalchemy import func, select

    from storage.models import Base

    async with db.session() as s:
        return {t.name: await s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


async def test_every_panel_route_needs_a_session_posts_need_the_token_and_gets_change_nothing(panel, db, cli):
    """Whatever sections the panel has: each route is guarded, each POST checked, no GET changes a row."""
    for argv in (("department", "add", "Support", "--address", "support@xyzhosting.com"),
                 ("customer", "add", "alice@customer.example")):
        assert (await cli(*argv))[0] == 0
    routes = admin_routes(panel.app)
    assert {"/admin/tickets", "/admin/held", "/admin/rules", "/admin/departments", "/admin/customers",
            "/admin/imap-accounts", "/admin/audit"} <= {path for _, path in routes}  # every section is there
    for method, path in routes:
        async with panel.request(method, path, data={"csrf": "x" * 32}, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], (method, path)
    async with await sign_in(panel) as response:
        assert response.status == 303
    before = await row_counts(db)
    for method, path in routes:
        if method == "GET":
            async with panel.get(f"{path}?{'&'.join(f'{k}={v}' for k, v in ADD.items())}",
                                 allow_redirects=False) as response:
                assert response.status in (200, 303, 404), (path, response.status)
                assert_protected(response.headers)
    assert await row_counts(db) == before, "a GET changed the database"
    for method, path in routes:
        if method == "POST" and path != "/admin/sign-out":
            async with panel.post(path, data={"csrf": "not the token"}, allow_redirects=False) as response:
                assert response.status == 403, path
                assert "The form could not be checked" in await response.text()
    assert await row_counts(db) == before, "a POST refused by the CSRF check changed the database"

async def test_an_id_beyond_the_integer_columns_is_no_row_not_an_error(panel):
    """PostgreSQL's id columns are 32-bit: a longer number in a path or ?before= names nothing (404, or
    the first page), where asking the database for it was a 500."""
    async with await sign_in(panel) as response:
        assert response.status == 303
    for path, status in (("/admin/held/999999999999999999/discard-and-block", 404), ("/admin/tickets/99999999999", 404),
                         ("/admin/customers/99999999999999/edit", 404), ("/admin/held?before=999999999999999999", 200),
                         ("/admin/held/failed?before=99999999999", 200), ("/admin/audit?before=999999999999999999", 200),
                         ("/admin/tickets/1/attachments/99999999999", 404)):
        async with panel.get(path) as response:
            assert response.status == status, path
