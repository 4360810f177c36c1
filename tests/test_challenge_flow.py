"""Challenge-response end to end, as a newcomer meets it: mail over LMTP, the challenge at a real SMTP
sink, the link opened (GET and HEAD change nothing), the button pressed (POST), tickets made."""

from __future__ import annotations

import asyncio
import re

from sqlalchemy import select, update

from ingest import confirm
from ingest.challenges import token_hash
from storage.database import Database
from storage.models import Challenge, Customer, Message, Outbox
from tests import statuscodes as codes
from tests.challenge_helpers import BOB, SALES, SUPPORT, as_json, desk  # noqa: F401 - desk is a fixture
from tests.conftest import deliver
from tests.mail import message

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def snapshot(db) -> dict:
    """What the database holds about challenges, held mail and customers, to compare before and after."""

    def read(s):
        return {
            "challenges": [(c.sender, c.state, c.used_at) for c in s.scalars(select(Challenge).order_by(Challenge.id))],
            "messages": [(m.id, m.status, m.ticket_id) for m in s.scalars(select(Message).order_by(Message.id))],
            "customers": [(c.email, c.verified) for c in s.scalars(select(Customer).order_by(Customer.id))],
        }

    return await db.run(read)


async def open_page(desk, link):
    async with desk.http.get(link) as response:
        return response.status, await response.text(), response.headers


async def press_confirm(desk, link, page: str | None = None):
    """What the browser does on the button: POST the form with its CSRF value (and the cookie)."""
    if page is None:
        _, page, _ = await open_page(desk, link)
    form = {"csrf": CSRF.search(page).group(1)}
    async with desk.http.post(link, data=form, allow_redirects=False) as response:
        return response.status, response.headers.get("Location"), await response.text()


async def test_newcomer_confirms_and_the_held_mail_becomes_a_ticket(desk, cli, db):
    raw = message(frm=f"Bob Newcomer <{BOB}>", subject="Server down", Message_ID="<first@newcomer.example>")
    [(code, reply)] = await deliver(desk.lmtp.port, BOB, SUPPORT, raw)
    assert code == codes.OK and b"held" in reply
    assert await as_json(cli, "tickets", "list") == []

    mail = await desk.challenge()
    # The envelope: null sender (no bounce can come back to anyone), to the sender only.
    assert (mail.mail_from, mail.rcpt_tos) == ("<>", [BOB])  # aiosmtpd shows MAIL FROM:<> as "<>"
    m = mail.message
    assert m["From"].addresses[0].addr_spec == SUPPORT and m["From"].addresses[0].display_name == "Support"
    assert m["To"].addresses[0].addr_spec == BOB and len(m["To"].addresses) == 1
    assert m["Auto-Submitted"] == "auto-replied" and m["Precedence"] == "bulk"
    assert m["In-Reply-To"] == "<first@newcomer.example>" and "<first@newcomer.example>" in m["References"]
    assert m["Subject"].startswith("Please confirm:") and "Server down" not in m["Subject"]
    assert m["X-Ticketmail-Challenge"] and m["Message-ID"].startswith("<ticketmail-challenge.")
    assert "the printer is on fire" not in mail.content.decode() and "7 days" in mail.text
    html = m.get_body(("html",)).get_content()
    assert mail.link in html
    assert mail.link.startswith(desk.url + "/confirm/")

    # The token is kept only as its hash, and the sent mail's copy is forgotten.
    token = mail.link.rsplit("/", 1)[1]
    async with db.session() as s:
        challenge = await s.scalar(select(Challenge))
        outbox = await s.scalar(select(Outbox))
    assert challenge.token_hash == token_hash(token) and token not in repr(vars(challenge))
    assert (outbox.state, outbox.content) == ("sent", b"")

    before = await snapshot(db)
    status, page, headers = await open_page(desk, mail.link)
    assert status == 200
    assert BOB in page and "Support" in page and "1 message is" in page and "<button" in page
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    async with desk.http.head(mail.link) as response:
        assert response.status == 200
    assert await snapshot(db) == before  # a link scanner's GET or HEAD confirms nothing

    status, location, _ = await press_confirm(desk, mail.link, page)
    assert status == 303 and location == f"{token}/done"
    async with desk.http.get(mail.link + "/done") as response:
        done = await response.text()
    assert response.status == 200 and "Ticket #1" in done

    [ticket] = await as_json(cli, "tickets", "list")
    assert (ticket["number"], ticket["customer"], ticket["subject"], ticket["department"]) == (
        1, BOB, "Server down", "Support")
    [customer] = await as_json(cli, "customer", "list")
    assert (customer["email"], customer["verified"], customer["added_by"]) == (BOB, True, "challenge")
    assert await as_json(cli, "held", "list") == []

    # From now on Bob is a customer: his next mail is a ticket, and nobody challenges him again.
    [(code, reply)] = await deliver(desk.lmtp.port, BOB, SUPPORT, message(frm=BOB, subject="Also the mail"))
    assert code == codes.OK and b"ticket #2" in reply
    await desk.outbox.run_once()
    assert len(desk.sink.received) == 1
    # The used link now says so, and reveals nothing.
    status, page, _ = await open_page(desk, mail.link)
    assert status == 410 and BOB not in page and "already been used" in page


async def test_later_mail_joins_the_pending_challenge_and_is_released_with_it(desk, cli, db):
    await desk.deliver(message(frm=BOB, subject="first"))
    await desk.deliver(message(frm=BOB, subject="second", to=SALES), recipient=SALES)
    await desk.deliver(message(frm=BOB, subject="third"))
    mail = await desk.challenge()
    await desk.outbox.run_once()
    assert len(desk.sink.received) == 1  # one challenge for all three
    status, page, _ = await open_page(desk, mail.link)
    assert "3 messages are" in page
    held = await as_json(cli, "held", "list")
    assert [h["subject"] for h in held] == ["first", "second", "third"]
    assert "waits for the challenge" in held[1]["reason"]

    status, _, _ = await press_confirm(desk, mail.link, page)
    assert status == 303
    tickets = sorted(await as_json(cli, "tickets", "list"), key=lambda t: t["number"])
    assert [(t["number"], t["subject"], t["department"]) for t in tickets] == [
        (1, "first", "Support"), (2, "second", "Sales"), (3, "third", "Support")]  # in arrival order
    async with desk.http.get(mail.link + "/done") as response:
        done = await response.text()
    assert all(f"Ticket #{n}" in done for n in (1, 2, 3))


async def test_confirming_twice_releases_nothing_more(desk, cli):
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    _, page, _ = await open_page(desk, mail.link)
    first = await press_confirm(desk, mail.link, page)
    again = await press_confirm(desk, mail.link, page)  # the back button, a double click
    assert first[:2] == again[:2] and first[0] == 303
    assert len(await as_json(cli, "tickets", "list")) == 1


async def test_two_confirmations_racing_release_each_message_exactly_once(desk, cli, db):
    for n in range(5):
        await desk.deliver(message(frm=BOB, subject=f"message {n}"))
    mail = await desk.challenge()
    _, page, _ = await open_page(desk, mail.link)
    # Two browsers' POSTs at once, and three more confirmations through other engines (on PostgreSQL,
    # other connections truly in parallel).
    engines = [Database(db.url) for _ in range(3)]
    token = mail.link.rsplit("/", 1)[1]

    def confirm_in(engine):
        return engine.run(lambda s: confirm.confirm(s, token, ticket_prefix="Ticket"), write=True)

    try:
        results = await asyncio.gather(press_confirm(desk, mail.link, page), press_confirm(desk, mail.link, page),
                                       *(confirm_in(e) for e in engines))
    finally:
        for e in engines:
            await e.dispose()
    assert [r[0] for r in results[:2]] == [303, 303]
    assert all(sorted(r) == [1, 2, 3, 4, 5] for r in results[2:])
    tickets = await as_json(cli, "tickets", "list")
    assert sorted(t["subject"] for t in tickets) == [f"message {n}" for n in range(5)]
    async with db.session() as s:
        statuses = (await s.scalars(select(Message.status))).all()
    assert statuses == ["ticket"] * 5


async def test_post_without_the_form_value_confirms_nothing(desk, db):
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    await open_page(desk, mail.link)  # has the cookie, but a forged form has no value
    before = await snapshot(db)
    async with desk.http.post(mail.link, data={"csrf": "x" * 32}) as response:
        assert response.status == 403 and "try again" in await response.text()
    cross = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    _, page, _ = await open_page(desk, mail.link)
    async with desk.http.post(mail.link, data={"csrf": CSRF.search(page).group(1)}, headers=cross) as response:
        assert response.status == 403
    assert await snapshot(db) == before


async def test_unknown_and_expired_links_get_pages_that_reveal_nothing(desk, db, cli):
    for path in ("/confirm/" + "A" * 43, "/confirm/short", "/confirm/" + "A" * 43 + "/done", "/nowhere"):
        async with desk.http.get(desk.url + path) as response:
            page = await response.text()
        assert response.status == 404 and "Link not found" in page
        assert response.headers["Referrer-Policy"] == "no-referrer"
    await desk.deliver(message(frm=BOB))
    mail = await desk.challenge()
    _, form_page, _ = await open_page(desk, mail.link)  # the form (and its cookie), opened in time
    async with db.writer() as s, s.begin():
        await s.execute(update(Challenge).values(expires_at=Challenge.created_at))
    status, page, _ = await open_page(desk, mail.link)
    assert status == 410 and "expired" in page and BOB not in page
    # A forged form is refused by the CSRF check before the link is looked at: it learns nothing.
    async with desk.http.post(mail.link, data={"csrf": "x"}) as response:
        page = await response.text()
    assert response.status == 403 and "try again" in page and "expired" not in page
    # The real form, pressed too late: the link has expired.
    status, location, page = await press_confirm(desk, mail.link, form_page)
    assert (status, location) == (410, None) and "expired" in page and BOB not in page
    assert (await confirm_fails(db, mail.link)) == "expired"
    assert len(await as_json(cli, "held", "list")) == 1 and await as_json(cli, "tickets", "list") == []


async def confirm_fails(db, link) -> str:
    try:
        await db.run(lambda s: confirm.confirm(s, link.rsplit("/", 1)[1], ticket_prefix="Ticket"), write=True)
    except confirm.ChallengeGone as e:
        return e.why
    return "confirmed"
