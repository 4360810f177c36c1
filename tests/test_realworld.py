"""Real mail from other mail software's test fixtures (../shared/corpus/realworld), delivered over LMTP
as an MTA sends it: each stored byte-exact and decided, and what ticketmail extracts compared with
what Zammad's parser extracts from the same mail (tests/realworld.py says how)."""

from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from storage.models import Message
from tests import realworld
from tests.conftest import lmtp_send

SUPPORT = "support@xyzhosting.com"

# Where ticketmail and Zammad differ on purpose: (file, field) -> why ticketmail's answer is the one we want.
INTENDED = {
    ("zammad/mail014.box", "attachments"): "attached messages are re-serialised by the email package, so "
        "their bytes (not their headers or text) differ from the original's",
    ("zammad/mail016.box", "from"): "no From header: Zammad takes Reply-To as the sender; a sender is not invented",
    ("zammad/mail019.box", "from"): "From has no address (\"我\" <>): Zammad takes Reply-To; a sender is not invented",
    ("zammad/mail019.box", "name"): "the From's display name is kept (Zammad drops it for Reply-To's)",
    ("zammad/mail016.box", "body"): "the HTML <title> is not body text (Zammad shows it)",
    ("zammad/mail019.box", "body"): "the HTML <title> is not body text (Zammad shows it)",
    ("zammad/mail026.box", "body"): "the HTML <title> is not body text (Zammad shows it)",
    ("zammad/mail047.box", "body"): "the HTML <title> is not body text (Zammad shows it)",
    ("zammad/mail066.box", "body"): "the HTML <title> is not body text (Zammad shows it)",
    ("zammad/mail018.box", "subject"): "UTF-7 (RFC 2152) is decoded; Zammad shows '+ANw-'",
    ("zammad/mail018.box", "body"): "UTF-7 (RFC 2152) is decoded; Zammad shows '+APw-'",
    ("zammad/mail020.box", "body"): "&lang; is U+27E8 as HTML5 defines it (Zammad: U+2329)",
    ("zammad/mail021.box", "body"): "a byte invalid in text declared UTF-8 is replaced, not read as Latin-1",
    ("zammad/mail046.box", "name"): "the raw 8-bit GB2312 name is decoded (Zammad's is mojibake)",
    ("zammad/mail053.box", "from"): "'MAILER-DAEMON' is no address: the sender's address stays empty",
    ("zammad/mail054.box", "body"): "Zammad's header section ends early and shows no body; ticketmail reads "
        "the unindented continuation and shows 'some text'",
    ("zammad/mail062.box", "attachments"): "the unnamed inline HTML parts are body text (Zammad: document.html, "
        "document1.html); Zammad's video.mov differs in content",
    ("zammad/mail076.box", "from"): "Zammad keeps a stray '>' of the broken address",
    ("zammad/mail076.box", "name"): "Zammad makes the broken address its display name",
    ("zammad/mail087.box", "name"): "'From: Test test@example.com' has no display name (Zammad repeats it all)",
    ("zammad/mail087.box", "attachments"): "the unnamed part without a type is text/plain (RFC 2045 5.2) and "
        "is the body (Zammad: an attachment called 'file')",
    ("zammad/mail092.box", "name"): "the display name is the whole phrase before the address",
    ("zammad/mail092.box", "attachments"): "the delivery report's empty attached message is kept as it came "
        "(Zammad: 0 bytes)",
    ("zammad/mail102.box", "attachments"): "two attachments with one name keep it (Zammad renames the second)",
    ("zammad-upstream/mail117.box", "from"): "an encoded-word inside an address is not decoded (RFC 2047 5)",
    ("zammad-upstream/mail118.box", "from"): "an encoded-word inside an address is not decoded (RFC 2047 5)",
}


@pytest.fixture(scope="module")
def corpus():
    if not realworld.ROOT.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the real-world corpus is missing: {realworld.ROOT}")
        pytest.skip(f"the real-world corpus is not on this machine: {realworld.ROOT}")
    return realworld.messages(), realworld.expectations()


async def test_real_world_mail_is_stored_decided_and_parsed_as_well_as_zammad(corpus, cli, db, lmtp):
    entries, expected = corpus
    assert len(entries) >= 240 and len(expected) >= 90
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")

    def send_all():
        return [lmtp_send(lmtp.port, "someone@customer.example", [SUPPORT], raw) for _, raw in entries]

    for (name, _), [(code, text)] in zip(entries, await asyncio.to_thread(send_all)):
        assert code == 250, f"{name}: {code} {text!r}"

    async with db.session() as s:
        stored = await s.scalars(select(Message).options(selectinload(Message.events),
                                                         selectinload(Message.attachments)))
        by_raw = {m.raw: m for m in stored}
    found = {}
    for name, raw in entries:
        message = by_raw.get(raw)
        assert message is not None, f"{name} not stored byte-exact"
        assert message.ticket_id is not None or (message.status in ("ignored", "held", "resubmitted") and message.events), name
        if name in expected:
            found.update({(name, field): why for field, why in realworld.differences(expected[name], message).items()})
    unexpected = {key: why for key, why in found.items() if key not in INTENDED}
    assert not unexpected, "ticketmail and Zammad differ:\n" + "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    gone = sorted(INTENDED.keys() - found.keys())
    assert not gone, f"listed as intended differences but now the same (remove them from INTENDED): {gone}"


def test_placeholders_for_large_base64_runs_change_nothing(corpus, monkeypatch):
    # Messages from 1 MiB on are parsed with their large base64 runs as placeholders (ingest/parse.py,
    # _Source): parsing every corpus mail that way must give exactly what the plain parse gives.
    from ingest.parse import parse_message

    entries, _ = corpus
    plain = [parse_message(raw) for _, raw in entries]
    monkeypatch.setattr("ingest.parse._LARGE", 0)
    for (name, raw), expected in zip(entries, plain):
        parsed = parse_message(raw)
        assert (parsed.subject, parsed.text, parsed.html, parsed.attachments, parsed.warnings) == (
            expected.subject, expected.text, expected.html, expected.attachments, expected.warnings), name
