"""Challenge-response for unknown senders: whether to challenge, and opening the challenge.

A careless challenge mails a forged address (backscatter, which gets a server blocklisted) or answers
a robot. So a held message gets a challenge only when every check below lets it through, in order:

  suppression      null sender, robots' addresses, auto-replies, bulk and list mail, our own mail or
                   challenges coming back, rule-marked spam: held silently, no challenge
  authentication   the trusted MTA's Authentication-Results: DMARC fail, or SPF fail without an aligned
                   DKIM pass, is held for review; no trusted verdict follows `challenge_unauthenticated`
  joining          the sender already has an open challenge: the message waits with it, no second mail
  rate caps        per sender per day, per domain per hour, all senders per hour: it waits, no mail

The checks are pure functions; `plan` gathers what they need from the pipeline's Context and session,
and `carry_out` writes the challenge, its outbox mail and the wait in the pipeline's transaction (the
mail is sent after the commit by ingest/outbox.py). Confirming is ingest/confirm.py.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

import authres

from ingest import mailer
from ingest.parse import ParsedMessage
from storage import challenge_store
from storage.challenge_store import RecentChallenges
from storage.models import Challenge, Message, Outbox, utcnow


@dataclass(frozen=True)
class ChallengeSettings:
    """The `[challenge]` configuration and the web app's public URL, as the pipeline needs them."""

    public_url: str = "http://127.0.0.1:8080"
    token_days: int = 7
    trusted_authserv_id: str = ""
    challenge_unauthenticated: bool = True
    per_sender_daily: int = 3
    per_domain_hourly: int = 20
    total_hourly: int = 200
    subject_prefix: str = "Please confirm:"
    contact: str = ""
    template_dir: str = ""

    @classmethod
    def from_config(cls, config) -> ChallengeSettings:
        c = config.challenge
        return cls(
            public_url=config.web.public_url, token_days=c.token_days,
            trusted_authserv_id=c.trusted_authserv_id, challenge_unauthenticated=c.challenge_unauthenticated,
            per_sender_daily=c.per_sender_daily, per_domain_hourly=c.per_domain_hourly,
            total_hourly=c.total_hourly, subject_prefix=c.subject_prefix, contact=c.contact,
            template_dir=c.template_dir,
        )


DEFAULT = ChallengeSettings()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token: a leaked table or backup does not confirm anyone."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


# --- suppression: mail that must never be challenged ---

_ROBOT = re.compile(
    r"^(mailer-daemon|postmaster|bounces?)([-+._=].*)?$"
    r"|(^|[-+._=])(no[-_.]?reply|do[-_.]?not[-_.]?reply)([-+._=]|$)",
    re.IGNORECASE,
)
_AUTO_PRECEDENCE = {"bulk", "list", "junk"}
# A bounce quotes our challenge's headers; a reply references its Message-ID.
_OUR_MAIL = re.compile(
    rb"(?i)" + re.escape(mailer.MARKER.encode()) + rb"\s*:|<" + re.escape(mailer.MAIL_ID_PREFIX.encode())
)


def robot_address(address: str) -> bool:
    """MAILER-DAEMON, postmaster, bounces, noreply and do-not-reply style local parts."""
    return bool(address) and bool(_ROBOT.search(address.rpartition("@")[0]))


def quotes_our_mail(parsed: ParsedMessage) -> bool:
    """True if the message references or quotes a challenge of ours (a reply, a bounce, a copy)."""
    ids = [parsed.message_id or "", *parsed.in_reply_to, *parsed.references]
    if any(mailer.is_our_mail_id(i) for i in ids):
        return True
    if parsed.header(mailer.MARKER):
        return True
    texts = [parsed.text.encode("utf-8", "replace"), parsed.html.encode("utf-8", "replace")]
    # A bounce returns our headers as a message/rfc822 or text/rfc822-headers part; images can't.
    parts = [a.content for a in parsed.attachments if a.content_type.startswith(("message/", "text/"))]
    return any(_OUR_MAIL.search(blob) for blob in (*texts, *parts))


def automatic(parsed: ParsedMessage) -> str | None:
    """Why the headers mark this as automatic mail (RFC 3834 and the usual others), or None."""
    auto = (parsed.first("Auto-Submitted") or "no").split(";")[0].strip().lower()
    if auto != "no":
        return f"Auto-Submitted: {auto}"
    precedence = (parsed.first("Precedence") or "").strip().lower()
    if precedence in _AUTO_PRECEDENCE:
        return f"Precedence: {precedence}"
    if parsed.first("X-Loop") is not None:
        return "X-Loop header"
    if parsed.first("X-Autoreply") is not None or parsed.first("X-Autorespond") is not None:
        return "auto-responder header"
    return None


def suppression(parsed: ParsedMessage, *, envelope_sender: str, source: str, is_own, tags) -> str | None:
    """Why this message must not be challenged (the challenge would answer a robot or loop), or None.

    `is_own(address)` says whether an address is one of ours; `tags` are the rules' tags."""
    address = parsed.from_addr or envelope_sender.lower()
    if (source == "lmtp" and not envelope_sender) or (parsed.first("Return-Path") or "").strip() == "<>":
        return "null sender (a bounce or notification)"
    for who in (parsed.from_addr, envelope_sender):
        if who and is_own(who):
            return f"mail from our own address {who.lower()}"
    if quotes_our_mail(parsed):
        return "it carries one of our own challenges (a bounce of it or a reply to it)"
    for who in (parsed.from_addr, envelope_sender):
        if robot_address(who):
            return f"{who.lower()} is an automatic address (MAILER-DAEMON, postmaster, noreply and the like)"
    if reason := automatic(parsed):
        return reason
    for name, _ in parsed.headers:
        if name.strip().lower().startswith("list-"):
            return f"mailing list mail ({name.strip()} header)"
    suppress = re.split(r"[\s,]+", (parsed.first("X-Auto-Response-Suppress") or "").lower())
    if "all" in suppress or "oof" in suppress:
        return f"X-Auto-Response-Suppress: {parsed.first('X-Auto-Response-Suppress').strip()}"
    if any(t.lower() == "spam" for t in tags):
        return "a rule tagged it spam"
    if not mailer.mailable(address):
        return f"the sender address {address!r} cannot be mailed safely"
    return None


# --- authentication: only the trusted MTA's verdict counts ---


@dataclass(frozen=True)
class Authentication:
    status: str  # pass | fail | none (no trusted verdict either way)
    detail: str


def aligned(domain: str, from_domain: str) -> bool:
    """Relaxed DMARC alignment, approximated without the public suffix list: same domain or a subdomain."""
    domain, from_domain = domain.strip(".").lower(), from_domain.strip(".").lower()
    if not domain or not from_domain:
        return False
    return domain == from_domain or from_domain.endswith("." + domain) or domain.endswith("." + from_domain)


def _prop(result, ptype: str, name: str) -> str:
    for p in result.properties or ():
        if (p.type or "").lower() == ptype and (p.name or "").lower() == name:
            return (p.value or "").strip()
    return ""


def _authserv_id(value: str) -> str:
    """The authserv-id a header claims, read without trusting the parser with the rest."""
    head = value.split(";", 1)[0].split()
    return head[0].lower() if head else ""


def authentication(values: list[str], authserv_id: str, from_domain: str) -> Authentication:
    """The verdict of the topmost Authentication-Results header written by `authserv_id` (RFC 8601).

    The MTA in front must strip incoming headers that claim its id; headers of any other id are
    ignored, since anyone can write them."""
    trusted = authserv_id.strip().lower()
    if not trusted:
        return Authentication("none", "no trusted_authserv_id configured: the sender is not authenticated")
    value = next((v for v in values if _authserv_id(v) == trusted), None)
    if value is None:
        return Authentication("none", f"no Authentication-Results from {authserv_id}")
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except Exception as e:  # authres.AuthResError, and whatever hostile input finds
        return Authentication("none", f"Authentication-Results from {authserv_id} unreadable ({e})")
    results = [((r.method or "").lower(), (r.result or "").lower(), r) for r in header.results]
    summary = ", ".join(f"{m}={res}" for m, res, _ in results) or "no results"
    where = f"Authentication-Results of {authserv_id}: {summary}"
    dkim_aligned = any(
        m == "dkim" and res == "pass"
        and aligned(_prop(r, "header", "d") or domain_of(_prop(r, "header", "i")), from_domain)
        for m, res, r in results
    )
    spf_aligned = any(
        m == "spf" and res == "pass"
        and aligned(domain_of(_prop(r, "smtp", "mailfrom") or _prop(r, "smtp", "helo")), from_domain)
        for m, res, r in results
    )
    if any(m == "dmarc" and res == "fail" for m, res, _ in results):
        return Authentication("fail", f"{where} (DMARC fail)")
    if any(m == "spf" and res == "fail" for m, res, _ in results) and not dkim_aligned:
        return Authentication("fail", f"{where} (SPF fail and no aligned DKIM pass)")
    if dkim_aligned or spf_aligned or any(m == "dmarc" and res == "pass" for m, res, _ in results):
        return Authentication("pass", f"{where} ({from_domain} authenticated)")
    return Authentication("none", f"{where} (nothing authenticates {from_domain})")


# --- rate caps ---


def over_cap(recent: RecentChallenges, s: ChallengeSettings) -> str | None:
    """Which cap another challenge would exceed, or None."""
    if recent.sender_day >= s.per_sender_daily:
        return f"{recent.sender_day} challenges to this sender in 24 hours (per_sender_daily = {s.per_sender_daily})"
    if recent.domain_hour >= s.per_domain_hourly:
        return (f"{recent.domain_hour} challenges to this domain in the last hour "
                f"(per_domain_hourly = {s.per_domain_hourly})")
    if recent.total_hour >= s.total_hourly:
        return f"{recent.total_hour} challenges in the last hour (total_hourly = {s.total_hourly})"
    return None


# --- the step's plan, and carrying it out ---


@dataclass(frozen=True)
class Plan:
    """What the challenge step decided for a held message."""

    reason: str  # why it is held: the Decision's reason
    wait: bool = False  # it is released when its sender confirms
    send: bool = False  # open a new challenge and mail it
    join: Challenge | None = None  # the sender's open challenge it waits with


def blocked(ctx) -> bool:
    return challenge_store.is_blocked(ctx.session, ctx.sender_address)


def plan(ctx) -> Plan:
    """Decide whether the held message of an unknown sender gets a challenge (reads, never writes)."""
    s = ctx.settings or DEFAULT
    address = ctx.sender_address
    tags = ctx.verdict.tags if ctx.verdict else ()
    why = suppression(ctx.parsed, envelope_sender=ctx.sender, source=ctx.source, tags=tags,
                      is_own=lambda a: ctx.directory.department_for(a) is not None)
    if why:
        ctx.note("no-challenge", why)
        return Plan(f"unknown sender {address} held without a challenge: {why}")
    auth = authentication(ctx.parsed.header("Authentication-Results"), s.trusted_authserv_id, domain_of(address))
    ctx.note("authentication", auth.detail)
    if auth.status == "fail":
        return Plan(f"unknown sender {address} held for review, no challenge (probably forged): {auth.detail}")
    if auth.status == "none" and not s.challenge_unauthenticated:
        return Plan(f"unknown sender {address} held for review, no challenge: not authenticated "
                    "(challenge_unauthenticated = false)")
    pending = challenge_store.open_challenge(ctx.session, address, utcnow())
    if pending:
        return Plan(f"unknown sender {address} held: waits for the challenge sent "
                    f"{pending.created_at:%Y-%m-%d %H:%M} UTC", wait=True, join=pending)
    if from_address(ctx) is None:
        return Plan(f"unknown sender {address} held, no challenge: {ctx.department.name} has no address "
                    "to send one from", wait=True)
    capped = over_cap(challenge_store.recent_challenges(ctx.session, address, domain_of(address), utcnow()), s)
    if capped:
        ctx.note("challenge-capped", f"no challenge sent: {capped}")
        return Plan(f"unknown sender {address} held, waiting for a later challenge: {capped}", wait=True)
    return Plan(f"unknown sender {address} held: {ctx.department.name} challenges unknown senders",
                wait=True, send=True)


def from_address(ctx) -> str | None:
    """The department address the challenge comes from: the one written to, else its first."""
    recipient = ctx.recipient.strip().lower()
    owner = ctx.directory.department_for(recipient)
    if owner is not None and owner.id == ctx.department.id and mailer.mailable(recipient):
        return recipient
    own = sorted(a for a, d in ctx.directory.addresses.items() if d.id == ctx.department.id)
    return own[0] if own else None


def carry_out(ctx, message: Message) -> None:
    """Write what `plan` decided, in the caller's transaction: the wait, and a new challenge with its mail."""
    p: Plan | None = ctx.challenge
    if p is None or not p.wait:
        return
    challenge = p.join
    if p.send:
        challenge = _open(ctx, message)
    challenge_store.add_wait(ctx.session, message, ctx.sender_address, challenge)


def _open(ctx, message: Message) -> Challenge | None:
    s = ctx.settings or DEFAULT
    now, address, sender_from = utcnow(), ctx.sender_address, from_address(ctx)
    token = new_token()
    expires = now + timedelta(days=s.token_days)
    mail_id = mailer.new_mail_id(domain_of(sender_from))
    mail = mailer.ChallengeMail(
        department=ctx.department.name, from_addr=sender_from, to_addr=address,
        link=f"{s.public_url.rstrip('/')}/confirm/{token}", expires_at=expires, days=s.token_days,
        contact=s.contact or sender_from, subject_prefix=s.subject_prefix,
        in_reply_to=ctx.parsed.message_id, references=tuple(ctx.parsed.references),
    )
    try:
        content = mailer.build(mail, mail_id, mailer.environment("ingest", s.template_dir),
                               left_out=lambda why: ctx.note("challenge-header", why))
    except Exception as e:  # an operator's broken template must not make the MTA retry forever
        ctx.note("challenge-failed", f"no challenge sent: the challenge mail could not be built ({e!r})")
        return None
    challenge_store.expire_stale(ctx.session, address, now)  # frees the one-open-challenge slot
    challenge = Challenge(token_hash=token_hash(token), sender=address, domain=domain_of(address),
                          department_id=ctx.department.id, state="open", created_at=now, expires_at=expires,
                          tickets=[], closed_reason="", mail_id=mail_id)
    challenge_store.add_challenge(ctx.session, challenge, Outbox(
        challenge=challenge, held_message=message, mail_from="", rcpt_to=address, mail_id=mail_id,
        content=content, state="pending", attempts=0, next_attempt_at=now, expires_at=expires, created_at=now,
        last_error=""))
    ctx.note("challenge", f"challenge to {address} queued from {sender_from}; the link works until "
                          f"{expires:%Y-%m-%d %H:%M} UTC")
    return challenge
