"""An attacker's text on the admin's terminal: escape sequences, C1 controls and bidi overrides are shown
escaped in plain output, never sent to the terminal; `--json` keeps the exact text."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import sys
from urllib.parse import quote

from ingest.delivery import Delivery
from tests.bridge_helpers import SUPPORT, bridge_key, departments  # noqa: F401 - fixtures
from tests.conftest import one_database

# Clear the screen, retitle the window, put a command in the clipboard (OSC 52), a C1 CSI (U+009B),
# and a right-to-left override that makes "fdp.exe" read as "exe.pdf".
SUBJECT = "Invoice \x1b[2J\x1b]0;pwned\x07\x1b]52;c;Y3VybCBldmlsfHNo\x07 \x9b31m red \u202efdp.exe"
FILENAME = "report\u202egpj.exe"  # reads as "reportexe.jpg"
BODY = "Hello \x1b[2J there\n"
# What a terminal must never receive: C0 controls but tab and newline, DEL, C1, bidi embeddings,
# overrides and isolates.
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def encoded_word(text: str) -> str:
    return f"=?utf-8?b?{base64.b64encode(text.encode()).decode()}?="


def hostile_mail(sender: str, to: str) -> bytes:
    return (
        f"From: Eve <{sender}>\r\nTo: {to}\r\nSubject: {encoded_word(SUBJECT)}\r\n"
        "Date: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <hostile-" + sender + ">\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{BODY}\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Disposition: attachment; filename*=utf-8''{quote(FILENAME)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n"
    ).encode()


def assert_terminal_safe(text: str) -> None:
    found = RAW.findall(text)
    assert not found, f"raw control characters {found!r} in {text!r}"


@one_database
async def test_plain_listings_show_hostile_text_escaped_and_json_keeps_it_exact(cli, pipeline):
    for argv in (["department", "add", "Support", "--address", "support@xyzhosting.com", "--unknown-sender", "accept"],
                 ["department", "add", "Sales", "--address", "sales@xyzhosting.com", "--unknown-sender", "hold"]):
        assert (await cli(*argv))[0] == 0
    await pipeline.deliver(Delivery(hostile_mail("eve@evil.example", "support@xyzhosting.com"),
                                    "eve@evil.example", "support@xyzhosting.com"))
    await pipeline.deliver(Delivery(hostile_mail("mallory@evil.example", "sales@xyzhosting.com"),
                                    "mallory@evil.example", "sales@xyzhosting.com"))

    code, listing, err = await cli("tickets", "list")
    assert code == 0, err
    assert_terminal_safe(listing)
    assert "Invoice \\x1b[2J\\x1b]0;pwned\\x07\\x1b]52;c;Y3VybCBldmlsfHNo\\x07 \\x9b31m red \\u202efdp.exe" in listing

    code, shown, err = await cli("tickets", "show", "1")
    assert code == 0, err
    assert_terminal_safe(shown)
    assert "Hello \\x1b[2J there" in shown and "[attachment] report\\u202egpj.exe (" in shown
    assert shown.count("\n") > 5  # the message text keeps its lines

    code, held, err = await cli("held", "list")
    assert code == 0, err
    assert_terminal_safe(held)
    assert "mallory@evil.example" in held and "\\u202efdp.exe" in held

    code, out, _ = await cli("tickets", "list", "--json")
    assert_terminal_safe(out)  # \u escapes in the JSON text, the same string once decoded
    (ticket,) = json.loads(out)
    assert ticket["subject"] == SUBJECT
    (message,) = json.loads((await cli("tickets", "show", "1", "--json"))[1])["messages"]
    assert message["subject"] == SUBJECT and message["text"].startswith(BODY.rstrip("\n"))
    assert message["attachments"][0]["filename"] == FILENAME
    (held_message,) = json.loads((await cli("held", "list", "--json"))[1])
    assert held_message["subject"] == SUBJECT


@one_database
async def test_an_error_line_quoting_a_hostile_server_is_escaped(cli, monkeypatch, bridge_key, departments):
    async def refuse(reader, writer):
        writer.write(b"* OK [CAPABILITY IMAP4rev1] hi\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().partition(" ")
            if command.upper().startswith("CAPABILITY"):
                writer.write(f"* CAPABILITY IMAP4rev1\r\n{tag} OK done\r\n".encode())
            else:
                writer.write(f"{tag} NO \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\u202edenied\r\n".encode())
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
        code, _, err = await cli("imap", "add", "support", "--email", SUPPORT, "--server", "127.0.0.1",
                                 "--port", str(port), "--security", "none",
                                 "--password-stdin")
    finally:
        server.close()
        await server.wait_closed()
    assert code == 1
    assert_terminal_safe(err)
    assert err.endswith(f"login failed for user {SUPPORT} on 127.0.0.1:{port}: "
                        "\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2J\\u202edenied "
                        "(nothing saved; --no-test saves it anyway)\n")
    assert err.count("\n") == 2  # the --security none warning, then the error


@one_database
async def test_a_line_break_in_a_subject_cannot_forge_a_row(cli, pipeline):
    assert (await cli("department", "add", "Support", "--address", "support@xyzhosting.com",
                      "--unknown-sender", "accept"))[0] == 0
    forged = "Hello\n#99\tclosed\tSupport\tboss@xyzhosting.com\t1 msg\tall fine"
    raw = (f"From: eve@evil.example\r\nTo: support@xyzhosting.com\r\nSubject: {encoded_word(forged)}\r\n"
           "Message-ID: <forged@evil.example>\r\n\r\nhi\r\n").encode()
    await pipeline.deliver(Delivery(raw, "eve@evil.example", "support@xyzhosting.com"))
    code, out, err = await cli("tickets", "list")
    assert code == 0, err
    assert out.splitlines() == [
        "#1\topen\tSupport\teve@evil.example\t1 msg\tHello\\n#99\\tclosed\\tSupport\\tboss@xyzhosting.com"
        "\\t1 msg\\tall fine"]
    (ticket,) = json.loads((await cli("tickets", "list", "--json"))[1])
    assert ticket["subject"] == forged
