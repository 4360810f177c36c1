# TEMPORARY minimal parser so the pipeline can be tested; helper-1 replaces this file.
from __future__ import annotations
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.utils import getaddresses, parsedate_to_datetime

@dataclass(frozen=True)
class Attachment:
    filename: str; content_type: str; size: int; sha256: str; content: bytes; content_id: str | None; inline: bool

@dataclass
class ParsedMessage:
    message_id: str | None = None
    in_reply_to: list = field(default_factory=list)
    references: list = field(default_factory=list)
    from_addr: str = ""
    from_name: str = ""
    reply_to: str = ""
    to: list = field(default_factory=list)
    cc: list = field(default_factory=list)
    to_names: list = field(default_factory=list)
    cc_names: list = field(default_factory=list)
    subject: str = ""
    date: datetime | None = None
    text: str = ""
    html: str = ""
    attachments: list = field(default_factory=list)
    headers: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    def header(self, name): return [v for k, v in self.headers if k.lower() == name.lower()]
    def first(self, name):
        v = self.header(name); return v[0] if v else None

def _dec(v):
    try: return str(make_header(decode_header(str(v)))).strip()
    except Exception: return str(v)

def _ids(v):
    import re; return re.findall(r"<([^>]+)>", v or "")

def parse_message(raw: bytes) -> ParsedMessage:
    p = ParsedMessage()
    try:
        m = message_from_bytes(raw, policy=policy.compat32)
        p.headers = [(k, _dec(v)) for k, v in m.items()]
        p.subject = p.first("Subject") or ""
        frm = getaddresses(m.get_all("From", []))
        if frm and frm[0][1]: p.from_name, p.from_addr = _dec(frm[0][0]), frm[0][1].lower()
        p.to_names = [(_dec(n), a.lower()) for n, a in getaddresses(m.get_all("To", [])) if a]
        p.cc_names = [(_dec(n), a.lower()) for n, a in getaddresses(m.get_all("Cc", [])) if a]
        p.to = [a for _, a in p.to_names]; p.cc = [a for _, a in p.cc_names]
        ids = _ids(m.get("Message-ID", "")); p.message_id = ids[0] if ids else None
        p.in_reply_to = _ids(m.get("In-Reply-To", "")); p.references = _ids(m.get("References", ""))
        try: p.date = parsedate_to_datetime(m.get("Date")).astimezone(timezone.utc)
        except Exception: pass
        for part in m.walk():
            if part.get_content_type() == "text/plain" and not p.text:
                p.text = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
    except Exception as e:
        p.warnings.append(f"parse failed: {e}")
    return p
