"""The panel's tickets over real HTTP on loopback: the list's filters, search and paging, a ticket's page, its
attachments as downloads, and status, priority and tag changes; on SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from storage import ticket_search
from storage.models import Attachment, AuditEntry, Message, Ticket, utcnow
from tests.conftest import deliver
from tests.mail import message
from tests.panel_helpers import form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from ticketmail.admin import tickets

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
ALICE = "alice@customer.example"
BOB = "bob@newcomer.example"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
POSTS = ("status", "priority", "tags")


async def desk(cli):
    for name, address in (("Support", SUPPORT), ("Sales", SALES)):
        code, _, err = await cli("department", "add", name, "--address", address, "--unknown-sender", "accept")
        assert code == 0, err


async def signed_in(client) -> str:
    """Sign in; the CSRF token of the list page's forms."""
    async with await sign_in(client) as response:
        assert response.status == 303
    return await form_token(client, "/admin/tickets")


async def page(client, path: str, status: int = 200) -> str:
    async with client.get(path) as response:
        assert response.status == status, (path, await response.text())
        return await response.text()


async def post(client, path: str, token: str, expect: int = 303, **data):
    async with client.post(path, data={"csrf": token, **data}, allow_redirects=False) as response:
        assert response.status == expect, (path, await response.text())
        return response.headers.get("Location"), await response.text()


def numbers(text: str) -> list[int]:
    """The ticket numbers a list page shows, in its order."""
    if "<tbody>" not in text:
        return []
    return [int(n) for n in re.findall(r'<td><a href="[^"]*">#(\d+)</a></td>', text.split("<tbody>")[1])]


def next_link(text: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', text)
    return "/admin/" + html.unescape(found[1]) if found else None


async def ticket_numbers(db) -> dict[str, int]:
    """The stored tickets' numbers by subject."""
    async with db.session() as s:
        return {t.subject: t.id for t in await s.scalars(select(Ticket))}


async def stored(db, number: int) -> Ticket:
    async with db.session() as s:
        return await s.get(Ticket, number)


async def audit_entries(db) -> list[tuple[str, str, str, str]]:
    async with db.session() as s:
        rows = await s.scalars(select(AuditEntry).where(AuditEntry.action.like("ticket.%")).order_by(AuditEntry.id))
        return [(e.actor, e.action, e.subject, e.detail) for e in rows]


async def add_tickets(db, count: int, **values) -> list[int]:
    """`count` tickets without messages, updated a minute apart (pairs at the same instant), oldest first."""
    start = utcnow() - timedelta(days=30)

    def add(s):
        made = [Ticket(subject=f"Bulk {i}", updated_at=start + timedelta(minutes=i // 2), **values)
                for i in range(count)]
        s.add_all(made)
        s.flush()
        return [t.id for t in made]

    return await db.run(add, write=True)


async def test_every_ticket_page_needs_a_session(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="Hello"))
    for path in ("/admin/tickets", "/admin/tickets/1", "/admin/tickets/1/attachments/1"):
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303, path
            assert "sign-in" in response.headers["Location"], path
    for name in POSTS:
        async with panel.post(f"/admin/tickets/1/{name}", data={name: "closed"}, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"]
    assert (await stored(db, 1)).status == "open"


async def test_home_is_the_ticket_list(panel):
    await signed_in(panel)
    async with panel.get("/admin/", allow_redirects=False) as response:
        assert response.status == 303 and response.headers["Location"] == "tickets"


async def test_the_list_is_newest_first_and_filters_by_department_status_customer_and_tag(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="Printer"))
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Quote"))
    await deliver(lmtp.port, ALICE, SALES, message(frm=ALICE, to=SALES, subject="Invoice"))
    n = await ticket_numbers(db)
    await tickets.set_status(db, n["Quote"], "closed", by="test")
    await tickets.set_tags(db, n["Invoice"], ["billing", "vip"], by="test")
    await signed_in(panel)
    text = await page(panel, "/admin/tickets")
    assert numbers(text) == [n["Invoice"], n["Quote"], n["Printer"]]
    assert "billing, vip" in text and ALICE in text and "Sales" in text
    for query, expected in (("department=Sales", ["Invoice", "Quote"]), ("department=Support", ["Printer"]),
                            ("status=closed", ["Quote"]), ("status=open", ["Invoice", "Printer"]),
                            (f"customer={ALICE.upper()}", ["Invoice", "Printer"]), ("tag=vip", ["Invoice"]),
                            ("tag=bill", []), ("department=Sales&status=open&tag=billing", ["Invoice"]),
                            ("department=Nobody", [])):
        text = await page(panel, f"/admin/tickets?{query}")
        assert numbers(text) == [n[s] for s in expected], query
        if not expected:
            assert "No tickets match." in text
    text = await page(panel, "/admin/tickets?status=pending", status=400)
    assert re.search(r'id="status-error" class="field-error">unknown status &#39;pending&#39;', text)
    assert 'aria-describedby="status-error"' in text


@pytest.mark.parametrize("many", [ticket_search.MANY_MATCHES, 1], ids=["few-matches", "many-matches"])
async def test_search_finds_a_word_in_the_subject_sender_or_body_of_its_ticket_only(panel, cli, db, lmtp, many,
                                                                                    monkeypatch):
    monkeypatch.setattr(ticket_search, "MANY_MATCHES", many)  # SQLite reads a common word's tickets another way
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=f"Alice Zebrafield <{ALICE}>", subject="Printer",
                                                     body="The toner smells of burnt marmalade.\n"))
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Quote for a gazebo",
                                                 body="How much is the toner?\n"))
    n = await ticket_numbers(db)
    # A follow-up: its words find the ticket too (and it is now the newest).
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject=f"Re: [Ticket #{n['Printer']}] Printer",
                                                     body="Also the paper tray hums.\n"))
    await signed_in(panel)
    for words, expected in (("marmalade", ["Printer"]), ("MARMALADE burnt", ["Printer"]), ("hums", ["Printer"]),
                            ("gazebo", ["Quote for a gazebo"]), ("zebrafield", ["Printer"]),
                            (BOB, ["Quote for a gazebo"]), ("toner", ["Printer", "Quote for a gazebo"]),
                            ("toner marmalade", ["Printer"]), ("marmalade gazebo", []), ("marma", [])):
        text = await page(panel, f"/admin/tickets?q={words}")
        assert numbers(text) == [n[s] for s in expected], words
    assert numbers(await page(panel, "/admin/tickets?q=toner&department=Support")) == [n["Printer"]]
    # Operators, quotes and punctuation are words, never syntax: no error, and no match unless the words are there.
    for hostile in ('"', "'", '"toner', "toner AND", "NEAR(toner gazebo)", "toner*", "* OR *", "-toner", "subject:toner",
                    "'; DROP TABLE tickets; --", "(", ")", "^toner", "\\", "%", "toner\x00", "!!!", "a" * 300):
        async with panel.get("/admin/tickets", params={"q": hostile}) as response:
            assert response.status == 200, hostile
            assert SCRIPT not in await response.text()
    assert numbers(await page(panel, "/admin/tickets?q=NEAR%28toner+gazebo%29")) == []
    assert numbers(await page(panel, "/admin/tickets?q=%22toner")) == [n["Printer"], n["Quote for a gazebo"]]
    assert len(await ticket_numbers(db)) == 2


async def test_pages_follow_one_another_without_overlap_or_gap(panel, db):
    made = await add_tickets(db, 2 * tickets.PAGE + 7)
    await signed_in(panel)
    seen, path, pages = [], "/admin/tickets", 0
    while path:
        text = await page(panel, path)
        seen += numbers(text)
        path, pages = next_link(text), pages + 1
    assert pages == 3
    assert seen == sorted(made, key=lambda n: (made.index(n) // 2, n), reverse=True)  # same instant: by number
    # Filters are carried along.
    await db.run(lambda s: [setattr(t, "status", "closed") for t in s.scalars(select(Ticket)) if t.id % 2 == 0],
                 write=True)
    closed, path = [], "/admin/tickets?status=closed"
    while path:
        text = await page(panel, path)
        closed += numbers(text)
        path = next_link(text)
    assert closed == [n for n in seen if n % 2 == 0] and len(closed) > tickets.PAGE
    for value in ("abc", "1-", "-1", "9" * 40 + "-1", "1-12345678901234"):  # not a key: the first page
        assert numbers(await page(panel, f"/admin/tickets?before={value}")) == seen[:tickets.PAGE]


def hostile_message() -> bytes:
    mail = EmailMessage()
    quoted = '"' + IMG.replace('"', '\\"') + '"'
    mail["From"] = f"{quoted} <{ALICE}>"
    mail["To"] = SUPPORT
    mail["Subject"] = SCRIPT
    mail["Message-ID"] = "<hostile@customer.example>"
    mail.set_content(f"Plain words {SCRIPT}\n")
    mail.add_alternative("""<html><head><style>p { color: red }</style><script>alert(2)</script></head><body>
<p onclick="alert(3)">Shown words</p><img src=x onerror=alert(4)><img src="https://tracker.example/pixel.png">
<img src="cid:logo@here" alt="logo"><a href="javascript:alert(5)">click</a><a href="https://example.org/ok">fine</a>
<iframe src="https://evil.example/"></iframe><form action="https://evil.example/"><input name=x></form></body></html>""",
                          subtype="html")
    mail.add_attachment(b"<script>alert(6)</script>", maintype="text", subtype="html", filename="../../x.html")
    mail.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename=f"{SCRIPT}.pdf")
    return bytes(mail)


async def test_a_hostile_message_is_shown_inert_and_its_attachments_download(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, hostile_message())
    [number] = (await ticket_numbers(db)).values()
    async with db.session() as s:
        delivered = {a.filename: a.id for a in await s.scalars(select(Attachment))}
        message_id = (await s.scalars(select(Message.id))).one()
    # The parser keeps no folder or markup in a filename; one stored with them (older data) is shown inert too.
    raw = await db.run(lambda s: _attach(s, message_id, {"../../x.html": "text/html", f"{SCRIPT}.txt": "text/plain",
                                                         f"{IMG}.pdf": "application/pdf"}), write=True)
    await signed_in(panel)
    escaped_script = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in ("/admin/tickets", f"/admin/tickets/{number}", "/admin/tickets?q=plain"):
        text = await page(panel, path)
        assert "<script" not in text and not re.search(r"<[^>]*\son\w+\s*=", text), path  # no event attribute
        assert "javascript:" not in text and "tracker.example" not in text and "<iframe" not in text, path
        assert "<img src=x" not in text and "<form action" not in text and "evil.example" not in text, path
        assert escaped_script in text, path
    text = await page(panel, f"/admin/tickets/{number}")
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text  # the sender's name, escaped
    assert f"Plain words {escaped_script}" in text and "Shown words" in text  # text and cleaned HTML
    assert '<a href="https://example.org/ok" rel="noopener noreferrer nofollow">fine</a>' in text
    assert '<img src="cid:logo@here" alt="logo">' in text and "evil.example" not in text
    assert f"{escaped_script}.txt" in text and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;.pdf" in text
    for attachment_id, ascii_name, name, served in (
            (delivered["x.html"], "x.html", "x.html", "application/octet-stream"),
            (raw["../../x.html"], "x.html", "x.html", "application/octet-stream"),
            (raw[f"{IMG}.pdf"], "img src_x onerror_alert_1_.pdf", "%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.pdf",
             "application/pdf"),
            (raw[f"{SCRIPT}.txt"], "script_.txt", "script%3E.txt", "text/plain")):
        async with panel.get(f"/admin/tickets/{number}/attachments/{attachment_id}") as response:
            assert response.status == 200
            assert response.headers["Content-Disposition"] == (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{name}"), attachment_id
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.content_type == served, attachment_id
            if name == "x.html":
                assert await response.read() == b"<script>alert(6)</script>"
    # An attachment of another ticket, or none, is not found through this one.
    other = (await add_tickets(db, 1))[0]
    await page(panel, f"/admin/tickets/{other}/attachments/{raw['../../x.html']}", status=404)
    await page(panel, f"/admin/tickets/{number}/attachments/99999", status=404)
    for path in ("/admin/tickets/99999", "/admin/tickets/12345678901234", "/admin/tickets/-1", "/admin/tickets/x",
                 f"/admin/tickets/{number}/attachments/12345678901234"):
        await page(panel, path, status=404)


def _attach(s, message_id: int, names: dict[str, str]) -> dict[str, int]:
    made = {name: Attachment(message_id=message_id, filename=name, content_type=kind, size=25, sha256="0" * 64,
                             content=b"<script>alert(6)</script>") for name, kind in names.items()}
    s.add_all(made.values())
    s.flush()
    return {name: a.id for name, a in made.items()}


async def test_the_ticket_page_shows_its_messages_oldest_first_with_their_events(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=f"Alice <{ALICE}>", subject="Printer on fire",
                                                     body="It smokes.\n"))
    [number] = (await ticket_numbers(db)).values()
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject=f"Re: [Ticket #{number}] Printer on fire",
                                                     body="Now it is out.\n"))
    await signed_in(panel)
    text = await page(panel, f"/admin/tickets/{number}")
    first, second = text.index("It smokes."), text.index("Now it is out.")
    assert first < second
    assert '<pre class="body">It smokes.' in text
    assert f"Alice &lt;{ALICE}&gt;" in text and SUPPORT in text and "2026-11-28 10:00 UTC" in text
    assert re.search(r"<strong>ticket-created</strong>: new ticket in Support", text[first:second])
    assert re.search(r"<strong>appended</strong>: follow-up on ticket #\d+", text[second:])
    assert "2 messages" in text


async def test_status_priority_and_tags_change_with_an_audit_entry(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="Printer"))
    [number] = (await ticket_numbers(db)).values()
    token = await signed_in(panel)
    path = f"/admin/tickets/{number}"
    location, _ = await post(panel, f"{path}/status", token, status="closed")
    assert location == f"../{number}"
    assert f"Ticket #{number}: status changed from open to closed." in await page(panel, path)
    await post(panel, f"{path}/priority", token, priority="urgent")
    await post(panel, f"{path}/tags", token, tags=" vip, billing ,vip,, ")
    ticket = await stored(db, number)
    assert (ticket.status, ticket.priority, ticket.tags) == ("closed", "urgent", ["vip", "billing"])
    assert await audit_entries(db) == [
        ("admin alice", "ticket.status", f"#{number}", "open -> closed"),
        ("admin alice", "ticket.priority", f"#{number}", "normal -> urgent"),
        ("admin alice", "ticket.tags", f"#{number}", "(none) -> vip, billing")]
    text = await page(panel, "/admin/tickets?tag=billing&status=closed")
    assert numbers(text) == [number] and "urgent" in text
    # Refused values: the page again, the sentence beside its field, nothing changed.
    for name, value, said in (("status", "pending", "unknown status &#39;pending&#39;"),
                              ("priority", SCRIPT, "unknown priority &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;"),
                              ("tags", ",".join(f"t{i}" for i in range(21)), "at most 20 tags")):
        _, text = await post(panel, f"{path}/{name}", token, expect=400, **{name: value})
        assert re.search(rf'id="{name}-error" class="field-error">{re.escape(said)}', text), name
        assert SCRIPT not in text
    again = await stored(db, number)
    assert (again.status, again.priority, again.tags) == ("closed", "urgent", ["vip", "billing"])
    assert len(await audit_entries(db)) == 3
    async with panel.post("/admin/tickets/99999/status", data={"csrf": token, "status": "open"}) as response:
        assert response.status == 404
        assert "There is no ticket #99999." in await response.text()


async def test_csrf_is_checked_on_every_post_and_get_changes_nothing(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="Printer"))
    [number] = (await ticket_numbers(db)).values()
    token = await signed_in(panel)
    values = {"status": "closed", "priority": "high", "tags": "x"}
    for name in POSTS:
        for data, headers in (({}, {}), ({"csrf": "x" * 32}, {}), ({"csrf": token}, {"Origin": "https://evil.example"})):
            async with panel.post(f"/admin/tickets/{number}/{name}", data=data | {name: values[name]}, headers=headers,
                                  allow_redirects=False) as response:
                assert response.status == 403, (name, data, headers)
        async with panel.get(f"/admin/tickets/{number}/{name}", params={"csrf": token, name: values[name]},
                             allow_redirects=False) as response:
            assert response.status == 405, name
    for path in ("/admin/tickets", f"/admin/tickets/{number}"):
        await page(panel, f"{path}?status=closed&priority=high&tags=x&csrf={token}")
    ticket = await stored(db, number)
    assert (ticket.status, ticket.priority, ticket.tags) == ("open", "normal", [])
    assert await audit_entries(db) == []


OLD_ROWS = ("""INSERT INTO tickets (id, subject, status, priority, tags, created_at, updated_at)
                VALUES (1, 'Old', 'open', 'normal', '[]', '2026-01-01', '2026-01-01')""",
            """INSERT INTO messages (id, dedup_key, ticket_id, status, from_addr, from_name, to_addrs, cc_addrs, subject,
                text, html, sha256, size, source, source_key, envelope_sender, envelope_recipient, received_at, raw)
                VALUES (1, 'k', 1, 'ticket', 'a@example.com', 'Ann', '[]', '[]', 'Old', 'quinoa salad', '', 'h', 1,
                'lmtp', '', '', '', '2026-01-01', '\\x00')""")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    """A database with no schema yet, of each kind (PostgreSQL: its own, dropped after)."""
    import uuid

    from tests.conftest import PG_ADMIN_URL, _pg

    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = f"ticketmail_migration_{uuid.uuid4().hex[:10]}"
    try:
        _pg(lambda c: c.execute(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 - as the pg_database fixture: skipped only outside CI
        request.getfixturevalue("pg_database")
        pytest.skip(f"PostgreSQL: {e}")
    yield f"{PG_ADMIN_URL.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    _pg(lambda c: c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_existing_messages_are_searchable_after_the_migration(empty_url):
    """0010 indexes the rows it finds, its triggers (SQLite) follow later changes, and it can be undone and
    done again."""
    import asyncio

    from alembic import command
    from sqlalchemy import text

    from storage.database import Database, _alembic_config, upgrade_async
    from storage.ticket_search import Filters, tickets_page

    async def found(db, word):
        return await db.run(lambda s: [t.id for t, *_ in tickets_page(s, Filters(text=word), limit=10)])

    await asyncio.to_thread(command.upgrade, _alembic_config(empty_url), "0009")  # it runs a loop of its own
    db = Database(empty_url)
    try:
        async with db.engine.begin() as conn:
            for statement in OLD_ROWS:
                if db.is_sqlite:
                    statement = statement.replace("'\\x00'", "x'00'")
                await conn.execute(text(statement))
        await upgrade_async(empty_url)
        assert await found(db, "quinoa") == [1]
        await db.run(lambda s: setattr(s.get(Message, 1), "text", "lentil soup"), write=True)
        for word, expected in (("quinoa", []), ("lentil", [1]), ("ann", [1]), ("old", [1])):
            assert await found(db, word) == expected, word
        await asyncio.to_thread(command.downgrade, _alembic_config(empty_url), "0009")
        await db.engine.dispose()
        await upgrade_async(empty_url)
        assert await found(db, "lentil") == [1]
        await db.run(lambda s: s.delete(s.get(Message, 1)), write=True)
        assert await found(db, "lentil") == []
    finally:
        await db.dispose()


async def test_the_search_reads_the_index_the_migration_made(db):
    """PostgreSQL uses an expression index only for the very same expression: the query's must be the index's."""
    from sqlalchemy import text

    from storage.ticket_search import PG_DOCUMENT

    async with db.session() as s, s.begin():
        if db.is_sqlite:
            plan = (await s.execute(text("EXPLAIN QUERY PLAN SELECT rowid FROM message_search "
                                         "WHERE message_search MATCH '\"x\"'"))).all()
            assert "VIRTUAL TABLE INDEX" in " ".join(str(row[-1]) for row in plan)
            plan = (await s.execute(text("EXPLAIN QUERY PLAN SELECT id FROM tickets WHERE (updated_at, id) < "
                                         "('2026-01-01', 5) ORDER BY updated_at DESC, id DESC LIMIT 51"))).all()
            assert "ix_tickets_updated" in " ".join(str(row[-1]) for row in plan)
        else:
            await s.execute(text("SET LOCAL enable_seqscan = off"))
            plan = (await s.scalars(text(f"EXPLAIN SELECT messages.id FROM messages "
                                         f"WHERE {PG_DOCUMENT} @@ plainto_tsquery('simple', 'x')"))).all()
            assert "ix_messages_search" in "\n".join(plan)
