"""Parse raw RFC 5322 bytes into a ParsedMessage; `parse_message` never raises.

Policy, chosen by measurement (`.venv/bin/python bench/parse_bench.py`, CPython 3.11.7, 2 shared cores,
best of 5): on a ~4 KB multipart/alternative message BytesParser(policy.default) takes ~0.95 ms just to
parse and ~2.0 ms once headers and bodies are fetched; policy.compat32 parses it in ~0.11-0.13 ms, and
`parse_message` does the whole job in ~0.32-0.41 ms (~2.0 ms for ~100 KB with a base64 attachment,
where compat32 alone takes ~1.1 ms and policy.default ~2.1-3.6 ms). So we parse the structure with
compat32 and decode only what we use ourselves: RFC 2047 words, raw 8-bit (UTF-8) headers, charsets
with fallbacks, addresses with `getaddresses`, dates with `parsedate_to_datetime`. Every step that can
fail on hostile input turns the failure into a warning.

Known limit: the stdlib feed parser recurses per nesting level and checks every line against every open
boundary, so a message nested ~250+ levels deep makes it raise RecursionError (we then keep the headers
and the body unparsed) after ~0.5 s for 1000 levels."""

from __future__ import annotations

import binascii
import codecs
import hashlib
import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.feedparser import BytesFeedParser
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from functools import cached_property, lru_cache
from html.parser import HTMLParser
from typing import Iterator

MAX_DEPTH = 50                  # multipart levels we descend; deeper subtrees become one attachment
MAX_WARNINGS = 100              # hostile input can produce thousands of defects
MAX_ADDRESS_CHARS = 64 * 1024   # getaddresses is pure Python: a 1 MB To header would take seconds

# Re-serialise embedded messages without refolding their headers, in the input's line ending.
_FLATTEN = {sep: policy.compat32.clone(max_line_length=0, linesep=sep) for sep in ("\n", "\r\n")}


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    content: bytes
    content_id: str | None
    inline: bool


@dataclass
class ParsedMessage:
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    from_addr: str = ""
    from_name: str = ""
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    to_names: list[tuple[str, str]] = field(default_factory=list)
    cc_names: list[tuple[str, str]] = field(default_factory=list)
    subject: str = ""
    date: datetime | None = None
    text: str = ""
    html: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def by_name(self) -> dict[str, list[str]]:
        """Decoded header values by lowercased name, in order (built once, on first use)."""
        index: dict[str, list[str]] = {}
        for key, value in self.headers:
            index.setdefault(key.strip().lower(), []).append(value)
        return index

    def header(self, name: str) -> list[str]:
        """Decoded values of every header called `name` (case-insensitive), in order."""
        return self.by_name.get(name.strip().lower(), [])

    def first(self, name: str) -> str | None:
        """The first decoded value of header `name`, or None."""
        values = self.header(name)
        return values[0] if values else None


class _Warnings(list):
    """Warnings in order of discovery, without duplicates, capped at MAX_WARNINGS."""

    def add(self, text: str) -> None:
        if text in self:
            return
        if len(self) < MAX_WARNINGS:
            self.append(text)
        elif len(self) == MAX_WARNINGS:
            self.append("further warnings suppressed")


def _short(value: str, limit: int = 60) -> str:
    """A bounded repr for warnings: a 1 MB header must not become a 1 MB warning."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --- charsets -------------------------------------------------------------------------------------

# Labels Python lacks or that mail clients use for a superset (as browsers do, per WHATWG).
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "gb2312": "gb18030",
    "gbk": "gb18030", "x-gbk": "gb18030", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
    "windows-874": "cp874", "iso-8859-8-i": "iso-8859-8", "x-mac-roman": "mac-roman",
    "x-sjis": "cp932", "shift_jis": "cp932", "shift-jis": "cp932",
}


@lru_cache(maxsize=256)
def _codecs(charset: str) -> tuple[str, ...]:
    """Python text codecs for a MIME charset label, preferred superset first; () if unknown."""
    label = charset.strip().strip("\"'").lower()
    found = []
    for name in (_CHARSET_ALIASES.get(label), label):
        try:
            info = codecs.lookup(name) if name else None
        except (LookupError, ValueError, TypeError):
            continue
        # CodecInfo marks bytes-to-bytes codecs (base64, rot13...) that bytes.decode refuses.
        if info and getattr(info, "_is_text_encoding", True) and info.name not in found:
            found.append(info.name)
    return tuple(found)


def _decode_bytes(data: bytes, charset: str | None, where: str, w: _Warnings) -> str:
    """Decode with the declared charset, else UTF-8, cp1252, latin-1 (which always succeeds); warn on fallback."""
    declared = _codecs(charset) if charset else ()
    for codec in declared:
        try:
            return data.decode(codec)
        except Exception:  # UnicodeDecodeError, or a stateful codec's own errors
            pass
    for fallback in ("utf-8", "cp1252", "latin-1"):
        try:
            text = data.decode(fallback)
        except UnicodeDecodeError:
            continue
        if charset and not declared:
            w.add(f"unknown charset {_short(charset, 30)} in {where}, decoded as {fallback}")
        elif charset:
            w.add(f"text in {where} is not valid {_short(charset, 30)}, decoded as {fallback}")
        elif fallback != "utf-8":  # undeclared UTF-8 is normal (RFC 6532); anything else is a guess
            w.add(f"undecodable bytes in {where}, decoded as {fallback}")
        return text
    raise AssertionError("latin-1 decodes any bytes")


_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _clean(text: str, where: str, w: _Warnings) -> str:
    """Replace NULs and lone surrogates, which databases and UTF-8 encoders refuse."""
    if not _UNSAFE.search(text):
        return text
    w.add(f"NUL bytes or invalid characters in {where} replaced")
    return _UNSAFE.sub("\ufffd", text)


# --- headers --------------------------------------------------------------------------------------

_FOLD = re.compile(r"(?:\r\n|\r|\n)(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([^?\s]*?)\?([qQbB])\?(.*?)\?=")


def _unfold(raw: str, name: str, w: _Warnings) -> str:
    """A compat32 raw header value unfolded, with its 8-bit bytes (smuggled as surrogates) decoded."""
    value = _FOLD.sub("", raw).replace("\r", " ").replace("\n", " ")
    if value.isascii():
        return value
    return _decode_bytes(value.encode("utf-8", "surrogateescape"), None, f"header {name}", w)


def _word_bytes(encoding: str, text: str) -> bytes | None:
    """The bytes of one encoded word's payload, or None if it is not valid B/Q encoding."""
    data = text.encode("utf-8")
    try:
        if encoding in "qQ":
            return binascii.a2b_qp(data, header=True)
        data = data.strip()
        return binascii.a2b_base64(data + b"=" * (-len(data) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def _decode_words(value: str, where: str, w: _Warnings) -> str:
    """Decode RFC 2047 encoded words; adjacent words of one charset are joined before decoding,
    since senders split multi-byte characters across them."""
    if "=?" not in value:
        return value
    pieces: list[str | tuple[str, bytes]] = []
    pos = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos:match.start()]
        pos = match.end()
        if gap and not (gap.isspace() and pieces and isinstance(pieces[-1], tuple)):
            pieces.append(gap)  # whitespace between two encoded words is not text (RFC 2047 6.2)
        charset, encoding, text = match.groups()
        charset = charset.split("*", 1)[0]  # drop an RFC 2231 language tag
        data = _word_bytes(encoding, text)
        if data is None:
            w.add(f"invalid encoded word in {where}: {_short(match.group(0), 40)}")
            pieces.append(match.group(0))
        elif pieces and isinstance(pieces[-1], tuple) and pieces[-1][0].lower() == charset.lower():
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + data)
        else:
            pieces.append((charset, data))
    pieces.append(value[pos:])
    return "".join(p if isinstance(p, str) else _decode_bytes(p[1], p[0] or None, where, w)
                   for p in pieces)


def _addresses(values: list[str], name: str, w: _Warnings) -> list[tuple[str, str]]:
    """(decoded display name, lowercased addr-spec) of each mailbox with an '@' in the header values."""
    joined = ", ".join(values)
    if len(joined) > MAX_ADDRESS_CHARS:
        w.add(f"{name} header longer than {MAX_ADDRESS_CHARS} characters, rest ignored")
        joined = joined[:joined.rfind(",", 0, MAX_ADDRESS_CHARS) + 1 or MAX_ADDRESS_CHARS]
    pairs, rejected = [], 0
    try:
        parsed = getaddresses([joined])
    except Exception as exc:  # the old address parser has had crash bugs on odd input
        w.add(f"{name} header could not be parsed ({type(exc).__name__})")
        parsed = []
    for display, addr in parsed:
        addr = addr.strip().lower()
        if "@" in addr.strip("@"):
            display = _decode_words(display, f"header {name}", w).strip()
            pairs.append((_clean(display, f"header {name}", w), _clean(addr, f"header {name}", w)))
        else:
            rejected += bool(addr)  # empty entries are groups like "undisclosed-recipients:;"
    if rejected and name != "From":  # the caller words a missing sender itself
        w.add(f"{rejected} entries without an address in {name} header")
    return pairs


_MSGID = re.compile(r"<([^<>]*)>")


def _message_ids(value: str) -> list[str]:
    """Message-ids in a header value without brackets; an unbracketed single token counts as one."""
    ids = ["".join(found.split()) for found in _MSGID.findall(value)]
    if not any(ids) and len(value.split()) == 1:
        ids = [value.strip().strip("<>")]
    return [i for i in ids if i]


def _date(value: str, w: _Warnings) -> datetime | None:
    """The Date header as an aware UTC datetime, or None with a warning."""
    try:
        parsed = parsedate_to_datetime(value)
        if parsed.tzinfo is None:  # "-0000": UTC, sender's local offset unknown (RFC 5322 3.3)
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except Exception:  # ValueError, TypeError, OverflowError near datetime's limits
        w.add(f"unparseable Date header {_short(value)}")
        return None


# --- body -----------------------------------------------------------------------------------------

@dataclass
class _Body:
    text: str | None = None
    html: str | None = None
    attachments: list[Attachment] = field(default_factory=list)


_EXTENSIONS = {"text/plain": ".txt", "text/html": ".html", "message/rfc822": ".eml",
               "message/global": ".eml", "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif",
               "application/pdf": ".pdf", "message/delivery-status": ".txt"}
_CONTENT_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_FILENAME_JUNK = re.compile(r'[\x00-\x1f\x7f\\/:*?"<>|]+')
_KNOWN_CTE = {"", "7bit", "8bit", "binary", "base64", "quoted-printable",
              "x-uuencode", "uuencode", "uue", "x-uue"}


def _params_view(part: Message, n: int, w: _Warnings) -> Message:
    """The part itself, or (if its Content-Type/-Disposition hold 8-bit bytes) a stand-in with
    those headers decoded, so compat32's get_param sees text rather than surrogates."""
    raw = [(k, v) for k, v in part.raw_items() if k.lower() in ("content-type", "content-disposition")]
    if all(v.isascii() for _, v in raw):
        return part
    view = Message()
    for key, value in raw:
        view[key] = _unfold(value, f"{key} in part {n}", w)
    return view


def _content_type(view: Message) -> str:
    """Lowercased type/subtype; text/plain when missing or malformed (RFC 2045 5.2)."""
    ctype = view.get_content_type()
    return ctype if _CONTENT_TYPE.fullmatch(ctype) else "text/plain"


def _filename(view: Message, n: int, w: _Warnings) -> str:
    """The declared filename (RFC 2231 or RFC 2047 encoded), without directories, control characters
    or characters Windows refuses in names."""
    name = view.get_filename() or ""
    name = _decode_words(_unfold(name, f"filename in part {n}", w), f"filename in part {n}", w)
    name = re.split(r"[\\/]", name)[-1]  # senders leak client paths like C:\Users\...
    name = _FILENAME_JUNK.sub("", _clean(name, f"filename in part {n}", w)).strip()
    return "" if name in (".", "..") else name


def _raw_header(part: Message, name: str) -> str | None:
    """The first raw (compat32) value of header `name`, or None."""
    return next((v for k, v in part.raw_items() if k.lower() == name), None)


def _content_id(part: Message, w: _Warnings) -> str | None:
    """Content-ID without angle brackets, or None."""
    raw = _raw_header(part, "content-id")
    value = _unfold(raw, "Content-ID", w).strip().strip("<>").strip() if raw else ""
    return _clean(value, "Content-ID", w) or None


def _payload(part: Message, n: int, w: _Warnings) -> bytes:
    """The part's payload with its transfer encoding undone (leniently, as compat32 does)."""
    raw_cte = _raw_header(part, "content-transfer-encoding") or ""
    cte = _unfold(raw_cte, "Content-Transfer-Encoding", w).strip().lower()
    if cte not in _KNOWN_CTE:
        w.add(f"unknown transfer encoding {_short(cte, 30)} in part {n}, content kept undecoded")
    elif cte != raw_cte:  # compat32 compares the raw value: " Base64 " would go undecoded
        part.replace_header("Content-Transfer-Encoding", cte)
    # part._payload as parsed: get_payload() would re-decode 8-bit text by its charset.
    content = _clean_base64(part._payload) if cte == "base64" else None
    if content is None:
        content = part.get_payload(decode=True)
    return content if isinstance(content, bytes) else b""


_CLEAN_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]*(?:=[\r\n]*){0,2}")


def _clean_base64(payload) -> bytes | None:
    """Well-formed base64 decoded without compat32's copies of it (~4.5x the payload for a large
    attachment, against the result's 0.75x); None for anything else, which compat32 decodes
    leniently and reports."""
    if not isinstance(payload, str) or not payload.isascii() or not _CLEAN_BASE64.fullmatch(payload):
        return None
    if (len(payload) - payload.count("\n") - payload.count("\r")) % 4:
        return None
    return binascii.a2b_base64(payload)


def _flatten(part: Message, n: int, linesep: str, with_headers: bool, w: _Warnings) -> bytes:
    """A part that compat32 parsed into sub-messages, re-serialised: whole (a multipart subtree keeps
    the headers naming its boundary) or only its body (message/*: the embedded message)."""
    try:
        data = part.as_bytes(policy=_FLATTEN[linesep])
    except Exception as exc:  # RecursionError when the subtree itself is pathologically deep
        w.add(f"part {n} could not be serialised ({type(exc).__name__}), content left empty")
        return b""
    if with_headers:
        return data
    if len(part) == 0:  # no headers: the generator wrote one line break, then the body
        return data[len(linesep):]
    return data.split(linesep.encode() * 2, 1)[-1]


def _embedded_name(part: Message, n: int, w: _Warnings) -> str:
    """A filename for an attached message: its subject plus .eml."""
    inner = part.get_payload(0) if isinstance(part.get_payload(), list) else None
    subject = (_raw_header(inner, "subject") or "") if inner is not None else ""
    subject = _decode_words(_unfold(subject, "Subject of attached message", w), "attached message", w)
    subject = " ".join(_FILENAME_JUNK.sub("", _clean(subject, "attached message", w)).split())[:100]
    return f"{subject}.eml" if subject else f"part-{n}.eml"


def _attachment(part: Message, view: Message, n: int, ctype: str, content: bytes,
                filename: str, w: _Warnings) -> Attachment:
    """An Attachment, with a generated name when the sender gave none."""
    cid = _content_id(part, w)
    disposition = view.get_content_disposition()
    inline = disposition == "inline" or (disposition != "attachment" and cid is not None and not filename)
    if not filename:
        filename = _embedded_name(part, n, w) if ctype in ("message/rfc822", "message/global") else ""
    filename = filename or f"part-{n}{_EXTENSIONS.get(ctype, '.bin')}"
    return Attachment(filename, ctype, len(content), hashlib.sha256(content).hexdigest(), content,
                      cid, inline)


def _defects(part: Message, n: int, w: _Warnings) -> None:
    """Report the email package's defects for one part, in its own words."""
    for defect in part.defects:
        doc = (type(defect).__doc__ or type(defect).__name__).strip().splitlines()[0]
        detail = str(defect).strip()
        w.add(f"part {n}: {doc}" + (f" ({_short(detail, 40)})" if detail else ""))


def _walk(part: Message, body: _Body, numbers: Iterator[int], linesep: str, w: _Warnings,
          depth: int = 0) -> None:
    """Sort one MIME entity and its children into body text, html and attachments."""
    n = next(numbers)
    try:
        _sort(part, n, body, numbers, linesep, w, depth)
    except Exception as exc:  # one bad part must not cost the others
        w.add(f"part {n} could not be decoded ({type(exc).__name__}), skipped")


def _sort(part: Message, n: int, body: _Body, numbers: Iterator[int], linesep: str, w: _Warnings,
          depth: int) -> None:
    """File part `n` as body text or html or an attachment, or descend into its children."""
    view = _params_view(part, n, w)
    ctype = _content_type(view)
    # A list of sub-messages for multipart and message/*; get_payload() on a leaf would decode it.
    children = part.get_payload() if part.is_multipart() else None
    if children is not None and ctype.startswith("multipart/") and depth < MAX_DEPTH:
        _defects(part, n, w)
        for child in children:
            _walk(child, body, numbers, linesep, w, depth + 1)
        return
    if children is not None:  # message/* (kept whole), or nesting past MAX_DEPTH
        deep = ctype.startswith("multipart/")
        if deep:
            w.add(f"multipart nesting deeper than {MAX_DEPTH} levels, rest kept as attachment")
        content = _flatten(part, n, linesep, deep, w)
    else:
        content = _payload(part, n, w)
    _defects(part, n, w)
    filename = _filename(view, n, w)
    if ctype.startswith("multipart/") and children is None:
        ctype = "text/plain"  # no boundary or unparsed structure: show the body rather than hide it
    is_body = (ctype in ("text/plain", "text/html") and not filename
               and view.get_content_disposition() != "attachment")
    if is_body and ctype == "text/plain" and body.text is None:
        body.text = _text(content, view, f"part {n}", w)
    elif is_body and ctype == "text/html" and body.html is None:
        body.html = _text(content, view, f"part {n}", w)
    else:
        body.attachments.append(_attachment(part, view, n, ctype, content, filename, w))


def _text(content: bytes, view: Message, where: str, w: _Warnings) -> str:
    """A text part decoded by its charset, with LF line endings."""
    text = _decode_bytes(content, view.get_content_charset(), where, w)
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    return _clean(text, where, w)


class _HTMLText(HTMLParser):
    """Collects the visible text of HTML, with line breaks at block boundaries."""

    BREAK = frozenset("br p div li tr h1 h2 h3 h4 h5 h6 table ul ol dl dt dd blockquote pre hr "
                      "section article header footer address form".split())
    HIDDEN = frozenset({"script", "style", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.hidden = 0
        self.pre = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in self.HIDDEN
        self.pre += tag == "pre"
        if tag in self.BREAK:
            self.out.append("\n- " if tag == "li" else "\n")
        elif tag in ("td", "th") and self.out and not self.out[-1][-1].isspace():
            self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN and self.hidden:
            self.hidden -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1
        if tag in self.BREAK and tag not in ("li", "br"):  # <br/> arrives as start and end
            self.out.append("\n\n" if tag in ("p", "h1", "h2", "h3", "table", "blockquote") else "\n")

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if not self.pre:  # source whitespace is layout: collapse it, and drop it at a line start
            data = re.sub(r"\s+", " ", data)
            if not self.out or self.out[-1][-1].isspace():
                data = data.lstrip()
        if data:
            self.out.append(data)


def _html_to_text(markup: str, w: _Warnings) -> str:
    """Readable plain text of an HTML body: tags dropped, entities unescaped, blocks on their own lines."""
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception as exc:  # HTMLParser is lenient; guard it anyway, keeping what it collected
        w.add(f"HTML body could not be fully rendered as text ({type(exc).__name__})")
    lines = [line.rstrip() for line in "".join(parser.out).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


# --- assembly -------------------------------------------------------------------------------------

_FEED = 64 * 1024


def _structure(raw: bytes, w: _Warnings) -> Message:
    """The compat32 tree; headers only (body unparsed) if the parser itself fails."""
    try:
        # Fed in pieces, as BytesParser does through a StringIO, which holds 4 bytes a character.
        parser, view = BytesFeedParser(policy=policy.compat32), memoryview(raw)
        for at in range(0, len(raw), _FEED):
            parser.feed(bytes(view[at : at + _FEED]))
        return parser.close()
    except Exception as exc:  # RecursionError: the feed parser recurses once per nesting level
        w.add(f"MIME structure could not be parsed ({type(exc).__name__}), body left unparsed")
        return BytesHeaderParser(policy=policy.compat32).parsebytes(raw)


def _sender(froms: list[str], w: _Warnings) -> tuple[str, str]:
    """(display name, addr-spec) from the first From header."""
    if len(froms) > 1:
        w.add(f"{len(froms)} From headers, used the first")
    senders = _addresses(froms[:1], "From", w)
    if senders:
        return senders[0]
    if not froms:
        w.add("missing From header")
        return "", ""
    w.add(f"no address in From header {_short(froms[0])}")
    return _clean(_decode_words(froms[0], "header From", w).strip(), "header From", w), ""  # "Mailer Daemon"


def _references(values: dict[str, list[str]], w: _Warnings) -> tuple[str | None, list[str], list[str]]:
    """Message-ID, In-Reply-To ids and References ids."""
    def ids(name: str) -> list[str]:
        return [_clean(i, name, w) for value in values.get(name, []) for i in _message_ids(value)]
    own = ids("message-id")
    if not own:
        w.add("missing Message-ID header")
    return (own[0] if own else None), ids("in-reply-to"), ids("references")


def _parse(raw: bytes, w: _Warnings) -> ParsedMessage:
    msg = _structure(raw, w)
    unfolded = [(name, _unfold(value, name, w)) for name, value in msg.raw_items()]
    headers = [(name, _clean(_decode_words(value, f"header {name}", w), f"header {name}", w))
               for name, value in unfolded]
    values: dict[str, list[str]] = {}  # lowercased name -> unfolded values; RFC 2047 words still encoded
    for name, value in unfolded:
        values.setdefault(name.strip().lower(), []).append(value)
    subject = next((value for name, value in headers if name.strip().lower() == "subject"), "")
    dates = values.get("date")
    if not dates:
        w.add("missing Date header")
    from_name, from_addr = _sender(values.get("from", []), w)
    message_id, in_reply_to, references = _references(values, w)
    to_names = _addresses(values.get("to", []), "To", w)
    cc_names = _addresses(values.get("cc", []), "Cc", w)
    body = _Body()
    _walk(msg, body, itertools.count(1), "\r\n" if b"\r\n" in raw[:8192] else "\n", w)
    return ParsedMessage(
        message_id=message_id, in_reply_to=in_reply_to, references=references,
        from_addr=from_addr, from_name=from_name,
        to=[addr for _, addr in to_names], cc=[addr for _, addr in cc_names],
        to_names=to_names, cc_names=cc_names, subject=subject.strip(),
        date=_date(dates[0], w) if dates else None,
        text=body.text if body.text is not None else _html_to_text(body.html or "", w),
        html=body.html or "", attachments=body.attachments, headers=headers)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a raw message; never raises: whatever cannot be parsed is reported in `warnings`."""
    w = _Warnings()
    try:
        result = _parse(bytes(raw), w)
    except Exception as exc:  # last resort: each step above already guards what it expects to fail
        w.add(f"message could not be parsed ({type(exc).__name__}: {_short(str(exc))})")
        result = ParsedMessage()
    result.warnings = list(w)
    return result
