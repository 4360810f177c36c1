"""The delivery log: one line per delivery from the pipeline's one entry, in `[log] format` text or json,
with every value that came from the mail escaped so that it cannot forge a line or drive a terminal."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from datetime import datetime

import pytest

from ingest import logs
from ingest.delivery import Delivery
from tests.bridge_helpers import add_account, bridge_key, departments, run_bridge, wait_until  # noqa: F401
from tests.conftest import deliver, one_database
from tests.dovecot import dovecot  # noqa: F401 - a fixture
from tests.mail import message
from tests.test_health_metrics import SUPPORT, serving

ALICE = "alice@customer.example"
# ESC [2J clears a terminal; U+009B is the one-character CSI; both pass the parser in a Message-ID.
HOSTILE_ID = "<evil\x1b[2J\u009b31m@customer.example>"


@pytest.fixture
async def support(cli):
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    assert code == 0, err


async def delivered_with_hostile_id(db_url, tmp_path, **settings) -> str:
    """Deliver one message over LMTP to a real serve; its whole log once it has stopped."""
    async with serving(db_url, tmp_path, **settings) as served:
        [(code, _)] = await deliver(served.lmtp, ALICE, SUPPORT, message(frm=ALICE, Message_ID=HOSTILE_ID))
        assert code == 250
    return served.log.read_text()


@one_database
async def test_an_lmtp_delivery_is_one_json_line_and_every_line_is_json(db_url, support, tmp_path):
    text = await delivered_with_hostile_id(db_url, tmp_path, LOG_FORMAT="json")
    records = [json.loads(line) for line in text.splitlines()]  # every line, the writer process's too
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    [line] = [r for r in records if r["logger"] == "ticketmail.delivery"]
    assert line["message"] == "delivery" and line["level"] == "INFO"
    assert datetime.fromisoformat(line["time"]).utcoffset().total_seconds() == 0
    assert {k: line[k] for k in ("source", "message_id", "sender", "recipients", "outcome", "ticket")} == {
        "source": "lmtp", "message_id": HOSTILE_ID.strip("<>"), "sender": ALICE, "recipients": [SUPPORT],
        "outcome": "ticket", "ticket": 1}
    assert isinstance(line["ms"], float) and line["ms"] > 0
    assert "\x1b" not in text and "\u009b" not in text  # escaped (\u001b, \u009b), not written


@one_database
async def test_an_lmtp_delivery_is_one_text_line_with_its_values_escaped(db_url, support, tmp_path):
    text = await delivered_with_hostile_id(db_url, tmp_path)
    [line] = [line for line in text.splitlines() if " ticketmail.delivery: " in line]
    pattern = (r'\S+ \S+ INFO ticketmail\.delivery: delivery source="lmtp" '
               r'message_id="evil\\u001b\[2J\\u009b31m@customer\.example" sender="alice@customer\.example" '
               r'recipients=\["support@xyzhosting\.com"\] outcome="ticket" ticket=1 reason="[^"\\]*" ms=[0-9.]+')
    assert re.fullmatch(pattern, line), line
    assert float(line.rsplit("ms=", 1)[1]) > 0
    assert "\x1b" not in text and "\u009b" not in text


@pytest.fixture
def delivery_lines():
    """What the delivery logger writes, formatted as serve formats it: {"text": ..., "json": ...}."""
    out = {kind: io.StringIO() for kind in logs.FORMATS}
    logger, handlers = logging.getLogger("ticketmail.delivery"), []
    level = logger.level
    logger.setLevel(logging.INFO)  # as serve logs (ingest/logs.setup); setLevel: isEnabledFor caches
    for kind, stream in out.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.formatter(kind))
        handlers.append(handler)
        logger.addHandler(handler)
    yield out
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(level)


async def test_cr_lf_and_escapes_from_an_imap_delivery_stay_on_one_line(db, support, pipeline, delivery_lines):
    """The IMAP bridge calls the same entry (bridge/sync.py): its sender comes from the message's own
    Return-Path, and the writer parses its message, so the Message-ID is read from the raw header here."""
    sender = "bob@x.example\r\n2026-12-03 10:00:00,000 INFO ticketmail: forged\x1b[31m"
    raw = (b"From: bob@x.example\r\nTo: support@xyzhosting.com\r\nSubject: hi\r\n"
           b"Message-ID: <two\r\n lines\x1b]0;owned\x07@x.example>\r\n\r\nHello\r\n")
    await pipeline.deliver(Delivery(raw, sender=sender, recipient=SUPPORT, source="imap:support",
                                    source_key="7/42", account="support"))
    text, json_text = delivery_lines["text"].getvalue(), delivery_lines["json"].getvalue()
    assert text.count("\n") == 1 and json_text.count("\n") == 1
    assert not any(c in text + json_text for c in "\r\x1b\x07")
    line = json.loads(json_text)
    assert line["source"] == "imap:support" and line["sender"] == sender  # the same value, escaped
    assert line["message_id"] == "two lines\x1b]0;owned\x07@x.example"  # unfolded, as the parser gives it
    assert line["outcome"] == "ticket" and line["ticket"] == 1
    assert 'sender="bob@x.example\\r\\n2026-12-03 10:00:00,000 INFO ticketmail: forged\\u001b[31m"' in text


async def test_a_delivery_that_could_not_be_stored_has_its_line_too(db, support, pipeline, delivery_lines):
    await pipeline.stop()  # nothing can be stored now
    pipeline.failed.set()
    with pytest.raises(Exception):
        await pipeline.deliver(Delivery(message(frm=ALICE), sender=ALICE, recipient=SUPPORT))
    line = json.loads(delivery_lines["json"].getvalue())
    assert line["outcome"] == "error" and line["ticket"] is None
    assert line["reason"] == "not stored: the writer is not running"


@one_database
async def test_a_delivery_through_the_imap_bridge_has_its_line(dovecot, add_account, run_bridge, delivery_lines):
    """The real bridge against the test Dovecot: the same entry, the account's source, the line once stored."""
    raw = message(frm=ALICE, Message_ID=HOSTILE_ID)
    await asyncio.to_thread(dovecot.append, "support", [raw])
    code, _, err = await add_account(dovecot)
    assert code == 0, err
    await run_bridge()
    await wait_until(lambda: asyncio.sleep(0, delivery_lines["json"].getvalue()), 20, "the delivery line")
    line = json.loads(delivery_lines["json"].getvalue())
    assert {k: line[k] for k in ("source", "message_id", "sender", "recipients", "outcome", "ticket")} == {
        "source": "imap:support", "message_id": HOSTILE_ID.strip("<>"), "sender": ALICE, "recipients": [SUPPORT],
        "outcome": "ticket", "ticket": 1}
    assert "\x1b" not in delivery_lines["text"].getvalue() and delivery_lines["text"].getvalue().count("\n") == 1


async def test_recipients_of_one_department_share_one_line(db, cli, lmtp, delivery_lines):
    """LMTP delivers once per department: the line names every recipient that shares its outcome."""
    assert (await cli("department", "add", "Support", "--address", SUPPORT, "--address", "help@xyzhosting.com",
                      "--unknown-sender", "accept"))[0] == 0
    replies = await deliver(lmtp.port, ALICE, [SUPPORT, "help@xyzhosting.com"], message(frm=ALICE))
    assert [code for code, _ in replies] == [250, 250]
    [line] = [json.loads(text) for text in delivery_lines["json"].getvalue().splitlines()]
    assert line["recipients"] == [SUPPORT, "help@xyzhosting.com"] and line["ticket"] == 1
