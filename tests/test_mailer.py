"""The challenge mail's headers are ours alone (issue 7 A): a stranger's Message-ID, References or a
config value cannot add header lines, and bytes that do not read back as written are never sent."""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import re
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from ingest import mailer
from storage.models import Event, Outbox
from tests.challenge_helpers import BOB, SALES, desk  # noqa: F401 - desk is a fixture
from tests.conftest import one_database
from tests.mail import message

LINK = "https://help.example/confirm/abc"
# The headers a challenge carries, in the order it carries them; the two threading ones are optional.
OURS = ["From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted",
        "Precedence", "X-Auto-Response-Suppress", "X-Ticketmail-Challenge", "MIME-Version", "Content-Type"]
WITHOUT_THREAD = [n for n in OURS if n not in ("In-Reply-To", "References")]

# The issue's Message-ID: an encoded word that decodes to CR LF, the attacker's headers and his HTML.
INJECTED = (b"Content-Type: text/html\r\n\r\n<p>Account locked.</p>"
            b"<a href=\"https://unlock.attacker.example/\">Unlock</a>\r\n")
PAYLOAD = "=?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ0K" + base64.b64encode(INJECTED).decode() + "?=@x"


def sample(**changes) -> mailer.ChallengeMail:
    values = dict(department="Sales", from_addr=SALES, to_addr=BOB, link=LINK,
                  expires_at=datetime(2030, 1, 8, tzinfo=timezone.utc), days=7, contact=SALES,
                  subject_prefix="Please confirm:", in_reply_to="first@newcomer.example",
                  references=("older@newcomer.example",))
    return mailer.ChallengeMail(**(values | changes))


def build(mail: mailer.ChallengeMail) -> bytes:
    return mailer.build(mail, mailer.new_mail_id("xyzhosting.com"), mailer.environment("ingest"))


def assert_only_our_headers(raw: bytes, mail: mailer.ChallengeMail) -> email.message.EmailMessage:
    """What a reader of `raw` sees is our headers (each once, in our order), our addresses, ids taken
    unchanged from the held message or none, our subject, and our two-part body."""
    assert raw.isascii() and not re.search(rb"\r(?!\n)|(?<!\r)\n", raw)
    m = email.message_from_bytes(raw, policy=email.policy.default)
    names = m.keys()
    assert names == [n for n in OURS if n in names] and set(WITHOUT_THREAD) <= set(names), names
    assert email.message_from_bytes(raw, policy=email.policy.compat32).keys() == names
    assert not m.defects
    for name in names:  # no value a reader decodes can break a line either
        assert not re.search(r"[\r\n\0]", str(m[name])), (name, str(m[name]))
    [sender] = m["From"].addresses
    assert sender.addr_spec == mail.from_addr and sender.display_name in ("", mail.department)
    assert [a.addr_spec for a in m["To"].addresses] == [mail.to_addr]
    if m["In-Reply-To"] is not None:
        assert str(m["In-Reply-To"]) == f"<{mail.in_reply_to}>"
    given_ids = {f"<{i}>" for i in (*mail.references, mail.in_reply_to) if i is not None}
    assert set(str(m["References"] or "").split()) <= given_ids
    rest = [f"your message to {mail.department}", "your message"]
    assert str(m["Subject"]) in rest + [f"{mail.subject_prefix} {r}" for r in rest]
    parts = list(m.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(mail.link in p.get_content() for p in parts)
    return m


# --- any hostile value, on this interpreter ---------------------------------------------------------

PIECES = st.sampled_from([
    "\r\n", "\r", "\n", "\0", "\t", " ", "@", "<", ">", "<<a@b.example>>", "a@b> <c@d", "\r\nBcc: evil@attacker.example",
    "=?utf-8?b?DQpCY2M6IGV2aWxAYXR0YWNrZXIuZXhhbXBsZQ0K?=", "=?utf-8?q?=0D=0ABcc:_evil@attacker.example?=",
    "=?iso-8859-1?b?DQo=?=", "=?", "?=", "\u202e", "\u2066", "\u200f", "\u2028", "\x85", "\x1b]52;c;aGk=\x07", "é",
    "Soporte Técnico", "x" * 300, "Content-Type: text/html\r\n\r\n<html>", '"', "\\", "(c)",
    "first@newcomer.example", "a@[127.0.0.1]",
])
HOSTILE = st.lists(st.one_of(PIECES, st.text(max_size=12)), max_size=6).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message_id=st.one_of(st.none(), HOSTILE), references=st.lists(HOSTILE, max_size=12),
       department=HOSTILE, prefix=HOSTILE)
def test_hostile_ids_names_and_prefixes_never_add_headers(message_id, references, department, prefix):
    mail = sample(in_reply_to=message_id, references=tuple(references), department=department,
                  subject_prefix=prefix)
    assert_only_our_headers(build(mail), mail)


def test_the_issue_payload_in_message_id_and_references_is_left_out_and_reported():
    mail = sample(in_reply_to=PAYLOAD, references=(PAYLOAD, "older@newcomer.example"))
    notes: list[str] = []
    raw = mailer.build(mail, mailer.new_mail_id("xyzhosting.com"), mailer.environment("ingest"), notes.append)
    m = assert_only_our_headers(raw, mail)
    assert m["In-Reply-To"] is None and m["References"] == "<older@newcomer.example>"
    assert b"attacker" not in raw and b"Account locked" not in raw
    assert any(n.startswith("In-Reply-To left out") for n in notes)
    assert any(n.startswith("References: 1 ") for n in notes)


@pytest.mark.parametrize("department, prefix, subject, shown", [
    ("Soporte Técnico", "Bitte bestätigen:", "Bitte bestätigen: your message to Soporte Técnico", "Soporte Técnico"),
    ("Sales\u202e", "Please confirm:", "Please confirm: your message", ""),  # bidi override: left out
    ("Sales", "=?utf-8?b?SGk=?=", "your message to Sales", "Sales"),  # a reader would decode it: left out
])
def test_names_and_prefixes_are_written_when_plain_and_left_out_otherwise(department, prefix, subject, shown):
    raw = build(sample(department=department, subject_prefix=prefix))
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert (str(m["Subject"]), m["From"].addresses[0].display_name) == (subject, shown)
    assert raw.isascii()


def test_long_references_are_folded_between_ids_not_encoded():
    refs = tuple(f"ref{n}.{'x' * 60}@mail.newcomer.example" for n in range(12)) + ("a@[127.0.0.1]",)
    raw = build(sample(in_reply_to="first@newcomer.example", references=refs))
    # As a reader that threads without decoding anything sees it (the old version wrote encoded words).
    m = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert m["In-Reply-To"] == "<first@newcomer.example>"
    assert m["References"].split() == [f"<{i}>" for i in refs[-10:]] + ["<first@newcomer.example>"]
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78 + len(refs[0])


# --- the check before storing and before sending ----------------------------------------------------

def test_verify_returns_the_headers_as_built():
    raw = build(sample())
    fields = mailer.verify(raw)
    m = email.message_from_bytes(raw, policy=email.policy.default)
    assert [n for n, _ in fields] == m.keys() == OURS
    assert dict(fields)["References"] == "<older@newcomer.example> <first@newcomer.example>"


def _boundary(raw: bytes) -> bytes:
    return re.search(rb'boundary="([^"]+)"', raw).group(1)


TAMPERED = {
    "an extra header": lambda raw: raw.replace(b"\r\nTo: ", b"\r\nBcc: evil@attacker.example\r\nTo: ", 1),
    "a second To": lambda raw: raw.replace(b"\r\nTo: ", b"\r\nTo: evil@attacker.example\r\nTo: ", 1),
    "headers reordered": lambda raw: raw.replace(b"Precedence: bulk\r\n", b"", 1).replace(
        b"Subject:", b"Precedence: bulk\r\nSubject:", 1),
    "a bare LF": lambda raw: raw.replace(b"\r\nTo: ", b"\nTo: ", 1),
    "8-bit": lambda raw: raw.replace(b"Sales <", "Sälès <".encode(), 1),
    "an encoded word in an id": lambda raw: raw.replace(b"<first@", b"<=?utf-8?b?DQo=?=first@", 1),
    "a header block at the top": lambda raw: raw.replace(b"\r\nMIME-Version:", b"\r\n\r\nMIME-Version:", 1),
    "a third part": lambda raw: raw.replace(b"--" + _boundary(raw) + b"--", b"--" + _boundary(raw)
                                            + b"\r\nContent-Type: text/html\r\n\r\n<p>locked</p>\r\n--"
                                            + _boundary(raw) + b"--", 1),
    "text after the last part": lambda raw: raw + b"Account locked\r\n",
}


@pytest.mark.parametrize("how", TAMPERED)
def test_verify_refuses_a_mail_we_did_not_write_exactly(how):
    raw = build(sample())
    tampered = TAMPERED[how](raw)
    assert tampered != raw
    with pytest.raises(mailer.UnsafeMail):
        mailer.verify(tampered)


# What the vulnerable version wrote to the outbox for the issue's Message-ID (CPython 3.11.7).
OLD_ROW = (
    b"From: Sales <sales@xyzhosting.com>\r\nTo: bob@newcomer.example\r\n"
    b"Subject: Please confirm: your message to Sales\r\nDate: Wed, 02 Dec 2026 06:07:53 +0000\r\n"
    b"Message-ID: <ticketmail-challenge.0aa40892c24264ee557f383a@xyzhosting.com>\r\n"
    b"In-Reply-To: <\r\nBcc: evil@attacker.example\r\nContent-Type:\r\n text/html\r\n\r\n"
    b"<p>Account locked.</p><a href=\"https://unlock.attacker.example/\">Unlock</a>@x>\r\n"
    b"References: <\r\nBcc: evil@attacker.example\r\nContent-Type:\r\n text/html\r\n\r\n"
    b"<p>Account locked.</p><a href=\"https://unlock.attacker.example/\">Unlock</a>@x>\r\n"
    b"Auto-Submitted: auto-replied\r\nPrecedence: bulk\r\nX-Auto-Response-Suppress: All\r\n"
    b"X-Ticketmail-Challenge: confirmation request\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative;\r\n boundary=\"===============8522121682914263910==\"\r\n\r\n"
    b"--===============8522121682914263910==\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
    b"Content-Transfer-Encoding: 7bit\r\n\r\nHello\r\n\r\n"
    b"--===============8522121682914263910==\r\nContent-Type: text/html; charset=\"utf-8\"\r\n"
    b"Content-Transfer-Encoding: 7bit\r\nMIME-Version: 1.0\r\n\r\n<p>Hello</p>\r\n\r\n"
    b"--===============8522121682914263910==--\r\n"
)


def test_verify_refuses_what_the_vulnerable_version_wrote():
    with pytest.raises(mailer.UnsafeMail, match="header line"):
        mailer.verify(OLD_ROW)


# --- end to end: LMTP in, the challenge at the SMTP sink --------------------------------------------

async def held_events(db) -> list[tuple[str, str]]:
    async with db.session() as s:
        return [tuple(r) for r in await s.execute(select(Event.kind, Event.detail).order_by(Event.id))]


@one_database
async def test_issue7_encoded_crlf_in_message_id_does_not_inject_headers_into_the_challenge(desk, db):
    await desk.deliver(message(frm=BOB, subject="Hi", Message_ID=f"<{PAYLOAD}>"), recipient=SALES)
    mail = await desk.challenge()
    assert mail.rcpt_tos == [BOB] and mail.message.keys() == WITHOUT_THREAD
    assert b"attacker" not in mail.content and b"Account locked" not in mail.content
    assert_only_our_headers(mail.content, sample(in_reply_to=PAYLOAD, references=(), link=mail.link))
    assert [d for k, d in await held_events(db) if k == "challenge-header"] == [
        f"In-Reply-To left out: the held message's Message-ID {ascii(PAYLOAD)[:80]} is not a well-formed msg-id"]


@one_database
async def test_issue7_encoded_crlf_in_references_does_not_inject_headers_into_the_challenge(desk, db):
    raw = message(frm=BOB, subject="Hi", Message_ID="<first@newcomer.example>",
                  References=f"<{PAYLOAD}> <older@newcomer.example>")
    await desk.deliver(raw, recipient=SALES)
    mail = await desk.challenge()
    assert mail.message.keys() == OURS
    assert b"attacker" not in mail.content and b"Account locked" not in mail.content
    m = assert_only_our_headers(mail.content, sample(references=(PAYLOAD, "older@newcomer.example"),
                                                     link=mail.link))
    assert (m["In-Reply-To"], m["References"]) == ("<first@newcomer.example>",
                                                   "<older@newcomer.example> <first@newcomer.example>")
    kinds = [d for k, d in await held_events(db) if k == "challenge-header"]
    assert kinds == ["References: 1 of the held message's ids left out: not well-formed msg-ids"]


async def test_issue7_an_outbox_row_from_the_vulnerable_version_is_given_up_not_sent(desk, db, caplog):
    await desk.outbox.stop()  # the row waits, as after an upgrade, until the sender runs below
    await desk.deliver(message(frm=BOB, subject="Hi"), recipient=SALES)
    async with db.writer() as s, s.begin():
        await s.execute(update(Outbox).values(content=OLD_ROW))
    with caplog.at_level(logging.WARNING, logger="ingest.outbox"):
        assert await desk.outbox.run_once() == 0
    async with db.session() as s:
        row = await s.scalar(select(Outbox))
    assert desk.sink.received == []
    assert (row.state, row.attempts, row.content) == ("failed", 1, b"")
    assert row.last_error.startswith("UnsafeMail: refused, not a mail as ticketmail writes it: header line")
    assert f"mail {row.id} to {BOB} not sent (attempt 1, given up)" in caplog.text
    assert any(k == "challenge-failed" and "refused" in d for k, d in await held_events(db))
    assert await desk.outbox.run_once() == 0  # given up: never tried again
