"""What automatic mail is: bounces, auto-replies, bulk and list mail (RFC 3834 and the usual others).

One set of checks for both of its uses: the chain's auto-reply step (automatic mail is recorded on the
ticket it answers, never a new one) and the challenge's suppression (automatic mail is never challenged).
"""

from __future__ import annotations

import re

from ingest.parse import ParsedMessage

_PRECEDENCE = {"bulk", "junk", "list", "auto_reply"}
_SUPPRESS = {"all", "oof"}  # X-Auto-Response-Suppress values asking that no automatic answer be sent


def reason(parsed: ParsedMessage, envelope_sender: str, source: str) -> str | None:
    """Why this message is automatic mail, or None for a person's mail.

    `envelope_sender` is "" for the null sender; only LMTP has an envelope, so an imported message
    without one is not taken for a bounce (its Return-Path still says)."""
    if (source == "lmtp" and not envelope_sender) or (parsed.first("Return-Path") or "").strip() == "<>":
        return "null envelope sender (a bounce or notification)"
    for who in (parsed.from_addr, envelope_sender):
        if who.rpartition("@")[0].lower() == "mailer-daemon":
            return f"{who.lower()} is an automatic address (MAILER-DAEMON: a bounce)"
    return by_headers(parsed)


def by_headers(parsed: ParsedMessage) -> str | None:
    """Why the headers mark this as automatic mail, or None."""
    auto = (parsed.first("Auto-Submitted") or "no").split(";")[0].strip().lower()
    if auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = (parsed.first("Precedence") or "").strip().lower()
    if precedence in _PRECEDENCE:
        return f"Precedence: {precedence}"
    if parsed.first("X-Loop") is not None:
        return "X-Loop header"
    if parsed.first("X-Autoreply") is not None or parsed.first("X-Autorespond") is not None:
        return "auto-responder header"
    suppress = parsed.first("X-Auto-Response-Suppress") or ""
    if _SUPPRESS & set(re.split(r"[\s,]+", suppress.lower())):
        return f"X-Auto-Response-Suppress: {suppress.strip()}"
    for name, _ in parsed.headers:
        if name.strip().lower().startswith("list-"):
            return f"mailing list mail ({name.strip()})"
    return None
