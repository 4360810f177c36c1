"""What the CLI prints: stored text made safe for a terminal, and `--json` documents."""

from __future__ import annotations

import getpass
import json
import sys
import unicodedata
from datetime import datetime

from bridge.accounts import Secret
from ticketmail.admin.errors import AdminError

# What a terminal acts on or what changes how text reads, so never sent to it raw: controls (C0, DEL and
# C1: escape sequences that clear the screen, retitle the window, write the clipboard), format characters
# (bidi overrides and isolates, invisible marks), line and paragraph separators, lone surrogates.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_JOINERS = "\u200c\u200d"  # ZWNJ, ZWJ: needed to write Persian, Indic scripts and emoji; inert in a terminal


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN and ch not in _JOINERS


_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(ch: str) -> str:
    n = ord(ch)
    if ch in _SHORT:
        return _SHORT[ch]
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def shown(text: str, keep: str = "\t\n") -> str:
    """`text` as the terminal may get it: control and bidi characters written as visible escapes
    (`\\x1b`, `\\u202e`), except those in `keep`. Every plain output goes through here."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if ch not in keep and _hidden(ch) else ch for ch in text)


def one_line(text: str) -> str:
    """A stored value inside a one-line row or message: its tabs and line breaks escaped too, so it
    cannot shift columns or forge a row."""
    return shown(text, keep="")


def say(line: str) -> None:
    print(shown(line))


def warn(text: str) -> None:
    print(f"ticketmail: warning: {one_line(text)}", file=sys.stderr)


def fail(text: str) -> None:
    """The one line of a command that failed."""
    print(f"ticketmail: {one_line(text)}", file=sys.stderr)


def iso(at: datetime | None) -> str | None:
    """ISO 8601; storage hands timestamps back in UTC with their zone ("+00:00")."""
    return at.isoformat() if at else None


def _json_text(data) -> str:
    """The JSON document, exact; characters a terminal would act on are written as \\u escapes, which
    decode to the same text (json itself escapes C0 controls, not C1 or bidi)."""
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    return "".join(json.dumps(ch)[1:-1] if ch != "\n" and _hidden(ch) else ch for ch in text)


def emit(data, as_json: bool, lines) -> None:
    """Print `data` as JSON, or the human form given by `lines`."""
    if as_json:
        print(_json_text(data))
    else:
        for line in lines:
            say(line)


def password(prompt: str, *, from_stdin: bool, hint: str = "") -> Secret:
    """A password: the first line of stdin when `from_stdin`, else asked twice without echo (both must
    match, like a form's confirm field). `hint` follows the error when there is nothing to read."""
    try:
        if from_stdin:
            return Secret(sys.stdin.readline().rstrip("\r\n"))
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass("Repeat the password: ") != first:
            raise AdminError("the two passwords do not match; nothing saved")
        return Secret(first)
    except EOFError:
        raise AdminError(f"no password given{hint}") from None
