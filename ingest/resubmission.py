"""Resubmissions: the same message submitted again (a mail client retrying, one mail to two addresses
of one department, the same mail over LMTP and over IMAP). Each pass adds its own Received headers,
so the bytes differ and the delivery's dedup key does not see it; the body, which relays do not
touch, does. Same Message-ID, same department, same bytes after the header section, within the
window: the same message. Different messages that share a Message-ID (broken mailers reuse them)
differ in their body and stay apart.
"""

from __future__ import annotations

import hashlib
import re

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def key(raw: bytes, message_id: str | None, department_id: int | None) -> str | None:
    """The resubmission key of a message, or None when it has no Message-ID (nothing says it is the same)."""
    if not message_id:
        return None
    end = _BLANK_LINE.search(raw)
    body = memoryview(raw)[end.end() if end else len(raw):]
    digest = hashlib.sha256(f"{message_id}\0{department_id}\0".encode("utf-8", "surrogatepass"))
    digest.update(body)
    return digest.hexdigest()
