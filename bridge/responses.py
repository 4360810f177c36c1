"""IMAP protocol text in and out, as pure functions: UID sets, quoting, and the responses the bridge reads."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass


class ImapError(Exception):
    """A failure of one account's connection, said in one sentence (never with the password)."""


@dataclass(frozen=True)
class Mailbox:
    uidvalidity: int
    exists: int
    uidnext: int | None


def quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 section 9)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


MASK = b"********"
# A status response: tag (or *), its condition word and a response code that carries data we read, then
# the server's own words; or a continuation request.
_DATA_CODES = rb"UIDVALIDITY|UIDNEXT|UNSEEN|HIGHESTMODSEQ|APPENDUID|COPYUID|CAPABILITY|PERMANENTFLAGS"
_STATUS = re.compile(rb"^(\S+ (?:OK|NO|BAD|BYE|PREAUTH) (?:\[(?:" + _DATA_CODES + rb")(?: [^\]]*)?\] ?)?|\+ ?)(.*)$",
                     re.IGNORECASE | re.DOTALL)


def secret_spellings(username: str, password: str) -> tuple[bytes, ...]:
    """Every spelling of the password a server could quote back at us, longest first.

    As typed (also how a literal carries it), inside an IMAP quoted string (the escapes differ), and
    base64 of it alone and of AUTHENTICATE PLAIN's `\\0user\\0password` (without the `=` padding,
    which is a substring of the padded form)."""
    if not password:
        return ()
    typed, user = password.encode(), username.encode()
    forms = {typed, quote(password)[1:-1].encode()}
    for sasl in (typed, b"\0" + user + b"\0" + typed, user + b"\0" + user + b"\0" + typed):
        forms.add(base64.b64encode(sasl).rstrip(b"="))
    return tuple(sorted(forms, key=len, reverse=True))


def mask(data: bytes, spellings: tuple[bytes, ...]) -> bytes:
    for secret in spellings:
        data = data.replace(secret, MASK)
    return data


def redact_status(line: bytes, spellings: tuple[bytes, ...]) -> bytes:
    """A server line with the password masked in its text: status responses (OK, NO, BAD, BYE, PREAUTH)
    and continuation requests, where a server speaks in words and may quote our command.

    Data responses (FETCH, SEARCH, EXISTS...) and the response codes with data in them ([UIDVALIDITY n],
    [CAPABILITY ...]) stay exact: they carry what we parse, which a short password could otherwise match."""
    match = _STATUS.match(line)
    if not spellings or match is None:
        return line
    return match.group(1) + mask(match.group(2), spellings)


def encode_mailbox(name: str) -> str:
    """A mailbox name in IMAP's modified UTF-7 (RFC 3501 5.1.3), quoted: "Entwürfe" -> "Entw&APw-rfe"."""
    out, pending = [], []

    def flush():
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode().rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return quote("".join(out))


def uid_set(uids: list[int]) -> str:
    """A compact UID set: [1, 2, 3, 7, 9, 10] -> "1:3,7,9:10"."""
    parts, run = [], []
    for uid in sorted(set(uids)):
        if run and uid == run[-1] + 1:
            run.append(uid)
            continue
        if run:
            parts.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [uid]
    if run:
        parts.append(f"{run[0]}:{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


_CODE = re.compile(rb"\[(UIDVALIDITY|UIDNEXT) (\d+)\]")
_EXISTS = re.compile(rb"^(\d+) EXISTS$")


def parse_select(lines: list) -> Mailbox:
    """UIDVALIDITY, EXISTS and UIDNEXT from the untagged lines of a SELECT/EXAMINE response."""
    found: dict[bytes, int] = {}
    exists = 0
    for line in lines:
        if not isinstance(line, bytes):
            continue
        for code, value in _CODE.findall(line):
            found[code] = int(value)
        match = _EXISTS.match(line)
        if match:
            exists = int(match.group(1))
    if b"UIDVALIDITY" not in found:
        raise ImapError("the server did not say the folder's UIDVALIDITY: cannot track messages safely")
    return Mailbox(found[b"UIDVALIDITY"], exists, found.get(b"UIDNEXT"))


def parse_search(lines: list, above: int) -> list[int]:
    """The UIDs of a UID SEARCH response that are above `above`.

    `UID n:*` always matches the highest UID even when it is below n (RFC 3501 6.4.8), hence the filter."""
    uids = []
    for line in lines[:-1]:  # the last line is the tagged completion text
        if isinstance(line, bytes):
            uids += [int(t) for t in line.split() if t.isdigit()]
    return sorted(u for u in set(uids) if u > above)


_FETCH_UID = re.compile(rb"\bUID (\d+)")


def parse_fetch(lines: list) -> list[tuple[int, bytes]]:
    """(uid, raw message) pairs from a `UID FETCH ... (UID BODY.PEEK[])` response, in server order.

    Each item is `N FETCH (UID u BODY[] {size}`, the literal, then `)`; the UID may also come after
    the literal. Unsolicited FETCH items (flag changes) carry no literal and are skipped."""
    found, uid, raw = [], None, None
    for line in lines:
        if isinstance(line, (bytearray, memoryview)):
            raw = bytes(line)
            continue
        if b" FETCH (" in line:
            if uid is not None and raw is not None:
                found.append((uid, raw))
            match = _FETCH_UID.search(line)
            uid, raw = (int(match.group(1)) if match else None), None
        elif uid is None:
            match = _FETCH_UID.search(line)
            uid = int(match.group(1)) if match else None
    if uid is not None and raw is not None:
        found.append((uid, raw))
    return found


def parse_status(lines: list) -> dict[str, int]:
    """{"MESSAGES": 3, "UNSEEN": 1, ...} from a STATUS response."""
    for line in lines:
        if isinstance(line, bytes) and b"(" in line:
            inner = line[line.rindex(b"(") + 1:].rstrip(b")")
            tokens = inner.split()
            return {tokens[i].decode().upper(): int(tokens[i + 1]) for i in range(0, len(tokens) - 1, 2)
                    if tokens[i + 1].isdigit()}
    return {}


_NAMESPACE = re.compile(rb'(?:\* )?(?:NAMESPACE )?\(\("((?:[^"\\]|\\.)*)" (?:"((?:[^"\\]|\\.)*)"|NIL)\)')


def parse_namespace(lines: list) -> tuple[str, str] | None:
    """The first personal namespace of a NAMESPACE response (RFC 2342): (prefix, hierarchy separator)."""
    for line in lines:
        if isinstance(line, bytes) and (found := _NAMESPACE.match(line)):  # aioimaplib drops "* NAMESPACE "
            prefix, separator = (re.sub(rb"\\(.)", rb"\1", part or b"").decode(errors="replace")
                                 for part in found.groups())
            return prefix, separator
    return None
