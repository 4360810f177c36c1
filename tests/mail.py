"""Short inline RFC 5322 messages for tests."""

from __future__ import annotations

import itertools

_ids = itertools.count(1)


def message(
    frm: str = "Alice Customer <alice@customer.example>",
    to: str = "Support <support@xyzhosting.com>",
    subject: str = "Printer on fire",
    body: str = "Hello,\nthe printer is on fire.\n",
    **headers: str,
) -> bytes:
    """A small message with CRLF line endings, as an MTA hands it over; headers from kwargs (Foo_Bar -> Foo-Bar)."""
    lines = [f"From: {frm}", f"To: {to}", f"Subject: {subject}", "Date: Sat, 28 Nov 2026 10:00:00 +0000"]
    if "Message_ID" not in headers:
        lines.append(f"Message-ID: <test-{next(_ids)}@customer.example>")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "", *body.splitlines()]
    return ("\r\n".join(lines) + "\r\n").encode()
