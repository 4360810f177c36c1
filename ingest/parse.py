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
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.feedparser import BytesFeedParser
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from functools import cached_property, lru_cache
from html.parser import HTMLParser

import chardet

MAX_DEPTH = 50                  # multipart levels we descend; deeper subtrees become one attachment
MAX_WARNINGS = 100              # hostile input can produce thousands of defects
MAX_ADDRESS_CHARS = 64 * 1024   # getaddresses is pure Python: a 1 MB To header would take seconds
MAX_ADDRESS = 254               # octets of a mailbox: a path is at most 256 with its <> (RFC 5321 4.5.3.1.3)


def too_long_for_a_mailbox(address: str) -> bool:
    """Longer than any mailbox: nothing can be sent to it, and a database may refuse to keep it."""
    return len(address.encode(errors="replace")) > MAX_ADDRESS

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

# Labels Python lacks, and labels mail clients use for a superset (as browsers do, per WHATWG): each
# label's codecs, tried in order. ISO-2022-JP: strict first, then as Microsoft writes it (CP50221, with
# NEC's ① and Ⅰ), then Shift_JIS, which Japanese senders often label ISO-2022-JP.
_CHARSET_ALIASES = {
    "iso-8859-1": ("cp1252", "latin-1"), "latin1": ("cp1252", "latin-1"), "latin-1": ("cp1252", "latin-1"),
    "us-ascii": ("ascii",), "ascii": ("ascii",),
    "gb2312": ("gb18030",), "gbk": ("gb18030",), "x-gbk": ("gb18030",), "gb_2312-80": ("gb18030",),
    "ks_c_5601-1987": ("cp949",), "euc-kr": ("cp949",), "windows-874": ("cp874",), "tis-620": ("cp874",),
    "iso-8859-8-i": ("iso-8859-8",), "x-mac-roman": ("mac-roman",), "big5": ("big5hkscs",),
    "x-sjis": ("cp932",), "shift_jis": ("cp932",), "shift-jis": ("cp932",), "sjis": ("cp932",),
    "iso-2022-jp": ("iso2022_jp", "cp50221", "cp932"), "csiso2022jp": ("iso2022_jp", "cp50221", "cp932"),
}

_ISO2022JP_SHIFT = re.compile(rb"\x1b(\$[@B]|\([BJI])")


def _cp50221(data: bytes) -> str:
    """ISO-2022-JP as Microsoft writes it: JIS X 0208 plus the NEC and IBM rows (①, Ⅰ, ㈱) that
    Python's iso2022_jp refuses, read as Shift_JIS (cp932), which holds the same characters."""
    if not data.isascii():
        raise ValueError("8-bit bytes in ISO-2022-JP")
    out, mode, pos = [], b"(B", 0
    for shift in itertools.chain(_ISO2022JP_SHIFT.finditer(data), [None]):
        run = data[pos : shift.start() if shift else len(data)]
        if mode in (b"$B", b"$@"):
            if len(run) % 2 or not all(0x21 <= b <= 0x7e for b in run):
                raise ValueError("not a JIS X 0208 pair")
            sjis = bytearray()
            for j1, j2 in zip(run[::2], run[1::2]):  # JIS row/cell to Shift_JIS lead/trail byte
                lead = ((j1 - 0x21) >> 1) + 0x81
                sjis += bytes((lead + 0x40 if lead > 0x9f else lead,
                               j2 + 0x1f + (j2 >= 0x60) if j1 & 1 else j2 + 0x7e))
            out.append(sjis.decode("cp932"))
        elif mode == b"(I":  # half-width katakana
            out.append(bytes(b | 0x80 for b in run).decode("cp932"))
        else:
            out.append(run.decode("ascii"))
        if shift:
            mode, pos = shift.group(1), shift.end()
    return "".join(out)


_DECODERS = {"cp50221": _cp50221}


@lru_cache(maxsize=256)
def _codecs(charset: str) -> tuple[str, ...]:
    """Python text codecs for a MIME charset label, preferred superset first; () if unknown."""
    label = charset.strip().strip("\"'").lower()
    found = []
    for name in (*_CHARSET_ALIASES.get(label, ()), label):
        if name in _DECODERS:
            found.append(name)
            continue
        try:
            info = codecs.lookup(name) if name else None
        except (LookupError, ValueError, TypeError):
            continue
        # CodecInfo marks bytes-to-bytes codecs (base64, rot13...) that bytes.decode refuses.
        if info and getattr(info, "_is_text_encoding", True) and info.name not in found:
            found.append(info.name)
    return tuple(found)


def _mostly(data: bytes, codec: str) -> str | None:
    """`data` decoded with replacement if most of its 8-bit characters are valid in `codec` (a few broken
    bytes in real text), else None (a wrong label: nearly every 8-bit byte would be lost)."""
    text = data.decode(codec, "replace")
    bad = text.count("\ufffd")
    good = len(text) - len(text.encode("ascii", "ignore")) - bad
    return text if good >= 4 * bad else None


_DETECT_BYTES = 64 * 1024
_SINGLE_BYTE_SCRIPTS = frozenset({  # non-Latin scripts chardet may name for a few accented Latin words
    "cp1251", "cp1253", "cp1255", "cp1256", "koi8-r", "koi8-u", "iso8859-5", "iso8859-6", "iso8859-7",
    "iso8859-8", "mac-cyrillic", "mac-greek", "cp866", "cp874", "tis-620"})
_EIGHT_BIT_RUN = re.compile(rb"[\x80-\xff]+")
_WORD = re.compile(r"\w+")


def _eight_bit_lines(data: bytes, context: int = 200) -> bytes:
    """The lines of `data` that hold 8-bit bytes (at most `context` bytes either side of them), up to
    _DETECT_BYTES in all: in a long ASCII text, chardet would not hear one line of Chinese."""
    lines, end, size = [], 0, 0
    for run in _EIGHT_BIT_RUN.finditer(data):
        if run.start() < end:
            continue
        start = max(data.rfind(b"\n", 0, run.start()) + 1, run.start() - context)
        end = data.find(b"\n", run.end())
        end = min(len(data) if end < 0 else end, run.end() + context)
        lines.append(data[start:end])
        size += end - start
        if size >= _DETECT_BYTES:
            break
    return b"\n".join(lines)


def _odd_words(text: str) -> int:
    """Words no language writes: ASCII letters and other scripts mixed ("Cafι"), or a capital letter
    after a small one ("дцьЯ")."""
    def odd(word: str) -> bool:
        mixed = any(c.isascii() for c in word) and any(c > "\u024f" for c in word)  # past Latin Extended-B
        return mixed or any(a.islower() and b.isupper() for a, b in zip(word, word[1:]))
    return sum(1 for word in _WORD.findall(text) if not word.isascii() and odd(word))


def _detect(data: bytes) -> str:
    """The charset of 8-bit text that no label describes, by chardet (on the lines with 8-bit bytes);
    cp1252 where it reads the same, or where chardet, on a few words, took accented Latin for another
    script (its reading has more odd words than cp1252's)."""
    sample = _eight_bit_lines(data)
    found = chardet.detect(sample, encoding_era=chardet.EncodingEra.MODERN_WEB, prefer_superset=True)
    codec = next(iter(_codecs(found["encoding"] or "")), "cp1252")
    if codec == "cp1252" or codec.startswith("utf"):
        return codec
    text, western = sample.decode(codec, "replace"), sample.decode("cp1252", "replace")
    if text == western or (codec in _SINGLE_BYTE_SCRIPTS and _odd_words(text) > _odd_words(western)):
        return "cp1252"
    return codec


def _decode_bytes(data: bytes, charset: str | None, where: str, w: _Warnings) -> str:
    """Decode by the declared charset (its supersets first, then with replacement if only a few bytes are
    broken); 8-bit text without a usable label as UTF-8 if it is mostly UTF-8, else as the detected
    charset. Warns unless the declared charset, or undeclared UTF-8 (RFC 6532), decoded it."""
    label = _short(charset, 30) if charset else ""
    declared = _codecs(charset) if charset else ()
    for codec in declared:
        try:
            return _DECODERS[codec](data) if codec in _DECODERS else data.decode(codec)
        except Exception:  # UnicodeDecodeError, or a stateful codec's own errors
            pass
    if data.isascii():  # 7-bit: the label may be wrong, but no other charset would read it better
        if declared:
            w.add(f"text in {where} is not valid {label}, undecodable bytes replaced")
            return data.decode(declared[0], "replace")
        if charset:
            w.add(f"unknown charset {label} in {where}, decoded as ascii")
        return data.decode("ascii")
    codec, text = "", None
    for candidate in dict.fromkeys(c for c in (*declared[:1], "utf-8") if c not in _DECODERS):
        if (text := _mostly(data, candidate)) is not None:
            codec = candidate
            break
    if text is None:
        codec = _detect(data)
        text = data.decode(codec, "replace")
    if declared and codec == declared[0]:
        w.add(f"text in {where} is not valid {label}, undecodable bytes replaced")
    elif charset and not declared:
        w.add(f"unknown charset {label} in {where}, decoded as {codec}")
    elif charset:
        w.add(f"text in {where} is not valid {label}, decoded as {codec}")
    elif codec != "utf-8" or "\ufffd" in text:
        w.add(f"undecodable bytes in {where}, decoded as {codec}")
    return text


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
    pairs, rejected, too_long = [], 0, 0
    try:
        parsed = getaddresses([joined])
    except Exception as exc:  # the old address parser has had crash bugs on odd input
        w.add(f"{name} header could not be parsed ({type(exc).__name__})")
        parsed = []
    for display, addr in parsed:
        addr = addr.strip().lower()
        if too_long_for_a_mailbox(addr):
            too_long += 1
        elif "@" in addr.strip("@"):
            display = _decode_words(display, f"header {name}", w).strip()
            pairs.append((_clean(display, f"header {name}", w), _clean(addr, f"header {name}", w)))
        else:
            rejected += bool(addr)  # empty entries are groups like "undisclosed-recipients:;"
    if rejected and name != "From":  # the caller words a missing sender itself
        w.add(f"{rejected} entries without an address in {name} header")
    if too_long:
        w.add(f"{too_long} address{'es' if too_long > 1 else ''} longer than {MAX_ADDRESS} octets in {name} "
              "header ignored")
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
    texts: list[tuple[str, str]] = field(default_factory=list)  # (type, text or markup) of inline text parts
    html: str | None = None  # the markup of the first HTML part
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


def _payload(part: Message, n: int, src: _Source, w: _Warnings) -> bytes:
    """The part's payload with its transfer encoding undone (leniently, as compat32 does)."""
    raw_cte = _raw_header(part, "content-transfer-encoding") or ""
    cte = _unfold(raw_cte, "Content-Transfer-Encoding", w).strip().lower()
    if cte not in _KNOWN_CTE:
        w.add(f"unknown transfer encoding {_short(cte, 30)} in part {n}, content kept undecoded")
    elif cte != raw_cte:  # compat32 compares the raw value: " Base64 " would go undecoded
        part.replace_header("Content-Transfer-Encoding", cte)
    # part._payload as parsed: get_payload() would re-decode 8-bit text by its charset.
    content = src.base64(part._payload) if cte == "base64" else None
    if content is None:
        part.set_payload(src.restore(part._payload))
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


def _flatten(part: Message, n: int, src: _Source, with_headers: bool, w: _Warnings) -> bytes:
    """A part that compat32 parsed into sub-messages, re-serialised: whole (a multipart subtree keeps
    the headers naming its boundary) or only its body (message/*: the embedded message)."""
    try:
        data = src.restore(part.as_bytes(policy=_FLATTEN[src.linesep]))
    except Exception as exc:  # RecursionError when the subtree itself is pathologically deep
        w.add(f"part {n} could not be serialised ({type(exc).__name__}), content left empty")
        return b""
    if with_headers:
        return data
    if len(part) == 0:  # no headers: the generator wrote one line break, then the body
        return data[len(src.linesep):]
    return data.split(src.linesep.encode() * 2, 1)[-1]


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


def _walk(part: Message, body: _Body, src: _Source, w: _Warnings,
          depth: int = 0) -> None:
    """Sort one MIME entity and its children into body text, html and attachments."""
    n = next(src.numbers)
    try:
        _sort(part, n, body, src, w, depth)
    except Exception as exc:  # one bad part must not cost the others
        w.add(f"part {n} could not be decoded ({type(exc).__name__}), skipped")


def _sort(part: Message, n: int, body: _Body, src: _Source, w: _Warnings, depth: int) -> None:
    """File part `n` as body text or html or an attachment, or descend into its children."""
    view = _params_view(part, n, w)
    ctype = _content_type(view)
    # A list of sub-messages for multipart and message/*; get_payload() on a leaf would decode it.
    children = part.get_payload() if part.is_multipart() else None
    if children is not None and ctype.startswith("multipart/") and depth < MAX_DEPTH:
        _defects(part, n, w)
        if ctype == "multipart/alternative":
            _alternatives(children, body, src, w, depth)
        for child in children if ctype != "multipart/alternative" else ():
            _walk(child, body, src, w, depth + 1)
        return
    if children is not None:  # message/* (kept whole), or nesting past MAX_DEPTH
        deep = ctype.startswith("multipart/")
        if deep:
            w.add(f"multipart nesting deeper than {MAX_DEPTH} levels, rest kept as attachment")
        content = _flatten(part, n, src, deep, w)
    else:
        content = _payload(part, n, src, w)
    _defects(part, n, w)
    filename = _filename(view, n, w)
    if ctype.startswith("multipart/") and children is None:
        ctype = "text/plain"  # no boundary or unparsed structure: show the body rather than hide it
    is_body = (ctype in ("text/plain", "text/html") and not filename
               and view.get_content_disposition() != "attachment")
    if is_body:  # every inline text part, in order: Apple Mail puts text, image, text, PDF, text
        body.texts.append((ctype, _text(content, view, f"part {n}", w)))
        if ctype == "text/html" and body.html is None:
            body.html = body.texts[-1][1]
    else:
        body.attachments.append(_attachment(part, view, n, ctype, content, filename, w))


def _alternatives(children: list[Message], body: _Body, src: _Source, w: _Warnings, depth: int) -> None:
    """One of multipart/alternative's versions for the body: the first with text/plain that is not
    blank, else the last (richest) that is not blank; the attachments of all."""
    versions = []
    for child in children:
        version = _Body()
        _walk(child, version, src, w, depth + 1)
        versions.append(version)
        body.attachments.extend(version.attachments)
    shown = next((v for v in versions if any(t.strip() for c, t in v.texts if c == "text/plain")), None)
    shown = shown or next((v for v in reversed(versions) if any(t.strip() for _, t in v.texts)), None)
    body.texts.extend(shown.texts if shown else ())
    body.html = body.html or next((v.html for v in versions if v.html is not None), None)


def _body_text(body: _Body, w: _Warnings) -> str:
    """The text a reader sees: the inline text parts that are not blank (HTML rendered as text),
    a blank line between two, and a part that repeats the one before once (an alternative whose
    boundary is broken arrives as two parts of multipart/mixed)."""
    pieces = [(ctype, text if ctype == "text/plain" else _html_to_text(text, w)) for ctype, text in body.texts]
    shown: list[tuple[str, str]] = []
    for ctype, piece in pieces:
        if piece.strip() and not (shown and shown[-1][0] != ctype and piece.split() == shown[-1][1].split()):
            shown.append((ctype, piece))
    shown = shown or pieces[:1]
    if len(shown) == 1:
        return shown[0][1]
    return "\n\n".join(piece.strip("\n") for _, piece in shown)


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


_NAME = rb"[\x21-\x39\x3b-\x7e]+"  # printable ASCII but the colon (RFC 5322 2.2)
_EOL = rb"(?:\r\n|\n|\r|\Z)"
# A header section the feed parser reads to its end: an mbox "From " line, then fields and their
# continuation lines. Where it stops short of the empty line, _header_section repairs it.
_CLEAN_HEADERS = re.compile(rb"(?:From (?![ \t]*:)[^\r\n]*%s)?(?:(?:%s:|[ \t])[^\r\n]*%s)*" % (_EOL, _NAME, _EOL))
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\n|\r)?")
_FIELD = re.compile(rb"(%s)[ \t]*:" % _NAME)


_MAX_HEADER_REPAIR = 256 * 1024  # Postfix's header_size_limit is 100 KiB


def _header_section(raw: bytes, w: _Warnings) -> tuple[bytes, int]:
    """The header section as the feed parser should read it, and where the rest of `raw` begins
    (b"", 0: feed `raw` as it is).

    The header section runs to the first empty line (as MTAs read it), but the feed parser ends it at
    the first line that is neither a field nor a continuation, and From, Subject and the rest go into
    the body. Between the first field and the last one before the empty line, such a line is taken
    as a continuation; junk before the first field is dropped; `Name :` (obsolete, RFC 5322 4.5)
    becomes `Name:`. Lines after the last field stay where the feed parser puts them (a body without
    the empty line before it), as does a header section longer than _MAX_HEADER_REPAIR. The stored
    message stays as it came."""
    end = _CLEAN_HEADERS.match(raw).end()
    if end == len(raw) or raw[end:end + 1] in b"\r\n":
        return b"", 0
    lines = []  # (kind, line) up to the empty line: field, obsolete, continuation, other
    for match in _LINE.finditer(raw, 0, _MAX_HEADER_REPAIR):
        line = match.group()
        if line.strip(b"\r\n") == b"":
            break
        field = _FIELD.match(line)
        if field and line[field.end(1):field.end()] != b":":
            lines.append(("obsolete", line))
        elif field or (not lines and line.startswith(b"From ")):
            lines.append(("field", line))
        else:
            lines.append(("continuation" if line[:1] in b" \t" else "other", line))
    else:
        return b"", 0
    fields = [i for i, (kind, _) in enumerate(lines) if kind in ("field", "obsolete")]
    if not fields:
        return b"", 0
    last = fields[-1]
    while last + 1 < len(lines) and lines[last + 1][0] == "continuation":
        last += 1
    fixed, junk, joined, offset = [], [], [], 0
    for i, (kind, line) in enumerate(lines[:last + 1]):
        offset += len(line)
        if kind == "obsolete":
            field = _FIELD.match(line)
            fixed.append(field.group(1) + b":" + line[field.end():])
            w.add(f"whitespace before the colon in header {_short(field.group(1).decode('ascii'), 40)} removed")
        elif kind == "other" and i < fields[0]:
            junk.append(line)
        elif kind == "other":
            fixed.append(b" " + line)
            joined.append(line)
        else:
            fixed.append(line)
    for found, what in ((junk, "before the first header dropped"), (joined, "without a header name read as continuations")):
        if found:
            first = _short(found[0].decode("ascii", "replace").strip(), 40)
            w.add(f"{len(found)} line(s) {what} (the first: {first})")
    return b"".join(fixed), offset


_RUN_BYTES = 64 * 1024
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/\r\n]{%d,}" % _RUN_BYTES)
_BLANK_LINE = re.compile(rb"\n\r?\n")
_LARGE = 1 << 20  # messages from this size on are parsed with placeholders for their large base64 runs


class _Source:
    """The raw message as the parse reads it: its line ending, part numbers, and its large base64 runs.

    The feed parser keeps a part's body as a list of lines and then joins it: for a large attachment
    that is ~2.7x the message beside the message itself. So a large message is fed with each run of
    64 KiB or more of base64 lines replaced by one placeholder line; `base64` decodes such a part
    straight from the raw bytes, and `restore` gives the run back to anything else that meets it."""

    def __init__(self, raw: bytes, offset: int):
        self.raw, self.view = raw, memoryview(raw)
        self.linesep = "\r\n" if b"\r\n" in raw[:8192] else "\n"
        self.numbers = itertools.count(1)
        self.runs: list[tuple[int, int]] = []  # (start, end) in raw, each whole non-empty lines
        if len(raw) >= _LARGE:
            for match in _BASE64_RUN.finditer(raw, offset):
                self.runs += self._lines(match.start(), match.end())
        self.token = secrets.token_hex(8)  # mail cannot name a run
        self.placeholder = re.compile(r"=ticketmail-run-%s-(\d+)=(\r?\n)?" % self.token)
        self.placeholder_bytes = re.compile(self.placeholder.pattern.encode())

    def _lines(self, start: int, end: int) -> list[tuple[int, int]]:
        """The stretches of raw[start:end] made of whole, non-empty lines that are still _RUN_BYTES long."""
        raw, runs = self.raw, []
        if start and raw[start - 1] not in b"\r\n":  # begun inside a line (after "name: "): the next one
            start = raw.find(b"\n", start, end) + 1 or end
        end = raw.rfind(b"\n", start, end) + 1 or start  # ended inside a line: the line before
        for blank in [*_BLANK_LINE.finditer(raw, start, end), None]:  # the end of a part's header section
            stop = blank.start() + 1 if blank else end
            while start < stop and raw[start] in b"\r\n":
                start += 1
            if stop - start >= _RUN_BYTES:
                runs.append((start, stop))
            start = blank.end() if blank else end
        return runs

    def feed(self, parser: BytesFeedParser, at: int) -> None:
        """Feed raw[at:] in pieces (as BytesParser does through a StringIO, which holds 4 bytes a
        character), each large run as one placeholder line."""
        for i, (start, end) in enumerate([*self.runs, (len(self.raw), len(self.raw))]):
            for piece in range(at, start, _FEED):
                parser.feed(bytes(self.view[piece : min(piece + _FEED, start)]))
            if i < len(self.runs):
                parser.feed(b"=ticketmail-run-%s-%d=%s" % (self.token.encode(), i, self.linesep.encode()))
            at = end

    def _run(self, match) -> bytes:
        """The run a placeholder stands for; without its last line break where the parser took the
        placeholder's (the line break before a boundary belongs to the boundary)."""
        run = self.raw[slice(*self.runs[int(match.group(1))])]
        return run if match.group(2) else run.rstrip(b"\r\n")

    def restore(self, data):
        """`data` from the parser (text or bytes) with each placeholder replaced by its run."""
        if not self.runs:
            return data
        if isinstance(data, bytes):
            return self.placeholder_bytes.sub(self._run, data)
        if isinstance(data, str):
            return self.placeholder.sub(lambda m: self._run(m).decode("ascii"), data)
        return data

    def base64(self, payload) -> bytes | None:
        """A base64 payload decoded, its runs straight from the raw bytes; None if it is not clean
        base64 (compat32 then decodes it leniently, and reports)."""
        if not isinstance(payload, str) or not self.runs or "=ticketmail-run-" not in payload:
            return _clean_base64(payload)
        pieces = self.placeholder.split(payload)  # text, run number, line break, text, ...
        decoded = []
        for i in range(0, len(pieces), 3):
            if pieces[i]:
                text = _clean_base64(pieces[i])
                if text is None:
                    return None
                decoded.append(text)
            if i + 1 < len(pieces):
                start, end = self.runs[int(pieces[i + 1])]
                if (end - start - self.raw.count(b"\n", start, end) - self.raw.count(b"\r", start, end)) % 4:
                    return None  # pieces decoded apart must each be whole groups of four
                decoded.append(binascii.a2b_base64(self.view[start:end]))
        return b"".join(decoded)


def _structure(raw: bytes, w: _Warnings) -> tuple[Message, _Source]:
    """The compat32 tree; headers only (body unparsed) if the parser itself fails."""
    headers, offset = _header_section(raw, w)
    src = _Source(raw, offset)
    try:
        parser = BytesFeedParser(policy=policy.compat32)
        parser.feed(headers)
        src.feed(parser, offset)
        return parser.close(), src
    except Exception as exc:  # RecursionError: the feed parser recurses once per nesting level
        w.add(f"MIME structure could not be parsed ({type(exc).__name__}), body left unparsed")
        return BytesHeaderParser(policy=policy.compat32).parsebytes(headers + raw[offset:]), src


def _sender(froms: list[str], w: _Warnings) -> tuple[str, str]:
    """(display name, addr-spec) from the first From header that has an address; else the display
    name of the first (`"Mail Delivery System" <>`, `MAILER-DAEMON (Mail Delivery System)`), or
    all of it (`MAILER-DAEMON`)."""
    if len(froms) > 1:
        w.add(f"{len(froms)} From headers, used the first with an address")
    for value in froms:
        senders = _addresses([value], "From", w)
        if senders:
            return senders[0]
    if not froms:
        w.add("missing From header")
        return "", ""
    w.add(f"no address in From header {_short(froms[0])}")
    try:
        display = next(iter(getaddresses([froms[0][:MAX_ADDRESS_CHARS]])), ("", ""))[0]
    except Exception:  # the old address parser has had crash bugs on odd input
        display = ""
    name = display or froms[0]
    return _clean(_decode_words(name, "header From", w).strip(), "header From", w), ""


def _references(values: dict[str, list[str]], w: _Warnings) -> tuple[str | None, list[str], list[str]]:
    """Message-ID, In-Reply-To ids and References ids."""
    def ids(name: str) -> list[str]:
        return [_clean(i, name, w) for value in values.get(name, []) for i in _message_ids(value)]
    own = ids("message-id")
    if not own:
        w.add("missing Message-ID header")
    return (own[0] if own else None), ids("in-reply-to"), ids("references")


def _parse(raw: bytes, w: _Warnings) -> ParsedMessage:
    msg, src = _structure(raw, w)
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
    _walk(msg, body, src, w)
    return ParsedMessage(
        message_id=message_id, in_reply_to=in_reply_to, references=references,
        from_addr=from_addr, from_name=from_name,
        to=[addr for _, addr in to_names], cc=[addr for _, addr in cc_names],
        to_names=to_names, cc_names=cc_names, subject=subject.strip(),
        date=_date(dates[0], w) if dates else None,
        text=_body_text(body, w),
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
