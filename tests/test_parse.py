"""ingest.parse: what a helpdesk user sees of real and broken mail, and that parsing never raises."""

from __future__ import annotations

import base64
import hashlib
import random
import re
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.parse import MAX_DEPTH, ParsedMessage, parse_message
from tests.corpus import ADVERSARIAL, corpus

HEAD = b"From: Alice <alice@example.com>\nTo: support@example.com\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"


def msg(headers: bytes, body: bytes = b"hello\n") -> ParsedMessage:
    return parse_message(HEAD + headers + b"\n" + body)


def adversarial(name: str) -> ParsedMessage:
    return parse_message(ADVERSARIAL[name])


# --- subject and other unstructured headers ----------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (b"=?utf-8?B?4oI=?= =?utf-8?B?rA==?= sign", "\u20ac sign"),     # one character split over two words
    (b"Re: =?iso-8859-1?q?caf=E9?= ok", "Re: caf\u00e9 ok"),           # text around a word keeps its spaces
    (b"=?utf-8?Q?hello_world?=\n  =?utf-8?Q?_again?=", "hello world again"),  # folded adjacent words
    (b"Caf\xc3\xa9 \xe2\x82\xac 10", "Caf\u00e9 \u20ac 10"),           # raw UTF-8 (RFC 6532)
    (b"plain\n folded\n\tsubject  ", "plain folded\tsubject"),
    (b"=?UTF-8?b?w6k=?==?utf-8?Q?=C3=A9?=", "\u00e9\u00e9"),           # no space between words
    (b"=?iso-2022-jp?B?GyRCRnxLXDhsGyhC?=", "\u65e5\u672c\u8a9e"),
    (b"=?utf-8*en?Q?lang_tag?=", "lang tag"),                          # RFC 2231 language suffix
])
def test_subject_decoding(raw, expected):
    parsed = msg(b"Subject: " + raw + b"\n")
    assert parsed.subject == expected
    assert not [w for w in parsed.warnings if "Subject" in w]


def test_latin1_8bit_subject_falls_back_with_warning():
    parsed = adversarial("latin1-8bit-headers")
    assert parsed.subject == "Caf\u00e9 cr\u00e8me"
    assert "undecodable bytes in header Subject, decoded as cp1252" in parsed.warnings


def test_encoded_word_with_unknown_charset():
    parsed = adversarial("ew-unknown-charset")
    assert parsed.subject == "\u00ff"
    assert "unknown charset 'x-unknown' in header Subject, decoded as cp1252" in parsed.warnings


def test_encoded_word_with_invalid_base64_is_kept_literally():
    parsed = adversarial("ew-bad-base64")
    assert parsed.subject == "=?utf-8?B?!!!notbase64?="
    assert "invalid encoded word in header Subject: '=?utf-8?B?!!!notbase64?='" in parsed.warnings


def test_nul_in_subject_is_replaced():
    parsed = adversarial("nul-bytes")
    assert parsed.subject == "nul\ufffdhere"
    assert parsed.text == "body with \ufffd nul\n"
    assert "NUL bytes or invalid characters in header Subject replaced" in parsed.warnings


def test_headers_keep_order_names_and_decoded_values():
    parsed = msg(b"X-Custom: =?utf-8?Q?J=C3=BCrgen?=\nx-custom: second\n")
    assert parsed.headers[:3] == [("From", "Alice <alice@example.com>"), ("To", "support@example.com"),
                                  ("Date", "Mon, 1 Jan 2024 10:00:00 +0000")]
    assert parsed.header("X-CUSTOM") == ["J\u00fcrgen", "second"]
    assert parsed.first("x-custom") == "J\u00fcrgen"
    assert parsed.first("X-Missing") is None


# --- addresses ---------------------------------------------------------------------------------

def test_encoded_display_name_containing_a_comma():
    parsed = adversarial("ew-display-name-comma")
    assert (parsed.from_name, parsed.from_addr) == ("Doe, J\u00f6hn", "john.doe@example.com")


def test_to_and_cc_names_in_order():
    parsed = parse_message(
        b"From: =?iso-8859-1?Q?Andr=E9?= <Andre@Example.COM>\n"
        b"To: \"M\xc3\xbcller, Hans\" <H.Mueller@example.de>, bob@example.org,\n undisclosed-recipients:;\n"
        b"Cc: Team: carol@example.com, =?utf-8?B?w5hyc3RlZA==?= <dave@example.com>;\n\nbody\n")
    assert (parsed.from_name, parsed.from_addr) == ("Andr\u00e9", "andre@example.com")
    assert parsed.to == ["h.mueller@example.de", "bob@example.org"]
    assert parsed.to_names == [("M\u00fcller, Hans", "h.mueller@example.de"), ("", "bob@example.org")]
    assert parsed.cc_names == [("", "carol@example.com"), ("\u00d8rsted", "dave@example.com")]


def test_from_without_address_keeps_the_name():
    parsed = adversarial("from-without-address")
    assert (parsed.from_name, parsed.from_addr) == ("Mailer Daemon", "")
    assert "no address in From header 'Mailer Daemon'" in parsed.warnings


def test_multiple_from_headers_use_the_first():
    parsed = adversarial("multiple-from")
    assert parsed.from_addr == "first@example.com"
    assert "2 From headers, used the first with an address" in parsed.warnings


def test_missing_from_date_and_message_id():
    parsed = adversarial("missing-from-date-msgid")
    assert (parsed.from_addr, parsed.date, parsed.message_id) == ("", None, None)
    assert {"missing From header", "missing Date header", "missing Message-ID header"} <= set(parsed.warnings)


def test_huge_address_header_is_cut_at_an_address_boundary():
    parsed = adversarial("huge-to-header")
    assert 3000 < len(parsed.cc) < 5000 and all(re.fullmatch(r"user\d+@example\.com", a) for a in parsed.cc)
    assert "Cc header longer than 65536 characters, rest ignored" in parsed.warnings


def test_an_address_longer_than_any_mailbox_is_no_address():
    """Over 254 octets (RFC 5321 4.5.3.1.3): nothing can be sent to it, and a database may refuse to keep
    it (PostgreSQL did, as a customer's address)."""
    long = "x" * 250 + "@customer.example"
    parsed = parse_message(f"From: Mallory <{long}>\r\nTo: support@xyzhosting.com, {long}\r\n"
                           "Subject: hi\r\n\r\nbody\r\n".encode())
    assert (parsed.from_name, parsed.from_addr, parsed.to) == ("Mallory", "", ["support@xyzhosting.com"])
    assert "1 address longer than 254 octets in From header ignored" in parsed.warnings
    assert "1 address longer than 254 octets in To header ignored" in parsed.warnings
    fits = "x" * (254 - len("@customer.example")) + "@customer.example"
    assert parse_message(f"From: <{fits}>\r\n\r\nbody\r\n".encode()).from_addr == fits


def test_the_first_from_with_an_address_is_the_sender():  # zammad mail017
    parsed = parse_message(b"From: [??????]\nFrom: =?utf-8?B?6YO955C5?= <ghgbwum@example.cn>\n\nhi\n")
    assert (parsed.from_name, parsed.from_addr) == ("\u90fd\u7439", "ghgbwum@example.cn")
    assert "2 From headers, used the first with an address" in parsed.warnings


@pytest.mark.parametrize("header, name", [
    (b'"=?GB2312?B?ztI=?=" <>', "\u6211"),                           # zammad mail019: the decoded name only
    (b"MAILER-DAEMON (Mail Delivery System)", "Mail Delivery System"),  # the comment is the name
    (b"MAILER-DAEMON", "MAILER-DAEMON"),
])
def test_from_without_address_gives_its_display_name(header, name):
    parsed = parse_message(b"From: " + header + b"\nSubject: x\n\nhi\n")
    assert (parsed.from_name, parsed.from_addr) == (name, "")


# --- the header section ------------------------------------------------------------------------

def test_header_section_runs_to_the_empty_line():
    # An unindented continuation line (zammad mail054), a junk first line (mail068), a line that is
    # not a field (mikel raw_email_incorrect_header): From and Subject stay headers, not body.
    parsed = parse_message(b"---- Original email message ----\nReceived: from a\nby b with ESMTP\n"
                           b"X-Tracker: H4sIAAAA\nIg5drOCwmrVzP5sD\nquite Delivered-To: x@example.com\n"
                           b"From: Karoline <k@example.com>\nSubject: AW: One Net Business\n\nsome text\n")
    assert (parsed.from_addr, parsed.subject, parsed.text) == ("k@example.com", "AW: One Net Business", "some text\n")
    assert parsed.first("Received") == "from a by b with ESMTP"
    assert parsed.first("X-Tracker") == "H4sIAAAA Ig5drOCwmrVzP5sD quite Delivered-To: x@example.com"
    assert "1 line(s) before the first header dropped (the first: '---- Original email message ----')" in parsed.warnings
    assert "3 line(s) without a header name read as continuations (the first: 'by b with ESMTP')" in parsed.warnings


def test_obsolete_whitespace_before_the_colon():  # RFC 5322 4.5, mikel rfc2822/example13
    parsed = parse_message(b"From  : John Doe <jdoe@example.com>\nSubject     : Saying Hello\n\nHello.\n")
    assert (parsed.from_addr, parsed.subject, parsed.text) == ("jdoe@example.com", "Saying Hello", "Hello.\n")
    assert "whitespace before the colon in header 'From' removed" in parsed.warnings


def test_lines_after_the_last_header_without_an_empty_line_stay_body():
    parsed = parse_message(b"From: a@example.com\nSubject: no empty line\nthe body starts here\nand goes on\n")
    assert parsed.subject == "no empty line"
    assert parsed.text == "the body starts here\nand goes on\n"


def test_a_clean_header_section_is_fed_as_it_is():
    parsed = parse_message(b"From a@example.com Mon Jan  1 10:00:00 2024\nFrom: a@example.com\nX-Note: one\n\ttwo\n"
                           b"Subject: s\n\nbody\n")
    assert (parsed.from_addr, parsed.subject, parsed.first("X-Note"), parsed.text) == ("a@example.com", "s", "one\ttwo", "body\n")
    assert not [w for w in parsed.warnings if "line" in w]


# --- dates and message-ids ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (b"Mon, 15 Jan 2024 09:12:34 +0100", datetime(2024, 1, 15, 8, 12, 34, tzinfo=timezone.utc)),
    (b"15 Jan 2024 09:12:34 -0000", datetime(2024, 1, 15, 9, 12, 34, tzinfo=timezone.utc)),
    (b"Mon, 15 Jan 24 09:12 EST", datetime(2024, 1, 15, 14, 12, tzinfo=timezone.utc)),
])
def test_date_is_aware_utc(raw, expected):
    parsed = parse_message(b"Date: " + raw + b"\n\nx")
    assert parsed.date == expected and parsed.date.utcoffset().total_seconds() == 0


def test_unparseable_date():
    parsed = adversarial("bad-date")
    assert parsed.date is None
    assert "unparseable Date header 'yesterday, at noon'" in parsed.warnings


def test_message_id_forms():
    parsed = adversarial("message-id-variants")
    assert parsed.message_id == "bare-id@example.com"
    assert parsed.in_reply_to == ["a@example.com"]
    assert parsed.references == ["r1@example.com", "r2@example.com", "r3@example.com"]


# --- bodies ------------------------------------------------------------------------------------

def test_multipart_alternative_gives_text_and_html():
    parsed = msg(b'Content-Type: multipart/alternative; boundary="a"\n',
                 b"--a\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
                 b"Gr=C3=BC=C3=9Fe\n--a\nContent-Type: text/html; charset=utf-8\n\n<p>Gr\xc3\xbc\xc3\x9fe</p>\n--a--\n")
    assert parsed.text == "Gr\u00fc\u00dfe"
    assert parsed.html == "<p>Gr\u00fc\u00dfe</p>"
    assert parsed.attachments == []


def test_html_only_message_gets_readable_text():
    parsed = adversarial("html-only")
    assert parsed.text == "Hello & welcome,\nsecond line\n\n- one\n- two\n\ncaf\u00e9 \u20ac"
    assert parsed.html.startswith("<html>")


def test_crlf_and_lf_give_the_same_result():
    lf = ADVERSARIAL["attached-rfc822"]
    a, b = parse_message(lf), parse_message(lf.replace(b"\n", b"\r\n"))
    assert (a.subject, a.text, a.headers, a.warnings) == (b.subject, b.text, b.headers, b.warnings)
    assert b.attachments[0].content == a.attachments[0].content.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("name, text, warning", [
    ("unknown-body-charset", "caf\u00e9\n", "unknown charset 'x-foo' in part 1, decoded as cp1252"),
    ("wrong-body-charset", "caf\u00e9\n", "text in part 1 is not valid 'us-ascii', decoded as utf-8"),
    ("utf16-body", "hi utf16", None),
    ("broken-quoted-printable", "caf\u00e9 =ZZ broken soft break=3\n", None),
    ("unknown-transfer-encoding", "as is\n", "unknown transfer encoding 'x-foo' in part 1, content kept undecoded"),
    ("malformed-content-type", "plain after all\n", None),
    ("bare-cr-line-endings", "one\ntwo\n", None),
    ("missing-boundary", "--x\nContent-Type: text/plain\n\ntext behind a lost boundary\n--x--\n",
     "part 1: A message claimed to be a multipart but had no boundary parameter."),
])
def test_body_text_of_broken_parts(name, text, warning):
    parsed = adversarial(name)
    assert parsed.text == text
    if warning:
        assert warning in parsed.warnings


def test_rfc2231_charset_parameter_on_an_8bit_body():  # compat32's get_payload() raises TypeError here
    parsed = msg(b"Content-Type: text/plain; charset*=utf-8''utf-8\n", b"caf\xc3\xa9\n")
    assert parsed.text == "caf\u00e9\n"
    assert not [w for w in parsed.warnings if "part" in w]


def test_latin1_label_means_cp1252_but_falls_back_to_latin1():
    assert msg(b"Content-Type: text/plain; charset=ISO-8859-1\n", b"\x93quoted\x94 \x80\n").text == (
        "\u201cquoted\u201d \u20ac\n")
    parsed = msg(b"Content-Type: text/plain; charset=iso-8859-1\n", b"caf\xe9 \x81\n")
    assert parsed.text == "caf\u00e9 \x81\n"
    assert not [w for w in parsed.warnings if "part" in w]


def test_html_line_breaks_and_cells():
    parsed = msg(b"Content-Type: text/html\n", b"<p>a<br/>b<br>c</p><table><tr><td>x</td><td>y</td></tr></table>"
                 b"<pre>  keep\n   this</pre>")
    assert parsed.text == "a\nb\nc\n\nx y\n\n  keep\n   this"


# Charsets of real mail: mislabelled or unlabelled 8-bit text, and ISO-2022-JP as Microsoft writes it.
@pytest.mark.parametrize("content_type, body, text", [
    # GBK without a charset (zammad mail023), one line in a longer ASCII text
    (b"text/plain", "\u673a\u623f\u73af\u5883\u6cd5\u89c4\n".encode("gbk") + b"Message-ID: <x@y>\n" * 50,
     "\u673a\u623f\u73af\u5883\u6cd5\u89c4\n" + "Message-ID: <x@y>\n" * 50),
    # Shift_JIS labelled ISO-2022-JP (zammad mail093)
    (b"text/plain; charset=iso-2022-jp", "\u30c4\u30fc\u30eb\u306e\u4ef6\u3067\u3054\u9023\u7d61\u3057\u307e\u3059\n".encode("cp932"),
     "\u30c4\u30fc\u30eb\u306e\u4ef6\u3067\u3054\u9023\u7d61\u3057\u307e\u3059\n"),
    # ISO-2022-JP with NEC's circled digit, which Python's iso2022_jp refuses (zammad mail099)
    (b"text/plain; charset=ISO-2022-JP", b"\x1b$B-!#1ET#38)$N03$H!\"\x1b(B\n", "\u2460\uff11\u90fd\uff13\u770c\u306e\u9bf5\u3068\u3001\n"),
    (b"text/plain", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?\n".encode("koi8-r"),
     "\u041f\u0440\u0438\u0432\u0435\u0442, \u043a\u0430\u043a \u0434\u0435\u043b\u0430?\n"),
    # a few accented Latin words, which a detector alone takes for Greek or Cyrillic
    (b"text/plain", "Caf\u00e9 cr\u00e8me\n".encode("cp1252"), "Caf\u00e9 cr\u00e8me\n"),
    (b"text/plain", "\u00e4\u00f6\u00fc\u00df ad asd\n".encode("cp1252"), "\u00e4\u00f6\u00fc\u00df ad asd\n"),
    # declared UTF-8 with one broken byte: replaced, the rest kept (not read as cp1252)
    (b"text/plain; charset=utf-8", "caf\u00e9 ".encode() + b"li\xee " + "cr\u00e8me na\u00efve \u00fcber\n".encode(),
     "caf\u00e9 li\ufffd cr\u00e8me na\u00efve \u00fcber\n"),
    # declared UTF-8 but Latin-1 throughout
    (b"text/plain; charset=utf-8", "r\u00e9sum\u00e9 d\u00e9j\u00e0 vu\n".encode("latin-1"), "r\u00e9sum\u00e9 d\u00e9j\u00e0 vu\n"),
])
def test_mislabelled_and_unlabelled_charsets(content_type, body, text):
    assert msg(b"Content-Type: " + content_type + b"\n", body).text == text


def test_raw_8bit_gb2312_subject_and_name():  # zammad mail046
    parsed = parse_message(b"From: " + "\u6b66\u5170\u6210".encode("gb2312") + b" <w@example.cn>\nSubject: "
                           + "\u8f6c\u53d1\uff1a\u6574\u4f53\u63d0\u5347\u4f01\u4e1a\u670d\u52a1\u6c34\u5e73".encode("gb2312") + b"\n\nhi\n")
    assert parsed.subject == "\u8f6c\u53d1\uff1a\u6574\u4f53\u63d0\u5347\u4f01\u4e1a\u670d\u52a1\u6c34\u5e73"
    assert parsed.from_name == "\u6b66\u5170\u6210"


def test_every_inline_text_part_is_the_body_in_order():  # Apple Mail: zammad mail102, mail110-112
    parsed = msg(b'Content-Type: multipart/mixed; boundary="b"\n',
                 b"--b\nContent-Type: text/plain\n\nfirst text\n--b\nContent-Type: image/png\n"
                 b"Content-Disposition: inline; filename=shot.png\nContent-Transfer-Encoding: base64\n\niVBORw==\n"
                 b"--b\nContent-Type: text/html\n\n<p>html <b>part</b></p>\n--b\n"
                 b"Content-Type: application/pdf; name=a.pdf\nContent-Transfer-Encoding: base64\n\nJVBERg==\n"
                 b"--b\nContent-Type: text/plain\n\nlast text\n--b--\n")
    assert parsed.text == "first text\n\nhtml part\n\nlast text"
    assert [a.filename for a in parsed.attachments] == ["shot.png", "a.pdf"]
    assert parsed.html == "<p>html <b>part</b></p>"


def test_an_empty_text_alternative_shows_the_html_one():  # zammad mail034, spamscope mail_test_1
    parsed = msg(b'Content-Type: multipart/alternative; boundary="b"\n',
                 b"--b\nContent-Type: text/plain\n\n\n--b\nContent-Type: text/html\n\n<b>some html text</b>\n--b--\n")
    assert parsed.text == "some html text"
    assert parsed.attachments == []


def test_a_broken_alternative_shows_its_text_once():  # spamscope mail_malformed_1: one boundary for both levels
    parsed = msg(b'Content-Type: multipart/mixed; boundary="b"\n',
                 b"--b\nContent-Type: multipart/alternative; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n"
                 b"--Sent from my iPhone\n--b\nContent-Type: text/html\n\n<div>--Sent from my iPhone</div>\n--b--\n")
    assert parsed.text == "--Sent from my iPhone"


# --- attachments -------------------------------------------------------------------------------

def test_base64_attachment():
    pdf = b"%PDF-1.4 fake \x00\xff"
    parsed = msg(b'Content-Type: multipart/mixed; boundary="b"\n',
                 b"--b\nContent-Type: text/plain\n\nsee attached\n--b\n"
                 b'Content-Type: application/PDF; name="ignored.pdf"\n'
                 b'Content-Disposition: attachment; filename="invoice 42.pdf"\n'
                 b"Content-Transfer-Encoding: base64\n\nJVBERi0xLjQgZmFrZSAA/w==\n--b--\n")
    [att] = parsed.attachments
    assert (att.filename, att.content_type, att.content, att.size) == ("invoice 42.pdf", "application/pdf", pdf, len(pdf))
    assert att.sha256 == hashlib.sha256(pdf).hexdigest()
    assert (att.content_id, att.inline) == (None, False)
    assert parsed.text == "see attached"


def test_rfc2231_filename_with_charset_and_continuation():
    [att] = adversarial("rfc2231-filename").attachments
    assert (att.filename, att.content_type, att.content) == ("\u00e9t\u00e9 report.txt", "text/plain", b"report")


def test_rfc2047_and_raw_utf8_filenames_lose_client_paths():
    names = [a.filename for a in adversarial("rfc2047-and-8bit-filenames").attachments]
    assert names == ["\u00fcbersicht.pdf", "r\u00e9sum\u00e9.doc"]


def test_inline_image_keeps_content_id():
    parsed = adversarial("inline-image-cid")
    [image] = parsed.attachments
    assert (image.filename, image.content_type, image.content_id, image.inline) == (
        "part-3.png", "image/png", "logo@example.com", True)
    assert image.content == b"\x89PNG\r\n\x1a\n"
    assert 'src="cid:logo@example.com"' in parsed.html


def test_attached_message_is_one_eml_attachment():
    parsed = adversarial("attached-rfc822")
    [att] = parsed.attachments
    embedded = b"From: bob@example.com\nSubject: Fwd: original question\n\noriginal body"
    assert (att.filename, att.content_type, att.content) == ("Fwd original question.eml", "message/rfc822", embedded)
    assert parsed.text == "see below"


def test_a_large_message_decodes_as_a_small_one(monkeypatch):
    # Large base64 runs are fed to the feed parser as placeholders and decoded from the raw bytes:
    # every part must come out as without placeholders, wherever a run sits.
    blob = random.Random(7).randbytes(600_000)
    inner = EmailMessage()
    inner["Subject"] = "inner"
    inner.set_content("see the picture")
    inner.add_attachment(blob[:200_000], maintype="image", subtype="png", filename="inner.png")
    outer = EmailMessage()
    outer["From"], outer["Subject"] = "a@example.com", "large"
    outer.set_content("text first\n")
    outer.add_attachment(blob, maintype="application", subtype="octet-stream", filename="a.bin")
    outer.add_attachment(inner)  # a run inside an attached message: restored when it is re-serialised
    armoured = "\n".join(base64.b64encode(blob[i:i + 54]).decode() for i in range(0, 300_000, 54))
    outer.add_attachment(armoured + "\n", subtype="plain", filename="key.asc")  # base64-like text, 7bit
    outer.add_attachment(blob[:400_000], maintype="application", subtype="x-odd", filename="odd.bin")
    odd = base64.b64encode(blob[:400_000]).decode()  # lines of 73: a run that is not whole groups of four
    raw = outer.as_bytes().replace(base64.encodebytes(blob[:400_000]),
                                   "\n".join(odd[i:i + 73] for i in range(0, len(odd), 73)).encode() + b"\n")
    for data in (raw, raw.replace(b"\n", b"\r\n")):
        assert len(data) > 1 << 20
        parsed = parse_message(data)
        assert [a.filename for a in parsed.attachments] == ["a.bin", "inner.eml", "key.asc", "odd.bin"]
        assert (parsed.attachments[0].content, parsed.attachments[3].content) == (blob, blob[:400_000])
        assert parse_message(parsed.attachments[1].content).attachments[0].content == blob[:200_000]
        assert parsed.attachments[2].content.decode().replace("\r\n", "\n") == armoured + "\n"
        with monkeypatch.context() as m:
            m.setattr("ingest.parse._LARGE", len(data) + 1)  # no placeholders
            whole = parse_message(data)
        assert (parsed.text, parsed.attachments, parsed.warnings) == (whole.text, whole.attachments, whole.warnings)


def test_broken_base64_is_decoded_leniently_with_warnings():
    parsed = adversarial("broken-base64")
    [att] = parsed.attachments
    assert att.filename == "doc.pdf" and att.content.startswith(b"hello wor")
    assert "part 3: base64 encoded sequence had characters not in base64 alphabet" in parsed.warnings


def test_uuencoded_attachment():
    [att] = adversarial("uuencoded-attachment").attachments
    assert (att.filename, att.content) == ("a.txt", b"hello")


def test_nesting_beyond_the_limit_is_kept_as_one_attachment():
    parsed = adversarial("deep-multipart-60")
    assert f"multipart nesting deeper than {MAX_DEPTH} levels, rest kept as attachment" in parsed.warnings
    [att] = parsed.attachments
    assert att.content_type == "multipart/mixed" and b"deep text" in att.content
    assert att.content.startswith(b'Content-Type: multipart/mixed; boundary="b50"')


@pytest.mark.parametrize("name", ["deep-multipart-1000", "deep-rfc822-1000"])
def test_thousand_levels_do_not_raise(name):
    parsed = adversarial(name)
    assert "MIME structure could not be parsed (RecursionError), body left unparsed" in parsed.warnings
    assert parsed.from_addr == "alice@example.com"


# --- never raises ------------------------------------------------------------------------------

_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _assert_sane(parsed: ParsedMessage) -> None:
    """Everything the pipeline stores is well-formed: storable text, consistent attachments."""
    strings = [parsed.from_addr, parsed.from_name, parsed.subject, parsed.text, parsed.html,
               parsed.message_id or "", *parsed.to, *parsed.cc, *parsed.in_reply_to, *parsed.references,
               *[x for pair in parsed.to_names + parsed.cc_names + parsed.headers for x in pair],
               *[a.filename for a in parsed.attachments], *parsed.warnings]
    assert all(isinstance(s, str) and not _UNSAFE.search(s) for s in strings)
    assert parsed.date is None or parsed.date.utcoffset().total_seconds() == 0
    for att in parsed.attachments:
        assert att.filename and att.size == len(att.content)
        assert att.sha256 == hashlib.sha256(att.content).hexdigest()
        assert re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", att.content_type)


@pytest.mark.parametrize("raw", [pytest.param(raw, id=name) for name, raw in corpus()])
def test_every_corpus_entry_parses(raw):
    _assert_sane(parse_message(raw))


def test_corpus_is_large_enough_and_small_enough():
    entries = corpus()
    assert sum(name.startswith("adversarial/") for name, _ in entries) >= 25
    assert all(len(raw) < 2 * 1024 * 1024 for _, raw in entries)


def test_non_bytes_input_becomes_a_warning():
    assert parse_message(bytearray(b"Subject: x\n\ny")).subject == "x"
    assert parse_message(None).warnings[0].startswith("message could not be parsed (TypeError")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw):
    _assert_sane(parse_message(raw))


_HEADER_NAMES = st.sampled_from(["From", "To", "Cc", "Subject", "Date", "Message-ID", "References",
                                 "Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "X-A"])
_FRAGMENTS = st.sampled_from(["=?", "?=", "?Q?", "?B?", "utf-8", "x-unknown", "=FF", "<", ">", "@", ",", ";",
                              '"', "\\", "(", ")", ":", "multipart/mixed", "boundary=", "filename*=", "''",
                              "%E9", "base64", "\r\n", "\n ", "\x00", "\u00e9", "\udcff", "--"])
_VALUES = st.lists(st.one_of(_FRAGMENTS, st.text(max_size=8)), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_HEADER_NAMES, _VALUES), max_size=8), _VALUES)
def test_arbitrary_header_text_never_raises(headers, body):
    text = "".join(f"{name}: {value}\n" for name, value in headers) + "\n" + body
    _assert_sane(parse_message(text.encode("utf-8", "surrogateescape")))
