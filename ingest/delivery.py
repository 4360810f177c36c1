"""What a caller hands the pipeline (a Delivery) and what it gets back once committed (an Outcome)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Delivery:
    raw: bytes
    sender: str  # envelope sender, "" for the null sender
    recipient: str  # envelope recipient (IMAP: the account's address)
    source: str = "lmtp"  # lmtp | imap:NAME
    source_key: str = ""  # IMAP: "UIDVALIDITY/UID"
    department: str | None = None  # None: the department that owns `recipient`
    account: str = ""
    also: tuple[str, ...] = ()  # LMTP: the recipients of the same department, who share this delivery's outcome


@dataclass(frozen=True)
class Outcome:
    status: str  # ticket | followup | auto_reply | held | deleted | rejected | ignored
    ticket: int | None
    reason: str
    repeat: str = ""  # stored before: "duplicate" (the same delivery again), "resubmitted" (the same message)
    step: str = ""  # the step of ingest/chain.py's CHAIN that decided; "" if nothing was decided now
