"""Email addresses as an admin types them."""

from __future__ import annotations

from ingest.parse import MAX_ADDRESS, too_long_for_a_mailbox
from ticketmail.admin.errors import AdminError


def address(text: str, *, catch_all: bool = False, field: str | None = None) -> str:
    """`text` lowercased and checked; `catch_all` also allows `*@domain` (a department's whole domain).
    `field`: the form field an error sits beside."""
    value = text.strip().lower()
    local, at, domain = value.rpartition("@")
    bad_star = local.startswith("*") and local != "*" if catch_all else "*" in value
    if not at or not local or not domain or " " in value or bad_star:
        raise AdminError(f"{text!r} is not an email address" + (" (or *@domain catch-all)" if catch_all else ""),
                         field=field)
    if too_long_for_a_mailbox(value):
        raise AdminError(f"{text[:40]!r}... is longer than any email address ({MAX_ADDRESS} octets)", field=field)
    return value
