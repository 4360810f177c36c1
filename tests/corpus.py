"""Real and hostile mail for parser and pipeline tests: CPython's email test messages plus broken cases.

`corpus()` returns (name, raw bytes); every entry is under ~2 MB and the whole corpus builds in
milliseconds, so pipeline tests can push all of it through the real LMTP server.
"""

from __future__ import annotations

import random
import sysconfig
from pathlib import Path

HEAD = b"From: Alice <alice@example.com>\nTo: support@example.com\nDate: Mon, 1 Jan 2024 10:00:00 +0000\n"


def _msg(headers: bytes, body: bytes = b"hello\n") -> bytes:
    """A small message: the usual From/To/Date, the given headers, a blank line, the body."""
    return HEAD + headers + b"\n" + body


def _nested_multipart(levels: int) -> bytes:
    """`levels` multiparts each holding the next, a text part at the bottom."""
    opens = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(levels))
    closes = b"".join(b"\n--b%d--\n" % i for i in reversed(range(levels)))
    return HEAD + b"Subject: nested %d\n" % levels + opens + b"Content-Type: text/plain\n\ndeep text\n" + closes


def _nested_rfc822(levels: int) -> bytes:
    """`levels` messages each attached (message/rfc822) to the one above."""
    layers = b"".join(b"Subject: level %d\nContent-Type: message/rfc822\n\n" % i for i in range(levels))
    return HEAD + layers + b"Subject: bottom\n\nbottom text\n"


ADVERSARIAL: dict[str, bytes] = {
    "empty": b"",
    "headers-only": b"From: alice@example.com\nSubject: only headers\n",
    "body-only": b"just some text\nwithout any headers at all\n",
    "nul-bytes": _msg(b"Subject: nul\x00here\n", b"body with \x00 nul\n"),
    "crlf-line-endings": _msg(b"Subject: crlf\nMessage-ID: <crlf@example.com>\n",
                              b"line one\nline two\n").replace(b"\n", b"\r\n"),
    "bare-cr-line-endings": _msg(b"Subject: bare cr\n", b"one\rtwo\r").replace(b"\n", b"\r"),
    "utf8-8bit-headers": _msg(b"Subject: Caf\xc3\xa9 \xe2\x82\xac 10\nCc: J\xc3\xbcrgen <jurgen@example.de>\n"),
    "latin1-8bit-headers": _msg(b"Subject: Caf\xe9 cr\xe8me\n"),
    "ew-unknown-charset": _msg(b"Subject: =?x-unknown?Q?=FF?=\n"),
    "ew-bad-base64": _msg(b"Subject: =?utf-8?B?!!!notbase64?=\n"),
    "ew-adjacent-split-char": _msg(b"Subject: =?utf-8?B?4oI=?= =?utf-8?B?rA==?= sign\n"),
    "ew-display-name-comma": HEAD.replace(b"Alice <alice", b"=?utf-8?Q?Doe=2C_J=C3=B6hn?= <John.Doe")
    + b"Subject: comma\n\nhi\n",
    "ew-garbage-mix": _msg(b"Subject: =?utf-8?Q?unterminated =?=?=?? =?utf-8?X?x?= =??Q?a?= =?utf-8?q?ok?=\n"),
    "missing-from-date-msgid": b"To: support@example.com\nSubject: anonymous\n\nwho am I\n",
    "from-without-address": _msg(b"Subject: daemon\n").replace(b"Alice <alice@example.com>", b"Mailer Daemon"),
    "multiple-from": b"From: first@example.com\nFrom: second@example.com\nSubject: two senders\n\nhi\n",
    "bad-date": _msg(b"Subject: bad date\n").replace(b"Mon, 1 Jan 2024 10:00:00 +0000", b"yesterday, at noon"),
    "huge-header-1mb": _msg(b"Subject: huge\nX-Huge: " + b"a" * (1 << 20) + b"\n"),
    "huge-to-header": _msg(b"Subject: many recipients\nCc: "
                           + b", ".join(b"user%d@example.com" % i for i in range(5000)) + b"\n"),
    "deep-multipart-60": _nested_multipart(60),
    "deep-multipart-1000": _nested_multipart(1000),
    "deep-rfc822-1000": _nested_rfc822(1000),
    "missing-boundary": _msg(b"Subject: no boundary\nContent-Type: multipart/mixed\n",
                             b"--x\nContent-Type: text/plain\n\ntext behind a lost boundary\n--x--\n"),
    "boundary-never-found": _msg(b'Subject: lost\nContent-Type: multipart/mixed; boundary="zzz"\n',
                                 b"no boundary line ever appears\n"),
    "broken-base64": _msg(b'Subject: b64\nContent-Type: multipart/mixed; boundary="b"\n',
                          b"--b\nContent-Type: text/plain\n\nsee attachment\n--b\nContent-Type: application/pdf; "
                          b'name="doc.pdf"\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29y!!bGQ\n--b--\n'),
    "broken-quoted-printable": _msg(b"Subject: qp\nContent-Type: text/plain; charset=utf-8\n"
                                    b"Content-Transfer-Encoding: quoted-printable\n",
                                    b"caf=C3=A9 =ZZ broken =\nsoft break=3\n"),
    "unknown-transfer-encoding": _msg(b"Subject: x-cte\nContent-Transfer-Encoding: x-foo\n", b"as is\n"),
    "unknown-body-charset": _msg(b"Subject: charset\nContent-Type: text/plain; charset=x-foo\n", b"caf\xe9\n"),
    "wrong-body-charset": _msg(b"Subject: ascii?\nContent-Type: text/plain; charset=us-ascii\n",
                               b"caf\xc3\xa9\n"),
    "utf16-body": _msg(b"Subject: utf16\nContent-Type: text/plain; charset=utf-16\n"
                       b"Content-Transfer-Encoding: base64\n", b"//5oAGkAIAB1AHQAZgAxADYA\n"),
    "malformed-content-type": _msg(b"Subject: ctype\nContent-Type: text\n", b"plain after all\n"),
    "html-only": _msg(b"Subject: html\nContent-Type: text/html; charset=utf-8\n",
                      b"<html><head><title>T</title><style>p{color:red}</style></head><body><p>Hello "
                      b"&amp; welcome,<br>second&nbsp;line</p><ul><li>one</li><li>two</li></ul>"
                      b"<script>alert(1)</script><div>caf&eacute; &#8364;</div></body></html>\n"),
    "attached-rfc822": _msg(b'Subject: fwd\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n',
                            b"--b\nContent-Type: text/plain\n\nsee below\n--b\nContent-Type: message/rfc822\n\n"
                            b"From: bob@example.com\nSubject: Fwd: original question\n\noriginal body\n--b--\n"),
    "inline-image-cid": _msg(b'Subject: image\nContent-Type: multipart/related; boundary="r"\n',
                             b'--r\nContent-Type: text/html\n\n<p>logo: <img src="cid:logo@example.com"></p>\n'
                             b"--r\nContent-Type: image/png\nContent-ID: <logo@example.com>\n"
                             b"Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--r--\n"),
    "rfc2231-filename": _msg(b'Subject: 2231\nContent-Type: multipart/mixed; boundary="b"\n',
                             b"--b\nContent-Type: text/plain\n\nfile attached\n--b\n"
                             b"Content-Type: text/plain\nContent-Disposition: attachment;\n"
                             b" filename*0*=iso-8859-1''%E9t%E9;\n filename*1*=%20report.txt\n\nreport\n--b--\n"),
    "rfc2047-and-8bit-filenames": _msg(b'Subject: names\nContent-Type: multipart/mixed; boundary="b"\n',
                                       b"--b\nContent-Type: application/octet-stream;\n"
                                       b' name="=?utf-8?B?w7xiZXJzaWNodC5wZGY=?="\n\nx\n'
                                       b"--b\nContent-Type: application/octet-stream\n"
                                       b'Content-Disposition: attachment; filename="C:\\tmp\\r\xc3\xa9sum\xc3\xa9.doc"\n\ny\n'
                                       b"--b--\n"),
    "uuencoded-attachment": _msg(b'Subject: uu\nContent-Type: multipart/mixed; boundary="b"\n',
                                 b"--b\nContent-Type: application/octet-stream; name=a.txt\n"
                                 b"Content-Transfer-Encoding: x-uuencode\n\nbegin 644 a.txt\n"
                                 b"%:&5L;&\\`\n`\nend\n--b--\n"),
    "continuation-first-header": b" folded first line\nFrom: alice@example.com\nSubject: odd\n\nbody\n",
    "mbox-from-line": b"From alice@example.com Mon Jan  1 10:00:00 2024\n" + _msg(b"Subject: mbox\n"),
    "message-id-variants": _msg(b"Subject: ids\nMessage-ID: bare-id@example.com\n"
                                b"In-Reply-To: <a@example.com> (Alice's message of Monday)\n"
                                b"References: <r1@example.com>\n <r2@example.com> junk <r3@example.com>\n"),
    "delivery-status": _msg(b'Subject: bounce\nContent-Type: multipart/report; report-type=delivery-status; '
                            b'boundary="b"\n',
                            b"--b\nContent-Type: text/plain\n\ndelivery failed\n--b\n"
                            b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
                            b"Final-Recipient: rfc822; gone@example.com\nAction: failed\n--b--\n"),
    "binary-garbage": random.Random(5322).randbytes(8192),
    "binary-garbage-after-headers": _msg(b"Subject: binary\n", random.Random(2045).randbytes(4096)),
}


def _cpython_messages() -> list[tuple[str, bytes]]:
    """CPython's own email test messages, if this interpreter ships its test suite."""
    data = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    return [(f"cpython/{path.name}", path.read_bytes()) for path in sorted(data.glob("msg_*.txt"))]


def corpus() -> list[tuple[str, bytes]]:
    """(name, raw bytes) of every corpus message: CPython's test messages, then the adversarial cases."""
    return _cpython_messages() + [(f"adversarial/{name}", raw) for name, raw in ADVERSARIAL.items()]
