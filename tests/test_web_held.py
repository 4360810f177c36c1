"""The panel's held, rejected and failed mail over real HTTP on loopback, with mail delivered over LMTP."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from types import SimpleNamespace

from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from bridge.accounts import Secret
from ingest import tickets
from storage.models import AuditEntry, Challenge, Message, Outbox, utcnow
from tests.conftest import deliver
from tests.mail import message
from tests.panel_helpers import PASSWORD, form_token, panel, sign_in  # noqa: F401 - panel is a fixture
from tests.test_web_confirm import assert_protected
from tests.test_writer_failed import poison
from ticketmail.admin import admins
from ticketmail.admin.held import challenge_state
from ticketmail.config import Config
from web.app import create_app

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
ALICE = "alice@customer.example"
BOB = "bob@newcomer.example"
CAROL = "carol@newcomer.example"
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAGES = ("/admin/held", "/admin/held/rejected", "/admin/held/failed", "/admin/held/1/discard-and-block",
         "/admin/held/purge")
POSTS = ("/admin/held/1/release", "/admin/held/1/discard", "/admin/held/1/discard-and-block",
         "/admin/held/failed/1/retry", "/admin/held/purge")


async def desk(cli, support="challenge", sales="hold"):
    for name, address, policy in (("Support", SUPPORT, support), ("Sales", SALES, sales)):
        code, _, err = await cli("department", "add", name, "--address", address, "--unknown-sender", policy)
        assert code == 0, err
    await cli("customer", "add", ALICE)


async def signed_in(client) -> str:
    """Sign in; the CSRF token of the held page's forms."""
    async with await sign_in(client) as response:
        assert response.status == 303
    return await form_token(client, "/admin/held")


async def page(client, path: str) -> str:
    async with client.get(path) as response:
        assert response.status == 200, path
        return await response.text()


async def post(client, path: str, token: str, status: int = 303, **data):
    async with client.post(path, data={"csrf": token, **data}, allow_redirects=False) as response:
        assert response.status == status, (path, await response.text())
        return response.headers.get("Location"), await response.text()


async def messages(db) -> dict[str, Message]:
    """The stored messages by subject."""
    async with db.session() as s:
        rows = await s.scalars(select(Message).options(selectinload(Message.events)).order_by(Message.id))
        return {m.subject: m for m in rows}


def by_subject(text: str) -> dict[str, str]:
    """The rows of a list page's table by their subject (the third cell)."""
    rows = re.findall(r"<tr>(.*?)</tr>", text.split("<tbody>")[1], re.S)
    return {re.findall(r"<td>(.*?)</td>", row, re.S)[2]: row for row in rows}


async def as_json(cli, *argv):
    code, out, err = await cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)


async def test_every_held_page_needs_a_session(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Waiting"))
    for path in PAGES:
        async with panel.get(path, allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
            assert_protected(response.headers)
    token = await form_token(panel, "/admin/sign-in")
    held_id = (await messages(db))["Waiting"].id
    for path in POSTS:  # a valid CSRF pair is not a session
        async with panel.post(path.replace("/1/", f"/{held_id}/"), data={"csrf": token, "days": "0"},
                              allow_redirects=False) as response:
            assert response.status == 303 and "sign-in" in response.headers["Location"], path
    assert (await messages(db))["Waiting"].status == "held"


async def test_the_held_list_shows_the_reason_and_the_senders_challenge(panel, cli, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Challenged"))
    await deliver(lmtp.port, "noreply@shop.example", SUPPORT, message(frm="noreply@shop.example", subject="Robot"))
    await deliver(lmtp.port, CAROL, SALES, message(frm=CAROL, to=SALES, subject="For review"))
    await signed_in(panel)
    text = await page(panel, "/admin/held")
    rows = by_subject(text)
    challenged = rows["Challenged"]
    assert f"unknown sender {BOB} held: Support challenges unknown senders" in challenged
    assert "<strong>queued</strong>" in challenged and f"challenge to {BOB} queued" in challenged
    assert "not sent yet; the link works until" in challenged
    expires = (utcnow() + timedelta(days=7)).strftime("%Y-%m-%d")
    assert expires in challenged and "<td>Support</td>" in challenged
    assert "<strong>suppressed</strong>" in rows["Robot"] and "no challenge: noreply@shop.example is an automatic" \
        in rows["Robot"]
    review = rows["For review"]
    assert f"unknown sender {CAROL} held for review (Sales holds unknown senders)" in review
    assert "<strong>none</strong>" in review and "<td>Sales</td>" in review
    assert 'action="1/release"' in text or 'action="held/1/release"' in text  # a relative form action


def test_the_challenge_state_in_words():
    now = utcnow()
    message = SimpleNamespace(events=[SimpleNamespace(kind="challenge-capped", detail="no challenge sent yet: 3 "
                                                      "challenges to this mailbox in 24 hours (per_sender_daily = 3)")])
    challenge = SimpleNamespace(state="open", sender=BOB, created_at=now - timedelta(hours=1),
                                expires_at=now + timedelta(days=7), used_at=None, closed_reason="")
    assert challenge_state(message, SimpleNamespace(capped=True), None, None, now) == (
        "capped", "no challenge sent yet: 3 challenges to this mailbox in 24 hours (per_sender_daily = 3)")
    sent = challenge_state(message, SimpleNamespace(capped=False), challenge, ("sent", now, ""), now)
    assert sent[0] == "sent" and sent[1].startswith(f"challenge sent {now:%Y-%m-%d %H:%M} UTC to {BOB}")
    assert challenge_state(message, SimpleNamespace(capped=False), challenge, ("failed", None, "550 no such user"),
                           now) == ("failed", f"the challenge mail to {BOB} could not be sent: 550 no such user")
    assert challenge_state(message, SimpleNamespace(capped=False), challenge, None, now + timedelta(days=8))[0] == \
        "expired"
    challenge.state, challenge.closed_reason = "closed", "sender blocked by admin"
    assert challenge_state(message, SimpleNamespace(capped=False), challenge, None, now) == (
        "closed", "challenge closed: sender blocked by admin")


async def test_release_makes_a_ticket_and_closes_the_senders_challenge(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Let me in"))
    held = (await messages(db))["Let me in"]
    token = await signed_in(panel)
    location, _ = await post(panel, f"/admin/held/{held.id}/release", token)
    assert location == "../../held"
    text = await page(panel, "/admin/held")
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["customer"], ticket["subject"], ticket["department"]) == (BOB, "Let me in", "Support")
    assert f"Message {held.id} released as ticket #{ticket['number']}. {BOB}&#39;s pending challenge was closed." \
        in text
    assert "No held mail." in text
    async with db.session() as s:
        challenge = await s.scalar(select(Challenge))
        entry = await s.scalar(select(AuditEntry).where(AuditEntry.action == "held.release"))
    assert challenge.state == "closed" and challenge.closed_reason == "released by admin (held release)"
    assert (entry.actor, entry.subject) == ("admin alice", f"message {held.id}")
    text = await page(panel, "/admin/held")
    assert "released as ticket" not in text  # the notice was shown once
    # Releasing it again: not held any more, said on the list, nothing changes.
    _, text = await post(panel, f"/admin/held/{held.id}/release", token, status=400)
    assert f"message {held.id} is not held (it is ticket)" in text and 'role="alert"' in text
    assert len(await as_json(cli, "tickets", "list")) == 1


async def test_discard_and_discard_and_block(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Unwanted"))
    await deliver(lmtp.port, CAROL, SALES, message(frm=CAROL, to=SALES, subject="Spammy"))
    stored = await messages(db)
    token = await signed_in(panel)
    await post(panel, f"/admin/held/{stored['Unwanted'].id}/discard", token)
    text = await page(panel, "/admin/held")
    assert f"Message {stored['Unwanted'].id} from {BOB} discarded" in text and "Unwanted" not in text.split(
        "role=\"status\"")[1].split("</p>", 1)[1]
    assert "discarded by admin" in await page(panel, "/admin/held/rejected")

    spammy = stored["Spammy"].id
    text = await page(panel, f"/admin/held/{spammy}/discard-and-block")  # asks first
    assert "Discard and block sender?" in text and CAROL in text and 'action="discard-and-block"' in text
    assert (await messages(db))["Spammy"].status == "held"
    location, _ = await post(panel, f"/admin/held/{spammy}/discard-and-block", token)
    assert location == "../../held"
    assert f"Message {spammy} discarded and {CAROL} blocked" in await page(panel, "/admin/held")
    # Carol's next mail is deleted on arrival.
    [(code, _)] = await deliver(lmtp.port, CAROL, SALES, message(frm=CAROL, to=SALES, subject="Again"))
    assert code == 250
    after = await messages(db)
    assert after["Spammy"].status == "deleted" and after["Again"].status == "deleted"
    assert f"sender {CAROL} is blocked" in after["Again"].events[-1].detail
    rejected = await page(panel, "/admin/held/rejected")
    assert f"sender {CAROL} is blocked by an admin (held unblock lifts it)" in rejected


async def test_the_rejected_list_shows_each_reason(panel, cli, db, lmtp, tmp_path):
    await desk(cli, support="reject")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "drop-tagged-spam"\nconditions = [{ field = "subject", op = "contains", '
                     'value = "[Spam]" }]\nactions = [{ action = "delete" }]\n')
    code, _, err = await cli("rules", "import", str(rules))
    assert code == 0, err
    [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Who are you"))
    assert code == 550
    await deliver(lmtp.port, ALICE, SUPPORT, message(frm=ALICE, subject="[Spam] cheap pills"))
    await signed_in(panel)
    text = await page(panel, "/admin/held/rejected")
    assert f"<strong>rejected</strong>: unknown sender {BOB} rejected (Support accepts only known customers)" in text
    assert "<strong>deleted</strong>: deleted by rule; the raw message is kept until `held purge`" in text
    rows = by_subject(text)
    assert set(rows) == {"[Spam] cheap pills", "Who are you"}
    assert "rule &#34;drop-tagged-spam&#34; matched: subject contains" in rows["[Spam] cheap pills"]
    # Kept until `held purge`: then emptied (the record and its events stay) and no longer listed.
    code, out, err = await cli("held", "purge", "--days", "0")
    assert code == 0 and out.startswith("2 messages purged"), err
    assert "No rejected or deleted mail." in await page(panel, "/admin/held/rejected")
    assert {(m.status, m.raw) for m in (await messages(db)).values()} == {("purged", b"")}


async def test_a_failing_message_is_listed_with_its_error_and_retried(panel, cli, db, lmtp, monkeypatch):
    await desk(cli, support="accept")
    act = tickets.act
    poison(monkeypatch, RuntimeError("the printer module is broken"))
    raw = message(frm=BOB, subject="POISON printer")
    [(code, _)] = await deliver(lmtp.port, BOB, SUPPORT, raw)
    assert code == 250
    failed = (await messages(db))["POISON printer"]
    assert (failed.status, failed.raw) == ("failed", raw)
    token = await signed_in(panel)
    text = await page(panel, "/admin/held/failed")
    assert "processing failed: RuntimeError: the printer module is broken" in text
    assert f'action="failed/{failed.id}/retry"' in text
    # The cause is still there: it stays failed, with the new error.
    location, _ = await post(panel, f"/admin/held/failed/{failed.id}/retry", token)
    assert location == "../../failed"
    text = await page(panel, "/admin/held/failed")
    assert f"Message {failed.id} failed again: RuntimeError: the printer module is broken" in text
    again = (await messages(db))["POISON printer"]
    assert again.status == "failed" and again.events[-1].detail == (
        "retry by admin alice failed: RuntimeError: the printer module is broken")
    assert await as_json(cli, "tickets", "list") == []
    monkeypatch.setattr(tickets, "act", act)  # the cause is gone
    await post(panel, f"/admin/held/failed/{failed.id}/retry", token)
    text = await page(panel, "/admin/held/failed")
    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["subject"], ticket["customer"], ticket["department"]) == ("POISON printer", BOB, "Support")
    assert f"Message {failed.id} processed again: ticket #{ticket['number']}" in text and "No failed mail." in text
    done = (await messages(db))["POISON printer"]
    assert done.status == "ticket" and [e.kind for e in done.events][-3:] == ["retried", "customer", "ticket-created"]
    async with db.session() as s:
        entries = (await s.scalars(select(AuditEntry).where(AuditEntry.action == "failed.retry")
                                   .order_by(AuditEntry.id))).all()
    assert [(e.actor, e.detail) for e in entries] == [
        ("admin alice", "failed again: RuntimeError: the printer module is broken"),
        ("admin alice", f"now ticket, ticket #{ticket['number']}")]
    # Only a failed message can be retried.
    _, text = await post(panel, f"/admin/held/failed/{failed.id}/retry", token, status=400)
    assert f"message {failed.id} has not failed (it is ticket)" in text


async def test_csrf_is_checked_on_every_post(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Waiting"))
    held_id = (await messages(db))["Waiting"].id
    token = await signed_in(panel)
    for path in POSTS:
        path = path.replace("/1/", f"/{held_id}/")
        for data, headers in (({}, {}), ({"csrf": "x" * 32}, {}), ({"csrf": token}, {"Origin": "https://evil.example"})):
            async with panel.post(path, data=data | {"days": "0"}, headers=headers, allow_redirects=False) as response:
                assert response.status == 403, (path, data, headers)
    assert (await messages(db))["Waiting"].status == "held"
    async with db.session() as s:
        assert (await s.scalars(select(AuditEntry).where(AuditEntry.action.like("held.%")))).all() == []


async def test_get_changes_nothing(panel, cli, db, lmtp, monkeypatch):
    await desk(cli, sales="hold")
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Waiting"))
    act = tickets.act
    poison(monkeypatch, RuntimeError("broken"))
    await deliver(lmtp.port, CAROL, SALES, message(frm=CAROL, to=SALES, subject="POISON"))
    monkeypatch.setattr(tickets, "act", act)
    before = {subject: (m.status, len(m.events)) for subject, m in (await messages(db)).items()}
    await signed_in(panel)
    for subject in ("Waiting", "POISON"):
        message_id = (await messages(db))[subject].id
        for path in POSTS + PAGES:
            async with panel.get(path.replace("/1/", f"/{message_id}/") + "?csrf=x&block=1",
                                 allow_redirects=False) as response:
                assert response.status in (200, 404, 405), path  # 404: not held, nothing to confirm
    assert {subject: (m.status, len(m.events)) for subject, m in (await messages(db)).items()} == before
    assert await as_json(cli, "tickets", "list") == []


async def test_hostile_subjects_and_senders_are_shown_escaped(panel, cli, db, lmtp, monkeypatch):
    await desk(cli, sales="hold")
    quoted = '"' + IMG.replace('"', '\\"') + '"'  # the display name, quoted as a mail program would
    hostile = message(frm=f"{quoted} <{BOB}>", to=SALES, subject=SCRIPT)
    await deliver(lmtp.port, BOB, SALES, hostile)
    poison(monkeypatch, RuntimeError(SCRIPT), marker="alert")
    await deliver(lmtp.port, CAROL, SALES, message(frm=f"{quoted} <{CAROL}>", to=SALES, subject=f"{SCRIPT} again"))
    held_id = (await messages(db))[SCRIPT].id
    await signed_in(panel)
    for path in ("/admin/held", f"/admin/held/{held_id}/discard-and-block", "/admin/held/failed"):
        text = await page(panel, path)
        assert SCRIPT not in text and "<img" not in text, path
        assert html.escape(SCRIPT, quote=True).replace("&#x27;", "&#39;") in text, path
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in text, path


async def test_purge_asks_first_checks_the_days_and_empties_old_mail(panel, cli, db, lmtp):
    await desk(cli)
    await deliver(lmtp.port, BOB, SALES, message(frm=BOB, to=SALES, subject="Old"))
    token = await signed_in(panel)
    assert "No held, rejected or deleted mail is that old." in await page(panel, "/admin/held/purge")  # 14 days
    for value in ("abc", "\u00b2", "1" * 30):  # a page past the end, or none: the first page
        assert "Old" in by_subject(await page(panel, f"/admin/held?before={value}"))
    text = await page(panel, "/admin/held/purge?days=0")
    assert "1 message would be emptied." in text and 'name="days" value="0"' in text
    for value in ("abc", "-1", "99999"):
        async with panel.get(f"/admin/held/purge?days={value}") as response:
            assert response.status == 400
            assert re.search(r'id="days-error" class="field-error">A whole number of days', await response.text())
        _, text = await post(panel, "/admin/held/purge", token, status=400, days=value)
        assert re.search(r'aria-describedby="days-error">\s*<strong id="days-error" class="field-error">A whole '
                         r'number of days, from 0 to 36500.</strong>', text), value
    assert (await messages(db))["Old"].status == "held"  # nothing purged so far
    location, _ = await post(panel, "/admin/held/purge", token, days="0")
    assert location == "rejected"
    assert "1 messages purged (held, deleted or rejected more than 0 days ago)" in await page(
        panel, "/admin/held/rejected")
    old = (await messages(db))["Old"]
    assert (old.status, old.raw, old.events[-1].kind) == ("purged", b"", "purged")
    async with db.session() as s:
        entry = await s.scalar(select(AuditEntry).where(AuditEntry.action == "held.purge"))
    assert (entry.actor, entry.subject) == ("admin alice", "1 messages")


async def test_a_retried_message_may_be_challenged_with_the_configured_link(db, cli, lmtp, monkeypatch, tmp_path):
    """The retry acts as the delivery would have: here a challenge, its link from [web] public_url."""
    await desk(cli, support="challenge")
    act = tickets.act
    poison(monkeypatch, RuntimeError("broken"))
    await deliver(lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="POISON challenge me"))
    monkeypatch.setattr(tickets, "act", act)
    failed_id = (await messages(db))["POISON challenge me"].id
    config = Config(database_url=db.url)
    config.bridge.key_file = str(tmp_path / "secret.key")
    config.web.public_url, config.challenge.held_days = "http://help.example.com/desk", 3
    app = create_app(db, config)
    await admins.add(db, "alice", Secret(PASSWORD), by="test")
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        token = await signed_in(client)
        await post(client, f"/admin/held/failed/{failed_id}/retry", token)
        assert f"Message {failed_id} processed again: held" in await page(client, "/admin/held/failed")
        assert 'name="days" value="3"' in await page(client, "/admin/held/purge")  # held_days
    async with db.session() as s:
        mail = await s.scalar(select(Outbox))
    assert mail.rcpt_to == BOB and b"http://help.example.com/desk/confirm/" in mail.content
    assert (await messages(db))["POISON challenge me"].status == "held"
