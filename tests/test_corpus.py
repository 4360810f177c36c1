"""Broken real-world mail through the real LMTP server: every message stored byte-exact, none lost."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from storage.models import Message
from tests.conftest import lmtp_send
from tests.corpus import corpus

SUPPORT = "support@xyzhosting.com"


def wire_form(raw: bytes) -> bytes:
    """What arrives after LMTP transport: CRLF line ends, ending in CRLF (an MTA sends it so)."""
    raw = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return raw if raw.endswith(b"\r\n") else raw + b"\r\n"


async def test_every_corpus_message_is_stored_byte_exact_and_decided(cli, db, lmtp):
    import asyncio

    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    entries = [(name, wire_form(raw)) for name, raw in corpus()]
    assert len(entries) >= 25

    def send_all():
        return [lmtp_send(lmtp.port, "someone@customer.example", [SUPPORT], raw) for _, raw in entries]

    replies = await asyncio.to_thread(send_all)
    for (name, _), [(code, text)] in zip(entries, replies):
        assert code == 250, f"{name}: {code} {text!r}"

    async with db.session() as s:
        stored = list(await s.scalars(select(Message).options(selectinload(Message.events)).order_by(Message.id)))
    by_raw = {m.raw: m for m in stored}
    for name, raw in entries:
        m = by_raw.get(raw)
        assert m is not None, f"{name} not stored byte-exact"
        # A ticket, or a clearly recorded decision with its reason.
        assert m.ticket_id is not None or (m.status in ("ignored", "held", "resubmitted") and m.events), name
    assert sum(m.ticket_id is not None for m in stored) >= len(stored) // 2
