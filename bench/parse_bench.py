"""Time ingest.parse.parse_message against bare BytesParser with policy.default and policy.compat32.

Run: .venv/bin/python bench/parse_bench.py [iterations]
Prints the best of 5 runs per message and parser, in milliseconds per message.
"""

from __future__ import annotations

import base64
import random
import sys
import timeit
from email import policy
from email.parser import BytesParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ingest.parse import parse_message  # noqa: E402

RECEIVED = b"".join(
    b"Received: from mx%d.mail.example.net (mx%d.mail.example.net [192.0.2.%d])\n"
    b"\tby mx.xyzhosting.com (Postfix) with ESMTPS id 4Tq%dXyZ for <support@xyzhosting.com>;\n"
    b"\tMon, 15 Jan 2024 09:1%d:00 +0100 (CET)\n" % (i, i, i, i, i) for i in range(4))

HEADERS = RECEIVED + (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=customer.example; s=s1;\n"
    b"\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
    b"\tb=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaGFzIHRoZSByaWdodCBzaGFwZQ==\n"
    b"From: =?utf-8?Q?J=C3=BCrgen_M=C3=BCller?= <juergen.mueller@customer.example>\n"
    b"To: XYZ Support <support@xyzhosting.com>\n"
    b"Cc: \"Ops, Team\" <ops@customer.example>, billing@customer.example\n"
    b"Subject: =?utf-8?B?UmU6IFNlcnZlciBuaWNodCBlcnJlaWNoYmFyIOKAkyBkcmluZ2VuZA==?=\n"
    b"Date: Mon, 15 Jan 2024 09:12:34 +0100\n"
    b"Message-ID: <CAF=abc123.456@mail.customer.example>\n"
    b"In-Reply-To: <ticket-42.1@xyzhosting.com>\n"
    b"References: <ticket-42.0@xyzhosting.com> <ticket-42.1@xyzhosting.com>\n"
    b"MIME-Version: 1.0\n")

PROSE = (b"Hallo zusammen,\n\nseit heute morgen ist unser Server nicht mehr erreichbar. Wir haben den "
         b"Dienst neu gestartet, aber der Fehler besteht weiterhin.\n")


def small_message() -> bytes:
    """A ~4 KB multipart/alternative reply: text and HTML, Received headers, encoded-word subject."""
    text = PROSE * 7 + b"\nViele Gr=C3=BC=C3=9Fe\nJ=C3=BCrgen\n"
    html = b"<html><body>" + b"".join(b"<p>" + PROSE.strip() + b"</p>\n" for _ in range(7)) + b"</body></html>\n"
    return HEADERS + (
        b'Content-Type: multipart/alternative; boundary="000000000000abcdef"\n\n'
        b"--000000000000abcdef\nContent-Type: text/plain; charset=\"UTF-8\"\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n" + text +
        b"\n--000000000000abcdef\nContent-Type: text/html; charset=\"UTF-8\"\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n" + html +
        b"\n--000000000000abcdef--\n")


def large_message() -> bytes:
    """A ~100 KB multipart/mixed message: a short text part and a base64 PDF attachment."""
    blob = base64.encodebytes(random.Random(1).randbytes(72 * 1024))
    return HEADERS + (
        b'Content-Type: multipart/mixed; boundary="mixed"\n\n'
        b"--mixed\nContent-Type: text/plain; charset=utf-8\n\n" + PROSE +
        b"\n--mixed\nContent-Type: application/pdf; name=\"logfile.pdf\"\n"
        b"Content-Disposition: attachment; filename=\"logfile.pdf\"\n"
        b"Content-Transfer-Encoding: base64\n\n" + blob + b"\n--mixed--\n")


def default_policy_full(raw: bytes) -> None:
    """policy.default doing the work parse_message does: headers, addresses, date, body and attachments."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    for name in ("subject", "from", "to", "cc", "date", "message-id", "references"):
        msg[name]
    body = msg.get_body(("plain", "html"))
    if body is not None:
        body.get_content()
    for part in msg.iter_attachments():
        part.get_content()


PARSERS = {
    "parse_message": parse_message,
    "BytesParser(policy.default), parse only": BytesParser(policy=policy.default).parsebytes,
    "BytesParser(policy.default) + fetch headers/body": default_policy_full,
    "BytesParser(policy.compat32), parse only": BytesParser(policy=policy.compat32).parsebytes,
}


def main(iterations: int = 200) -> None:
    for label, raw in (("~4 KB multipart/alternative", small_message()),
                       ("~100 KB with base64 attachment", large_message())):
        print(f"{label} ({len(raw)} bytes), best of 5 x {iterations}:")
        for name, parse in PARSERS.items():
            best = min(timeit.repeat(lambda: parse(raw), number=iterations, repeat=5)) / iterations
            print(f"  {name:50s} {best * 1000:7.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
