"""The challenge mail: text and HTML from Jinja2 templates, headers that keep it from loops and robots.

Templates come from the operator's folder (`[challenge] template_dir`) first, then the built-in ones in
this package. The mail never quotes the held message (nor its subject): a spammer who forges a victim's
address would otherwise have us deliver his text to the victim.

The header section is written here, line by line, from values checked against their grammar: no email
policy gets to decode or refold them (CPython's did decode an encoded word in a stranger's Message-ID into
a raw CR LF and so wrote his header lines, issue 7). `verify` reads the bytes back before they are stored
and again before they are sent.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import lru_cache

import jinja2

MARKER = "X-Ticketmail-Challenge"  # on every challenge; a bounce quoting it is recognised and never challenged
MAIL_ID_PREFIX = "ticketmail-challenge."  # our Message-IDs: <ticketmail-challenge.HEX@domain>
MAX_ID = 250  # characters of a msg-id without its brackets: one per folded line, well below 998
MAX_TEXT = 100  # characters of a display name or subject prefix
MAX_REFERENCES = 10  # ids of the held message's thread we repeat

# RFC 5322 3.2.3 / 3.6.4, without the obsolete forms, comments or folding inside an id.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_MSG_ID = re.compile(rf"{_DOT_ATOM}@(?:{_DOT_ATOM}|\[[!-Z^-~]*\])")
_LOCAL = re.compile(_DOT_ATOM)
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}")
_ATOM = re.compile(rf"{_ATEXT}+")
_ATOMS = re.compile(rf"{_ATEXT}+(?: {_ATEXT}+)*")
_VCHARS = re.compile(r"[!-~]+")
_QUOTED = re.compile(r'"((?:[ !#-\[\]-~]|\\[ -~])*)"')
_ENCODED_WORD = re.compile(r"=\?utf-8\?(?:[bB]\?[A-Za-z0-9+/]+={0,2}|[qQ]\?[!->@-~]+)\?=", re.I)
_DATE = re.compile(r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                   r"\d{4} \d\d:\d\d:\d\d [+-]\d{4}")
_FROM = re.compile(r"(?:(.+) )?<([^<>]+)>")
_BOUNDARY = re.compile(r'multipart/alternative; boundary="([0-9A-Za-z\'()+_,./:=?-]{1,70})"')
_CONTROLS = re.compile(r"[\0-\x08\x0b-\x1f\x7f]")  # in a body: everything but tab and line ends
_TEXT_CATEGORIES = ("L", "M", "N", "P", "S")  # letters, marks, numbers, punctuation, symbols; no controls

FIXED = {"Auto-Submitted": "auto-replied", "Precedence": "bulk", "X-Auto-Response-Suppress": "All",
         MARKER: "confirmation request", "MIME-Version": "1.0"}
# The headers of a challenge, in the order written; the two threading ones only when there are ids.
ORDER = ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted",
         "Precedence", "X-Auto-Response-Suppress", MARKER, "MIME-Version", "Content-Type")
OPTIONAL = frozenset({"In-Reply-To", "References"})
_PART_HEADERS = frozenset({"Content-Type", "Content-Transfer-Encoding", "MIME-Version"})
_BODY_POLICY = SMTP.clone(cte_type="7bit")  # quoted-printable or base64 for non-ASCII text: any relay takes it


class UnsafeMail(ValueError):
    """The serialised mail is not exactly what ticketmail writes: it must not be sent."""

    def __str__(self) -> str:
        return f"refused, not a mail as ticketmail writes it: {self.args[0]}"


@lru_cache(maxsize=16)
def environment(package: str, override: str = "") -> jinja2.Environment:
    """Templates of `package`'s templates/ folder, overridden file by file by `override` if set."""
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(override)] if override else []
    loaders.append(jinja2.PackageLoader(package, "templates"))
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def new_mail_id(domain: str) -> str:
    """A Message-ID for a challenge, without brackets, in the form `is_our_mail_id` recognises."""
    return f"{MAIL_ID_PREFIX}{secrets.token_hex(12)}@{domain}"


def is_our_mail_id(message_id: str) -> bool:
    return message_id.lower().startswith(MAIL_ID_PREFIX)


# --- the grammar of each value ---------------------------------------------------------------------

def mailable(address: str) -> bool:
    """An ASCII addr-spec (dot-atom @ host name) we can put in To and RCPT TO without surprises."""
    if not isinstance(address, str) or len(address) > 254 or address.count("@") != 1 or "=?" in address:
        return False
    local, _, domain = address.partition("@")
    return len(local) <= 64 and bool(_LOCAL.fullmatch(local)) and bool(_DOMAIN.fullmatch(domain))


def valid_msg_id(value: str | None) -> bool:
    """A msg-id without its brackets: id-left "@" id-right in printable ASCII, no encoded word, bounded."""
    return (isinstance(value, str) and len(value) <= MAX_ID and "=?" not in value
            and bool(_MSG_ID.fullmatch(value)))


def valid_text(value: str, limit: int = MAX_TEXT) -> bool:
    """Text for a display name or subject: printable characters and single plain spaces, nothing that a
    reader would decode (`=?`), steer (bidi controls) or break a line with."""
    return (0 < len(value) <= limit and value == value.strip(" ") and "  " not in value and "=?" not in value
            and all(c == " " or unicodedata.category(c)[0] in _TEXT_CATEGORIES for c in value))


def _phrase(text: str) -> str:
    """`text` (valid) as an RFC 5322 phrase: atoms, else a quoted-string, else encoded words."""
    if _ATOMS.fullmatch(text):
        return text
    if text.isascii():
        return '"' + re.sub(r'(["\\])', r"\\\1", text) + '"'
    return _encoded(text)


def _encoded(text: str) -> str:
    """`text` as RFC 2047 base64 words of at most 45 bytes (72 characters), split between characters."""
    chunks, chunk = [], ""
    for c in text:
        if len((chunk + c).encode()) > 45:
            chunks.append(chunk)
            chunk = ""
        chunk += c
    chunks.append(chunk)
    return " ".join(f"=?utf-8?b?{base64.b64encode(c.encode()).decode()}?=" for c in chunks)


def _phrase_text(value: str) -> str | None:
    """The text of a display name as we write it (a quoted-string, or atoms and encoded words), else None."""
    quoted = _QUOTED.fullmatch(value)
    return re.sub(r"\\(.)", r"\1", quoted.group(1)) if quoted else _words_text(value, _ATOM)


def _words_text(value: str, word: re.Pattern) -> str | None:
    """The text of words matching `word` and whole encoded words (`=?` nowhere else), else None."""
    if not all(_ENCODED_WORD.fullmatch(w) or ("=?" not in w and word.fullmatch(w)) for w in value.split(" ")):
        return None
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return None


# --- writing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChallengeMail:
    department: str  # the department's name
    from_addr: str  # the department's address
    to_addr: str  # the sender, and nobody else
    link: str
    expires_at: datetime
    days: int
    contact: str
    subject_prefix: str
    in_reply_to: str | None  # the held message's Message-ID, without brackets
    references: tuple[str, ...] = ()


def _ignore(why: str) -> None:
    pass


def headers(mail: ChallengeMail, mail_id: str, left_out: Callable[[str], None] = _ignore) -> list[tuple[str, str]]:
    """The challenge's headers before MIME-Version, as (name, value). A stranger's or the config's value
    that fails its grammar is left out and reported to `left_out`; our own addresses must pass."""
    if not (mailable(mail.from_addr) and mailable(mail.to_addr) and valid_msg_id(mail_id)):
        raise UnsafeMail(f"From {ascii(mail.from_addr)[:80]}, To {ascii(mail.to_addr)[:80]} or Message-ID "
                         f"{ascii(mail_id)[:80]} is not a plain address or msg-id")
    name = mail.department if mail.department and valid_text(mail.department) else ""
    if mail.department and not name:
        left_out(f"department name {ascii(mail.department)[:80]} left out of From and Subject: not plain text")
    prefix = mail.subject_prefix if mail.subject_prefix and valid_text(mail.subject_prefix) else ""
    if mail.subject_prefix and not prefix:
        left_out(f"subject_prefix {ascii(mail.subject_prefix)[:80]} left out of Subject: not plain text")
    subject = " ".join(filter(None, [prefix, f"your message to {name}" if name else "your message"]))
    result = [
        ("From", f"{_phrase(name)} <{mail.from_addr}>" if name else f"<{mail.from_addr}>"),
        ("To", mail.to_addr),
        ("Subject", subject if subject.isascii() else _encoded(subject)),
        ("Date", format_datetime(datetime.now(timezone.utc))),
        ("Message-ID", f"<{mail_id}>"),
    ]
    robots = [(n, FIXED[n]) for n in ("Auto-Submitted", "Precedence", "X-Auto-Response-Suppress", MARKER)]
    return result + _thread(mail, left_out) + robots


def _thread(mail: ChallengeMail, left_out: Callable[[str], None]) -> list[tuple[str, str]]:
    """In-Reply-To and References to the held message: a stranger's ids, so only well-formed ones."""
    given = list(mail.references[-MAX_REFERENCES:])
    thread = [i for i in given if valid_msg_id(i)]
    if len(thread) < len(given):
        left_out(f"References: {len(given) - len(thread)} of the held message's ids left out: "
                 "not well-formed msg-ids")
    result = []
    if mail.in_reply_to and valid_msg_id(mail.in_reply_to):
        result.append(("In-Reply-To", f"<{mail.in_reply_to}>"))
        thread.append(mail.in_reply_to)
    elif mail.in_reply_to:
        left_out(f"In-Reply-To left out: the held message's Message-ID {ascii(mail.in_reply_to)[:80]} "
                 "is not a well-formed msg-id")
    if thread:
        result.append(("References", " ".join(f"<{i}>" for i in dict.fromkeys(thread))))
    return result


def _line(name: str, value: str) -> str:
    """One header field, folded at spaces before 78 columns where it can be (RFC 5322 2.2.3)."""
    lines = [f"{name}:"]
    for word in value.split(" "):
        if len(lines[-1]) + 1 + len(word) > 78 and lines[-1] != f"{name}:":
            lines.append("")
        lines[-1] += " " + word
    return "\r\n".join(lines) + "\r\n"


def _body(mail: ChallengeMail, templates: jinja2.Environment) -> tuple[str, bytes]:
    """Its boundary, and the multipart/alternative body without the library's header section."""
    values = {
        "department": mail.department,
        "sender": mail.to_addr,
        "link": mail.link,
        "days": mail.days,
        "expires": mail.expires_at.strftime("%d %B %Y, %H:%M UTC"),
        "contact": mail.contact,
    }
    text, html = (templates.get_template(f"challenge.{kind}").render(values) for kind in ("txt", "html"))
    msg = EmailMessage(policy=_BODY_POLICY)
    msg.set_content(text, cte=_transfer_encoding(text))
    msg.add_alternative(html, subtype="html", cte=_transfer_encoding(html))
    boundary = f"ticketmail.{secrets.token_hex(16)}"
    msg.set_boundary(boundary)
    _, _, body = msg.as_bytes().partition(b"\r\n\r\n")  # the library's own header section is replaced
    return boundary, body


def _transfer_encoding(text: str) -> str | None:
    """Quoted-printable for text with control characters (the library would send a NUL as it is), else
    the library's choice: 7bit for plain ASCII, quoted-printable or base64 for the rest."""
    return "quoted-printable" if _CONTROLS.search(text) else None


def build(mail: ChallengeMail, mail_id: str, templates: jinja2.Environment,
          left_out: Callable[[str], None] = _ignore) -> bytes:
    """The challenge as bytes for SMTP (CRLF, 7-bit), checked by `verify` to read back as written;
    UnsafeMail otherwise. Values left out are reported to `left_out`."""
    boundary, body = _body(mail, templates)
    fields = headers(mail, mail_id, left_out) + [
        ("MIME-Version", FIXED["MIME-Version"]),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    content = "".join(_line(n, v) for n, v in fields).encode("ascii") + b"\r\n" + body
    if verify(content) != fields:
        raise UnsafeMail("the header section does not read back as written")
    return content


# --- reading back ---------------------------------------------------------------------------------

def verify(content: bytes) -> list[tuple[str, str]]:
    """The headers of a challenge mail, unfolded, if `content` is exactly one as `build` writes it: 7-bit
    CRLF lines, our headers only, in our order, each value in its grammar, the standard library reading
    the same header section, and a body of one text and one HTML part. UnsafeMail otherwise."""
    if not content.isascii() or b"\0" in content or re.search(rb"\r(?!\n)|(?<!\r)\n", content):
        raise UnsafeMail("not 7-bit text with CRLF line ends")
    if any(len(line) > 998 for line in content.split(b"\r\n")):
        raise UnsafeMail("a line longer than 998 characters")
    head, blank, _ = content.partition(b"\r\n\r\n")
    if not blank:
        raise UnsafeMail("no end of the header section")
    fields = _fields(head.decode("ascii"))
    parsed = email.message_from_bytes(content, policy=email.policy.compat32)
    if [(n, _unfold(v)) for n, v in parsed.items()] != fields:
        raise UnsafeMail("the standard library reads a different header section")
    _check_names([n for n, _ in fields])
    for name, value in fields:
        if not _valid_field(name, value):
            raise UnsafeMail(f"header {name} {ascii(value)[:80]}")
    _check_structure(content, fields)
    return fields


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def _fields(head: str) -> list[tuple[str, str]]:
    """(name, value) of each field of a header section as `_line` writes it: "Name: value", folded."""
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] == " " and fields and line.strip():
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
            continue
        match = re.fullmatch(r"([!-9;-~]+): (\S.*)", line)
        if not match:
            raise UnsafeMail(f"header line {ascii(line)[:80]}")
        fields.append((match.group(1), match.group(2)))
    return fields


def _check_names(names: list[str]) -> None:
    if names != [n for n in ORDER if n in names] or set(ORDER) - OPTIONAL - set(names):
        unexpected = [n for n in names if n not in ORDER] or names
        raise UnsafeMail(f"headers {ascii(unexpected)[:200]} (ours only, in our order)")


def _valid_field(name: str, value: str) -> bool:
    if name in FIXED:
        return value == FIXED[name]
    if name == "From":
        match = _FROM.fullmatch(value)
        name_ok = match and (match.group(1) is None or valid_text(_phrase_text(match.group(1)) or ""))
        return bool(name_ok and mailable(match.group(2)))
    if name == "To":
        return mailable(value)
    if name == "Subject":
        return valid_text(_words_text(value, _VCHARS) or "", 2 * MAX_TEXT + 20)
    if name == "Date":
        return bool(_DATE.fullmatch(value))
    if name in ("Message-ID", "In-Reply-To"):
        return value[:1] == "<" and value[-1:] == ">" and valid_msg_id(value[1:-1])
    if name == "References":
        ids = value.split(" ")
        return len(ids) <= MAX_REFERENCES + 1 and all(i[:1] == "<" and i[-1:] == ">" and valid_msg_id(i[1:-1])
                                                      for i in ids)
    return name == "Content-Type" and bool(_BOUNDARY.fullmatch(value))


def _check_structure(content: bytes, fields: list[tuple[str, str]]) -> None:
    """What a reader's parser (the default policy) sees: our header names and one text/plain and one
    text/html part, with part headers only, nothing before or after them."""
    msg = email.message_from_bytes(content, policy=email.policy.default)
    parts = list(msg.iter_parts()) if msg.is_multipart() else []
    if (msg.keys() != [n for n, _ in fields]
            or msg.get_boundary() != _BOUNDARY.fullmatch(dict(fields)["Content-Type"]).group(1)
            or [p.get_content_type() for p in parts] != ["text/plain", "text/html"]
            or any(set(p.keys()) - _PART_HEADERS or p.is_multipart() for p in parts)
            or (msg.preamble or "").strip() or (msg.epilogue or "").strip()
            or msg.defects or any(p.defects for p in parts)):
        raise UnsafeMail("a body other than one text and one HTML part under our headers")


def check_templates(override: str = "") -> None:
    """Render the challenge once with sample values; ValueError naming the template if that fails."""
    sample = ChallengeMail(department="Support", from_addr="support@example.org", to_addr="someone@example.org",
                           link="https://example.org/confirm/x", expires_at=datetime(2030, 1, 1), days=7,
                           contact="support@example.org", subject_prefix="Please confirm:", in_reply_to=None)
    try:
        build(sample, new_mail_id("example.org"), environment("ingest", override))
    except jinja2.TemplateError as e:
        where = f" in {e.filename}" if getattr(e, "filename", None) else ""
        raise ValueError(f"challenge.template_dir: challenge template{where}: {e}") from None
