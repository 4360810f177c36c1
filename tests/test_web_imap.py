"""The panel's IMAP accounts section over real HTTP: the list's state, add, edit, test connection (against the
test Dovecot), enable/disable and remove, each through ticketmail/admin/imap.py and in the audit log."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bridge.accounts import Secret, decrypt, load_key
from ingest.delivery import Delivery
from storage import imap_store
from storage.models import utcnow
from tests.bridge_helpers import add_account, bridge_key, departments, run_bridge, wait_until  # noqa: F401 - fixtures
from tests.dovecot import USERS, dovecot  # noqa: F401 - dovecot is a fixture
from tests.ports import refusing_port
from tests.mail import message
from tests.panel_helpers import csrf_of, form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from tests.test_web_confirm import assert_protected
from ticketmail.admin import admins, audit
from ticketmail.config import Config
from web.app import create_app
from web.keys import DB, SERVICES, Services
from web.panel import PANEL

SUPPORT = "support@xyzhosting.com"
ADD = {"name": "support-inbox", "email": SUPPORT, "server": "imap.example.net", "port": "993", "security": "tls",
       "user": "", "folder": "INBOX", "after": "seen", "move_folder": "", "department": "", "poll_seconds": "60",
       "ca_file": "", "password": "s3cret-pass", "confirm": "s3cret-pass", "no_test": "on"}
EDIT = {k: v for k, v in ADD.items() if k not in ("password", "confirm")} | {"password": "", "confirm": ""}
ACCOUNT = "/admin/imap-accounts/support-inbox"
POSTS = (f"{ACCOUNT}/edit", f"{ACCOUNT}/test", f"{ACCOUNT}/enable", f"{ACCOUNT}/disable", f"{ACCOUNT}/remove")
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ATTR = '"><img src=x onerror=alert(1)>'


@pytest.fixture
async def support(cli):
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    assert code == 0, err


async def signed_in(client) -> None:
    async with await sign_in(client) as response:
        assert response.status == 303


async def add(client, **changes) -> None:
    """Add an account with the panel's form (signed in); by default support-inbox, saved without a test."""
    token = await form_token(client)
    async with client.post("/admin/imap-accounts/add", data=ADD | {"csrf": token} | changes,
                           allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def page(client, path: str) -> str:
    async with client.get(path) as response:
        assert response.status == 200, path
        assert_protected(response.headers)
        return await response.text()


async def row(client, name="support-inbox"):
    return await client.app[DB].run(imap_store.account_by_name, name)


def password_of(client, account) -> str:
    return decrypt(load_key(client.app[PANEL].bridge_config), account.password_encrypted, account.name).reveal()


async def actions(client) -> list[tuple[str, str, str]]:
    return [(e.action, e.subject, e.detail) for e in reversed(await audit.recent(client.app[DB]))
            if e.action.startswith("imap.")]


def beside(page: str, field: str) -> str:
    """The paragraph of the form that holds `field`'s label, input and error."""
    part = page[page.index(f'<label for="{field}">'):]
    return part[:part.index("</p>")]


async def test_each_route_needs_a_session_and_get_changes_nothing(panel, support):
    await signed_in(panel)
    await add(panel)
    token = await form_token(panel, "/admin/imap-accounts")
    async with panel.post("/admin/sign-out", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 303
    for path in (f"{ACCOUNT}/edit", f"{ACCOUNT}/remove"):
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    token = await form_token(panel, "/admin/sign-in")
    for path in POSTS:  # a valid CSRF pair is not a session
        async with panel.post(path, data=EDIT | {"csrf": token, "server": "other.example.net"},
                              allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    await signed_in(panel)
    query = "&".join(f"{k}={v}" for k, v in (EDIT | {"server": "other.example.net"}).items())
    for path in POSTS:  # a GET of any of them, even with a form's fields, changes nothing
        async with panel.get(f"{path}?{query}", allow_redirects=False) as response:
            assert response.status in (200, 405), path
    account = await row(panel)
    assert (account.server, account.enabled) == ("imap.example.net", True)
    assert [a for a, _, _ in await actions(panel)] == ["imap.add"]


async def test_csrf_is_checked_on_every_post(panel, support):
    await signed_in(panel)
    await add(panel)
    token = await form_token(panel, "/admin/imap-accounts")
    for path in POSTS:
        for data, headers in (({}, {}), ({"csrf": "x" * 32}, {}),
                              ({"csrf": token}, {"Origin": "https://evil.example"})):
            async with panel.post(path, data=EDIT | {"server": "other.example.net"} | data, headers=headers,
                                  allow_redirects=False) as response:
                assert response.status == 403, (path, data, headers)
                assert "The form could not be checked" in await response.text()
    account = await row(panel)
    assert (account.server, account.enabled) == ("imap.example.net", True)
    assert [a for a, _, _ in await actions(panel)] == ["imap.add"]


async def test_the_add_form_has_every_setting_of_imap_add(panel, support):
    await signed_in(panel)
    form = await page(panel, "/admin/imap-accounts/add")
    assert 'name="port" type="text" value="993"' in form and 'name="folder" type="text" value="INBOX"' in form
    assert 'name="poll_seconds" type="text" value="60"' in form and '<option value="seen" selected>' in form
    assert 'name="no_test"' in form and 'name="skip_verify"' in form
    await add(panel, folder="Support", after="move", move_folder="Done", poll_seconds="30", port="995",
              user="helpdesk")
    account = await row(panel)
    assert (account.folder, account.after_action, account.poll_seconds, account.port, account.username) == (
        "Support", "move:Done", 30, 995, "helpdesk")
    assert "Warning: port 995 is the POP3 over TLS port" in await page(panel, "/admin/imap-accounts")
    token = csrf_of(form)
    cases = {"move_folder": ({"name": "b", "after": "move"}, "Name the folder to move imported mail to."),
             "poll_seconds": ({"name": "b", "poll_seconds": "2"}, "must be 5 or more"),
             "folder": ({"name": "b", "folder": " "}, "the folder is missing"),
             "after": ({"name": "b", "after": "archive"}, "expected seen, delete or move:FOLDER"),
             "name": ({}, "IMAP account &#39;support-inbox&#39; already exists"),
             "ca_file": ({"name": "b", "ca_file": "/nonexistent/ca.pem"}, "no such file")}
    for field, (change, text) in cases.items():
        async with panel.post("/admin/imap-accounts/add", data=ADD | {"csrf": token} | change) as response:
            assert response.status == 400, field
            assert text in beside(await response.text(), field), field
    assert [s.name for s in await panel.app[DB].run(imap_store.accounts)] == ["support-inbox"]


async def test_the_list_shows_state_last_message_and_who_syncs(panel, db, support, pipeline):
    await signed_in(panel)
    await add(panel)
    assert "never synced" in await page(panel, "/admin/imap-accounts")
    assert "none yet" in await page(panel, "/admin/imap-accounts")
    for subject in ("Older one", "Printer on fire"):
        await pipeline.deliver(Delivery(message(subject=subject), sender="alice@customer.example",
                                        recipient=SUPPORT, source="imap:support-inbox", source_key="1/1",
                                        account="support-inbox"))
    await pipeline.deliver(Delivery(message(subject="Came by LMTP"), sender="bob@customer.example",
                                    recipient=SUPPORT))
    account = await row(panel)
    await db.run(imap_store.record_sync, account.id, 3, write=True)
    await db.run(imap_store.record_error, account.id, "connection to imap.example.net:993 timed out", write=True)
    listed = await page(panel, "/admin/imap-accounts")
    now = utcnow().strftime("%Y-%m-%d")
    assert f"last sync {now}" in listed and "backlog 3 waiting" in listed
    assert f"last error at {now}" in listed and "connection to imap.example.net:993 timed out" in listed
    assert "Printer on fire" in listed and "Older one" not in listed and "Came by LMTP" not in listed
    assert ("SQLite: one process" in listed) == db.is_sqlite
    if not db.is_sqlite:  # PostgreSQL: the `serve` process holding the account's lease
        assert "no <code>ticketmail serve</code> process syncs it now" in listed
        assert await db.run(imap_store.take_lease, account.id, "web1:4242:abc", 60, write=True)
        assert "synced by web1:4242:abc</span>" in await page(panel, "/admin/imap-accounts")
        assert await db.run(imap_store.take_lease, account.id, "web1:4242:abc", -1, write=True)
        assert "last synced by web1:4242:abc, whose lease has expired" in await page(panel, "/admin/imap-accounts")


async def test_edit_keeps_the_password_when_blank_and_changes_it_when_given(panel, support):
    await signed_in(panel)
    await add(panel)
    form = await page(panel, f"{ACCOUNT}/edit")
    assert 'value="support-inbox"' in form and 'value="imap.example.net"' in form and "s3cret" not in form
    assert "Leave both empty to keep the stored password." in form
    token = csrf_of(form)
    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token, "server": "mail.example.net",
                          "after": "delete"}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "../../imap-accounts"
    account = await row(panel)
    assert (account.server, account.after_action, account.enabled) == ("mail.example.net", "delete", True)
    assert password_of(panel, account) == "s3cret-pass"
    listed = await page(panel, "/admin/imap-accounts")
    assert ("IMAP account support-inbox saved: server imap.example.net -&gt; mail.example.net; "
            "after seen -&gt; delete.") in listed

    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token, "server": "mail.example.net",
                          "password": "new-pass", "confirm": "not the same"}) as response:
        assert response.status == 400
        assert "The two passwords do not match." in beside(await response.text(), "confirm")
    assert password_of(panel, await row(panel)) == "s3cret-pass"

    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token, "server": "mail.example.net",
                          "after": "delete", "password": "new-pass", "confirm": "new-pass"},
                          allow_redirects=False) as response:
        assert response.status == 303
    assert password_of(panel, await row(panel)) == "new-pass"
    assert await actions(panel) == [
        ("imap.add", "support-inbox", "support@xyzhosting.com on imap.example.net:993"),
        ("imap.edit", "support-inbox", "server imap.example.net -> mail.example.net; after seen -> delete"),
        ("imap.edit", "support-inbox", "password changed")]


async def test_edit_refuses_what_prepare_refuses_beside_the_field(panel, support, cli):
    code, _, err = await cli("department", "add", "Sales", "--address", "sales@xyzhosting.com")
    assert code == 0, err
    await signed_in(panel)
    await add(panel)
    await add(panel, name="sales-inbox", email="sales@xyzhosting.com")
    token = await form_token(panel, f"{ACCOUNT}/edit")
    cases = {"name": ({"name": "Sales-Inbox"}, "IMAP account &#39;Sales-Inbox&#39; already exists"),
             "port": ({"port": "70000"}, "not a TCP port"), "email": ({"email": "nobody"}, "not an email address"),
             "department": ({"department": "Nowhere"}, "no department &#39;Nowhere&#39;"),
             "server": ({"server": " "}, "the IMAP server is missing"),
             "move_folder": ({"after": "move"}, "Name the folder")}
    for field, (change, text) in cases.items():
        async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token} | change) as response:
            page_text = await response.text()
            assert response.status == 400, field
        assert re.search(rf'id="{field}-error" class="field-error">[^<]*{re.escape(text)}', page_text), field
        assert 'name="folder" type="text" value="INBOX"' in page_text  # the rest of the form is kept
    assert (await row(panel)).port == 993 and [a for a, _, _ in await actions(panel)] == ["imap.add", "imap.add"]

    # A new name of its own is fine; the old one no longer answers.
    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token, "name": "helpdesk"},
                          allow_redirects=False) as response:
        assert response.status == 303
    assert await row(panel) is None and (await row(panel, "helpdesk")).server == "imap.example.net"
    assert "Renamed from support-inbox" in await page(panel, "/admin/imap-accounts")
    async with panel.get(f"{ACCOUNT}/edit") as response:
        assert response.status == 404 and "There is no IMAP account support-inbox." in await response.text()


async def test_disable_enable_and_remove(panel, db, support, pipeline):
    await signed_in(panel)
    await add(panel)
    await pipeline.deliver(Delivery(message(subject="Imported before"), sender="alice@customer.example",
                                    recipient=SUPPORT, source="imap:support-inbox", source_key="1/1"))
    token = await form_token(panel, "/admin/imap-accounts")
    async with panel.post(f"{ACCOUNT}/disable", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "../../imap-accounts"
    assert (await row(panel)).enabled is False
    listed = await page(panel, "/admin/imap-accounts")
    assert "IMAP account support-inbox disabled" in listed and "<strong>disabled</strong>" in listed
    assert 'action="imap-accounts/support-inbox/enable"' in listed
    async with panel.post(f"{ACCOUNT}/enable", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 303
    assert (await row(panel)).enabled is True
    assert 'action="imap-accounts/support-inbox/disable"' in await page(panel, "/admin/imap-accounts")

    asked = await page(panel, f"{ACCOUNT}/remove")  # asks first, and asking changes nothing
    assert "Remove IMAP account support-inbox? The mail it imported stays." in asked
    assert '<form method="post" action="remove">' in asked
    assert await row(panel) is not None
    async with panel.post(f"{ACCOUNT}/remove", data={"csrf": csrf_of(asked)}, allow_redirects=False) as response:
        assert response.status == 303
    assert await row(panel) is None
    listed = await page(panel, "/admin/imap-accounts")
    assert "IMAP account support-inbox removed. The mail it imported stays" in listed
    assert "No IMAP accounts yet." in listed
    assert [a for a, _, _ in await actions(panel)] == ["imap.add", "imap.disable", "imap.enable", "imap.remove"]
    assert (await db.run(imap_store.last_imported, "imap:support-inbox")).subject == "Imported before"
    async with panel.post(f"{ACCOUNT}/remove", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 404


async def test_test_connection_against_dovecot_and_a_closed_port(panel, support, dovecot):
    await asyncio.to_thread(dovecot.append, "support", [message(subject="waiting")])
    await signed_in(panel)
    # Added with the test (no_test unchecked): the test's lines are on the list it returns to.
    await add(panel, server="127.0.0.1", port=str(dovecot.tls_port), user="support", ca_file=str(dovecot.ca_file),
              password=USERS["support"], confirm=USERS["support"], no_test="")
    listed = await page(panel, "/admin/imap-accounts")
    assert f"connected to 127.0.0.1:{dovecot.tls_port} (TLS, TLSv1" in listed and "logged in as support" in listed
    token = csrf_of(listed)
    async with panel.post(f"{ACCOUNT}/test", data={"csrf": token}, allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "../../imap-accounts"
    listed = await page(panel, "/admin/imap-accounts")
    assert "Test connection of support-inbox:" in listed and "logged in as support" in listed
    assert "folder INBOX: 1 message, 1 unseen, UIDVALIDITY" in listed
    assert "capabilities: IDLE yes, UIDPLUS yes, MOVE yes" in listed and "IMAP account support-inbox: OK" in listed
    assert "Test connection of" not in await page(panel, "/admin/imap-accounts")  # a notice is shown once

    # An edit is tested too before it is saved: a folder the server lacks changes nothing.
    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {
            "csrf": token, "server": "127.0.0.1", "port": str(dovecot.tls_port), "user": "support",
            "ca_file": str(dovecot.ca_file), "folder": "Missing", "no_test": ""}) as response:
        assert response.status == 400
        assert "folder &#39;Missing&#39; does not exist" in await response.text()
    assert (await row(panel)).folder == "INBOX"
    async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {
            "csrf": token, "server": "127.0.0.1", "port": str(dovecot.tls_port), "user": "support",
            "ca_file": str(dovecot.ca_file), "poll_seconds": "30", "no_test": ""}, allow_redirects=False) as response:
        assert response.status == 303
    listed = await page(panel, "/admin/imap-accounts")
    assert "logged in as support" in listed and "IMAP account support-inbox saved: poll_seconds 60 -&gt; 30." in listed

    with refusing_port() as closed:
        await add(panel, name="closed", server="127.0.0.1", port=str(closed), security="none")
        async with panel.post("/admin/imap-accounts/closed/test", data={"csrf": token}) as response:
            listed = await response.text()
    assert f'<p role="alert">Test connection failed: imap test closed: connection to 127.0.0.1:{closed} ' \
           "refused (no IMAP server listening there?)</p>" in listed


async def test_hostile_names_servers_errors_and_subjects_are_escaped(panel, db, support, pipeline, dovecot):
    await signed_in(panel)
    await add(panel, server="127.0.0.1", port=str(dovecot.tls_port), user="support", ca_file=str(dovecot.ca_file),
              password=USERS["support"], confirm=USERS["support"])
    await pipeline.deliver(Delivery(message(subject=HOSTILE), sender="alice@customer.example",
                                    recipient=SUPPORT, source="imap:support-inbox", source_key="1/1"))

    def spoil(s):  # what validation would refuse, as if written by an older version or by hand
        account = imap_store.account_by_name(s, "support-inbox")
        account.folder, account.last_error, account.email = HOSTILE, HOSTILE_ATTR, HOSTILE_ATTR

    await db.run(spoil, write=True)
    token = await form_token(panel, "/admin/imap-accounts")
    async with panel.post(f"{ACCOUNT}/test", data={"csrf": token}) as response:  # the server names the folder
        listed = await response.text()
    assert "Test connection failed: imap test support-inbox: folder &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;" \
           " does not exist" in listed
    escaped, escaped_attr = "&lt;script&gt;alert(1)&lt;/script&gt;", "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"
    listed = await page(panel, "/admin/imap-accounts")
    assert f"folder {escaped}" in listed and f"{escaped_attr}</td>" in listed  # the folder, the last error
    assert f"{escaped}<br>" in listed  # the last message's subject
    edit = await page(panel, f"{ACCOUNT}/edit")
    assert f'name="folder" type="text" value="{escaped}"' in edit and f'value="{escaped_attr}"' in edit
    asked = await page(panel, f"{ACCOUNT}/remove")
    assert f"{escaped_attr} on 127.0.0.1" in asked
    for shown in (listed, edit, asked):
        assert "<script>" not in shown and "<img" not in shown

    def rename(s):
        imap_store.account_by_name(s, "support-inbox").name = HOSTILE

    await db.run(rename, write=True)
    listed = await page(panel, "/admin/imap-accounts")
    assert "<script>" not in listed and 'href="imap-accounts/%3Cscript%3Ealert%281%29%3C/script%3E/edit"' in listed


async def test_pointing_an_account_at_other_mail_starts_its_checkpoint_again(panel, db, support):
    await signed_in(panel)
    await add(panel)
    account = await row(panel)
    await db.run(imap_store.start_uidvalidity, account.id, 7, 0, write=True)
    await db.run(imap_store.advance, account.id, 7, 42, 0, write=True)
    token = await form_token(panel, f"{ACCOUNT}/edit")
    for change, checkpoint in (({"poll_seconds": "30"}, (7, 42, 0)),  # the same mailbox: carries on
                               ({"poll_seconds": "30", "folder": "Support"}, (None, 0, 0))):
        async with panel.post(f"{ACCOUNT}/edit", data=EDIT | {"csrf": token} | change,
                              allow_redirects=False) as response:
            assert response.status == 303
        assert await db.run(imap_store.checkpoint, account.id) == checkpoint, change


async def test_the_list_shows_what_each_sync_loop_is_doing_now(db, dovecot, add_account, run_bridge, tmp_path):
    """The panel runs in the serve process beside the bridge: the account's loop says idle (IDLE) once it
    waits for new mail, and 'reconnecting' after its server is gone."""
    assert (await add_account(dovecot))[0] == 0
    supervisor = await run_bridge()
    config = Config(database_url=db.url)
    config.bridge.key_file = str(tmp_path / "secret.key")
    app = create_app(db, config)
    app[SERVICES] = services = Services()
    services.imap_activity = supervisor.activity
    await admins.add(db, "alice", Secret("correct horse battery"), by="test")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await signed_in(client)

        async def shows(words: str) -> bool:
            return bool(re.search(f"<strong>{words}</strong> in this process", await page(client, "/admin/imap-accounts")))

        await wait_until(lambda: shows(r"idle \(IDLE\)"), 15, "the account shown idle in IDLE")
        async with client.get("/healthz") as response:  # and the health check says so too
            [account] = (await response.json())["imap_accounts"]
            assert (response.status, account["name"], account["activity"]) == (200, "support", "idle (IDLE)")
        await asyncio.to_thread(dovecot.stop)
        await wait_until(lambda: shows(r"reconnecting in \d+ s"), 15, "the account shown reconnecting")
