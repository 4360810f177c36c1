"""Ticket references in mail: subject tags like "[Ticket #42]", reply prefixes and Message-ID lists.

Pure: no I/O. The pipeline uses these to tell a follow-up from a new ticket.
"""

from __future__ import annotations

import re

# Reply and forward prefixes of common mail clients, by language: en, de ("AW", "WG"),
# nl ("Antw", "Doorst"), scandinavian ("SV", "VS", "VB", "VL"), fr ("Réf", "TR"), es ("RV"),
# it ("Rif"), pl/cs ("Odp", "PD"), pt ("Enc", "Res"), tr ("YNT", "İLT"), zh ("回复", "转发", ...).
# Single letters (Italian "R:", "I:") are left out: too many real subjects start that way.
_PREFIX_WORDS = (
    "re", "fwd", "fw", "aw", "wg", "antw", "doorst", "sv", "vs", "vb", "vl", "réf", "tr", "rv",
    "rif", "odp", "pd", "enc", "res", "ynt", "İlt", "ilt", "回复", "回覆", "答复", "转发", "轉寄",
)
# A word, an optional counter ("Re[2]:", "Re(2):", "Re^2:"), then a colon; French typography puts a
# space before the colon ("TR :"), Chinese clients use the full-width colon.
_REPLY_PREFIX = re.compile(
    r"\s*(?:" + "|".join(map(re.escape, _PREFIX_WORDS)) + r")\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]",
    re.IGNORECASE,
)
# Message-IDs are <...>; whitespace inside one is folding damage, not part of the id.
_BRACKETED_ID = re.compile(r"<([^<>]*)>")
_WHITESPACE = re.compile(r"\s+")
# Ticket numbers are bounded so a garbage reference cannot make int() work on thousands of digits.
_MAX_DIGITS = 18


def strip_reply_prefixes(subject: str) -> str:
    """`subject` without its leading reply/forward prefixes ("Re: AW: Fwd[2]:") and outer whitespace."""
    position = 0
    # Match at a position instead of slicing so a long chain of prefixes stays linear.
    while match := _REPLY_PREFIX.match(subject, position):
        position = match.end()
    return subject[position:].strip()


def _reference_pattern(prefix: str) -> re.Pattern[str]:
    """The pattern of "[<prefix> #N]", tolerant of spacing and case, N captured."""
    return re.compile(
        rf"\[\s*{re.escape(prefix)}\s*#\s*([0-9]{{1,{_MAX_DIGITS}}})\s*\]", re.IGNORECASE
    )


def find_ticket_number(subject: str, prefix: str = "Ticket") -> int | None:
    """The number of the first "[Ticket #N]" reference in `subject`, or None if there is none."""
    match = _reference_pattern(prefix).search(subject)
    return int(match.group(1)) if match else None


def subject_with_reference(subject: str, number: int, prefix: str = "Ticket") -> str:
    """`subject` led by "[Ticket #N] ", unless it already refers to ticket N anywhere."""
    if number < 0:
        raise ValueError(f"ticket number must not be negative: {number}")
    subject = subject.strip()
    numbers = (int(m.group(1)) for m in _reference_pattern(prefix).finditer(subject))
    if number in numbers:
        return subject
    reference = f"[{prefix} #{number}]"
    return f"{reference} {subject}" if subject else reference


def message_ids(header_value: str) -> list[str]:
    """The ids in an In-Reply-To/References value, brackets dropped, in order, each once."""
    found = [_WHITESPACE.sub("", raw) for raw in _BRACKETED_ID.findall(header_value)]
    if not found:
        # Some old clients write ids without brackets; accept tokens that look like one.
        found = [token.strip(",;<>") for token in header_value.split() if "@" in token]
    return list(dict.fromkeys(i for i in found if i))
