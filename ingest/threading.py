"""Ticket references in mail: subject tags like "[Ticket #42]".

Pure: no I/O. The pipeline uses it to tell a follow-up from a new ticket.
"""

from __future__ import annotations

import re

# Ticket numbers are bounded so a garbage reference cannot make int() work on thousands of digits.
_MAX_DIGITS = 18


def _reference_pattern(prefix: str) -> re.Pattern[str]:
    """The pattern of "[<prefix> #N]", tolerant of spacing and case, N captured."""
    return re.compile(
        rf"\[\s*{re.escape(prefix)}\s*#\s*([0-9]{{1,{_MAX_DIGITS}}})\s*\]", re.IGNORECASE
    )


def find_ticket_number(subject: str, prefix: str = "Ticket") -> int | None:
    """The number of the first "[Ticket #N]" reference in `subject`, or None if there is none."""
    match = _reference_pattern(prefix).search(subject)
    return int(match.group(1)) if match else None
