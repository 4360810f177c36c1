"""The challenge mail: text and HTML from Jinja2 templates, headers that keep it from loops and robots.

Templates come from the operator's folder (`[challenge] template_dir`) first, then the built-in ones in
this package. The mail never quotes the held message (nor its subject): a spammer who forges a victim's
address would otherwise have us deliver his text to the victim.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from functools import lru_cache

import jinja2

MARKER = "X-Ticketmail-Challenge"  # on every challenge; a bounce quoting it is recognised and never challenged
MAIL_ID_PREFIX = "ticketmail-challenge."  # our Message-IDs: <ticketmail-challenge.HEX@domain>
_SAFE_ID = re.compile(r"[!-;=?-~]{1,250}")  # printable ASCII without < and >


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


def mailable(address: str) -> bool:
    """An ASCII addr-spec we can put in To and RCPT TO without surprises."""
    if not address or not address.isascii() or len(address) > 254 or address.count("@") != 1:
        return False
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain or any(c in address for c in " \t\r\n<>(),;:\\\"[]"):
        return False
    try:
        Address(addr_spec=address)
    except (ValueError, IndexError, TypeError):
        return False
    return True


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


def build(mail: ChallengeMail, mail_id: str, templates: jinja2.Environment) -> bytes:
    """The challenge as bytes for SMTP (CRLF, 7-bit safe)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(display_name=mail.department, addr_spec=mail.from_addr)
    msg["To"] = Address(addr_spec=mail.to_addr)
    msg["Subject"] = f"{mail.subject_prefix} your message to {mail.department}".strip()
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = f"<{mail_id}>"
    # Thread it under the held message; ids come from a stranger, so only well-formed ones.
    thread = [i for i in mail.references[-10:] if _SAFE_ID.fullmatch(i)]
    if mail.in_reply_to and _SAFE_ID.fullmatch(mail.in_reply_to):
        msg["In-Reply-To"] = f"<{mail.in_reply_to}>"
        thread.append(mail.in_reply_to)
    if thread:
        msg["References"] = " ".join(f"<{i}>" for i in dict.fromkeys(thread))
    msg["Auto-Submitted"] = "auto-replied"  # RFC 3834: robots must not answer it
    msg["Precedence"] = "bulk"
    msg["X-Auto-Response-Suppress"] = "All"  # Exchange: no out-of-office replies to it
    msg[MARKER] = "confirmation request"
    values = {
        "department": mail.department,
        "sender": mail.to_addr,
        "link": mail.link,
        "days": mail.days,
        "expires": mail.expires_at.strftime("%d %B %Y, %H:%M UTC"),
        "contact": mail.contact,
    }
    msg.set_content(templates.get_template("challenge.txt").render(values))
    msg.add_alternative(templates.get_template("challenge.html").render(values), subtype="html")
    return msg.as_bytes()


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
