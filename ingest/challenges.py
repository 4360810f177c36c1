"""Challenge-response for unknown senders: the checks before a challenge, and opening the challenge.

A careless challenge mails a forged address (backscatter, which gets a server blocklisted) or answers
a robot. So a held message gets a challenge only when every check below lets it through, in order (each
is a step of ingest/chain.py's CHAIN, named challenge_*):

  suppression      null sender, robots' addresses, auto-replies, bulk and list mail (ingest/automatic.py),
                   our own mail or challenges coming back, rule-marked spam: held silently, no challenge
  authentication   the trusted MTA's Authentication-Results, for the From domain we use: DMARC fail, SPF
                   fail without an aligned DKIM pass, or a header we cannot read for certain, is held for
                   review; no trusted verdict follows `challenge_unauthenticated`
  joining          the sender's mailbox already has an open challenge: the message waits with it, no mail
  rate caps        per mailbox per day, per domain per hour, unauthenticated senders per hour, all senders
                   per hour: it waits, and the sweeper challenges it once the budget allows

Caps and joining count the mailbox, not its spelling (`mailbox`): `Victim+1@x` and `victim@x` are one.
The checks are pure functions; the chain's steps gather what they need from its Context and session
into a `Plan`, and `carry_out` writes the challenge, its outbox mail and the wait in the pipeline's
transaction (the mail is sent after the commit by ingest/outbox.py). Confirming is ingest/confirm.py.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

import authres
from publicsuffixlist import PublicSuffixList

from ingest import automatic, mailer
from ingest.parse import ParsedMessage
from storage import challenge_store
from storage.challenge_store import RecentChallenges
from storage.models import Challenge, Message, Outbox, utcnow


@dataclass
class ChallengeSection:
    """The `[challenge]` section of the configuration (ticketmail/config.py reads it): its keys, defaults."""

    token_days: int = 7
    held_days: int = 14
    trusted_authserv_id: str = ""
    challenge_unauthenticated: bool = True
    per_sender_daily: int = 3  # challenges to one mailbox per 24 hours
    per_domain_hourly: int = 20  # challenges to one (registrable) domain per hour
    unauthenticated_hourly: int = 30  # challenges per hour to senders the trusted MTA did not authenticate
    total_hourly: int = 200  # challenges per hour in all
    subaddress_separator: str = "+"  # each character starts a sub-address tag (victim+1@ is victim@); "" = none
    subject_prefix: str = "Please confirm:"
    contact: str = ""  # whom the challenge names for questions; "" = the department's address
    template_dir: str = ""  # templates here replace the built-in ones of the same name
    keep_for_review: bool = False  # past held_days, keep unconfirmed mail held instead of purging it


PUBLIC_URL = "http://127.0.0.1:8080"  # [web] public_url's default: the base of the links in challenges


@dataclass(frozen=True)
class ChallengeSettings:
    """What the pipeline needs of `[challenge]` (the defaults are the section's), and the public URL."""

    public_url: str = PUBLIC_URL
    token_days: int = ChallengeSection.token_days
    trusted_authserv_id: str = ChallengeSection.trusted_authserv_id
    challenge_unauthenticated: bool = ChallengeSection.challenge_unauthenticated
    per_sender_daily: int = ChallengeSection.per_sender_daily
    per_domain_hourly: int = ChallengeSection.per_domain_hourly
    unauthenticated_hourly: int = ChallengeSection.unauthenticated_hourly
    total_hourly: int = ChallengeSection.total_hourly
    subaddress_separator: str = ChallengeSection.subaddress_separator
    subject_prefix: str = ChallengeSection.subject_prefix
    contact: str = ChallengeSection.contact
    template_dir: str = ChallengeSection.template_dir

    @classmethod
    def from_config(cls, config) -> ChallengeSettings:
        section = {name: getattr(config.challenge, name) for name in cls.__dataclass_fields__ if name != "public_url"}
        return cls(public_url=config.web.public_url, **section)


DEFAULT = ChallengeSettings()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database keeps of a token: a leaked table or backup does not confirm anyone."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def mailbox(address: str, separators: str = "+") -> str:
    """The mailbox an address reaches, as the caps count it: case-folded, the sub-address tag cut off
    (`Victim+1@Bank.example` is victim@bank.example). Each character of `separators` starts a tag, as in
    Postfix's recipient_delimiter; a local part that would be left empty is kept whole."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    cut = min((i for i in (local.find(c) for c in separators) if i > 0), default=len(local))
    return f"{local[:cut]}@{domain}"


@lru_cache(maxsize=1)
def _public_suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list bundled with the package: nothing is fetched at run time


def organization(domain: str) -> str | None:
    """The organizational domain (RFC 7489 3.2) by the Public Suffix List: `bank.example` for
    `mail.bank.example`, `evil.co.uk` for itself; None when `domain` is itself a public suffix (`co.uk`)."""
    domain = domain.strip().strip(".").lower()
    return _public_suffixes().privatesuffix(domain) if domain else None


def cap_domain(address: str) -> str:
    """The domain the per-domain cap counts: the registrable domain, so that a flood spread over
    subdomains of one organisation is counted as one."""
    domain = domain_of(address)
    return organization(domain) or domain


# --- suppression: mail that must never be challenged ---

_ROBOT = re.compile(
    r"^(mailer-daemon|postmaster|bounces?)([-+._=].*)?$"
    r"|(^|[-+._=])(no[-_.]?reply|do[-_.]?not[-_.]?reply)([-+._=]|$)",
    re.IGNORECASE,
)
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


def suppression(parsed: ParsedMessage, *, address: str, envelope_sender: str, source: str, is_own,
                tags) -> str | None:
    """Why this message must not be challenged (the challenge would answer a robot or loop), or None.

    `address` is the one a challenge would go to (chain.sender_address); `is_own(address)` says whether
    an address is one of ours; `tags` are the rules' tags."""
    for who in (parsed.from_addr, envelope_sender):
        if who and is_own(who):
            return f"mail from our own address {who.lower()}"
    if quotes_our_mail(parsed):
        return "it carries one of our own challenges (a bounce of it or a reply to it)"
    if reason := automatic.reason(parsed, envelope_sender, source):
        return reason
    # Not automatic mail as such (a web form's noreply From may carry a person's words), but nobody
    # reads these addresses: a challenge to them would be lost or answered by a robot.
    for who in (parsed.from_addr, envelope_sender):
        if robot_address(who):
            return f"{who.lower()} is an automatic address (MAILER-DAEMON, postmaster, noreply and the like)"
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
    """Relaxed DMARC alignment (RFC 7489 3.1): both under one organizational domain, which a public
    suffix is not (`evil.co.uk` does not speak for `co.uk`, nor `co.uk` for `bank.co.uk`)."""
    org = organization(domain)
    return org is not None and org == organization(from_domain)


def _prop(result, ptype: str, name: str) -> str:
    for p in result.properties or ():
        if (p.type or "").lower() == ptype and (p.name or "").lower() == name:
            return (p.value or "").strip()
    return ""


def _authserv_id(value: str) -> str:
    """The authserv-id a header claims, read without trusting the parser with the rest."""
    head = value.split(";", 1)[0].split()
    return head[0].lower() if head else ""


_METHODS = ("dmarc", "dkim", "spf")  # the results a verdict is made of
_STATED = re.compile(r"(?<![\w.-])(dmarc|dkim|spf)(?:/[0-9]+)?[ \t]*=[ \t]*([a-z]+)", re.IGNORECASE)


def _bare(value: str) -> str | None:
    """The header without its comments and quoted strings (RFC 5322 CFWS), or None if one is left open."""
    out, depth, quoted, chars = [], 0, False, iter(value)
    for c in chars:
        if c == "\\" and (depth or quoted):
            next(chars, None)
        elif quoted:
            quoted = c != '"'
        elif c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif c == '"' and not depth:
            quoted = True
        elif not depth:
            out.append(c)
    return None if depth or quoted else "".join(out)


def _results(value: str) -> list[tuple[str, str, object]] | None:
    """The (method, result, parsed result) of one header, or None unless it reads the same two ways.

    A hostile address the MTA copied into the header can make the parser fail, or silently swallow a
    result (`smtp.mailfrom=x(y@bank.example; dmarc=fail`: the rest reads as a comment). So the DMARC,
    DKIM and SPF results it finds must be exactly those stated outside comments and quotes."""
    try:
        header = authres.AuthenticationResultsHeader.parse_value(value)
    except Exception:  # authres.AuthResError, and whatever hostile input finds
        return None
    results = [((r.method or "").lower(), (r.result or "").lower(), r) for r in header.results]
    bare = _bare(value.partition(";")[2])
    if bare is None:
        return None
    stated = sorted((m.lower(), r.lower()) for m, r in _STATED.findall(bare))
    return results if stated == sorted((m, res) for m, res, _ in results if m in _METHODS) else None


def _disagree(headers: list[list[tuple[str, str, object]]]) -> str | None:
    """The method two trusted headers report different results for, if any. (One MTA may write a header
    per filter, e.g. OpenDKIM's and OpenDMARC's: different methods are no disagreement.)"""
    for method in _METHODS:
        seen = {frozenset(res for m, res, _ in h if m == method) for h in headers}
        if len(seen - {frozenset()}) > 1:
            return method
    return None


def authentication(values: list[str], authserv_id: str, from_domain: str) -> Authentication:
    """The verdict of the Authentication-Results headers written by `authserv_id` (RFC 8601) on
    `from_domain`, the domain of the From address ticketmail uses.

    The MTA in front must strip incoming headers that claim its id; headers of any other id are
    ignored, since anyone can write them. What cannot be read for certain fails closed."""
    trusted = authserv_id.strip().lower()
    if not trusted:
        return Authentication("none", "no trusted_authserv_id configured: the sender is not authenticated")
    mine = [v for v in values if _authserv_id(v) == trusted]
    if not mine:
        return Authentication("none", f"no Authentication-Results from {authserv_id}")
    read = [_results(v) for v in mine]
    if None in read:
        return Authentication("fail", f"Authentication-Results from {authserv_id} unreadable, so not trusted")
    results = [r for header in read for r in header]
    summary = ", ".join(f"{m}={res}" for m, res, _ in results) or "no results"
    where = f"Authentication-Results of {authserv_id}: {summary}"
    if method := _disagree(read):
        return Authentication("fail", f"{where} (its headers disagree on {method})")
    return _verdict(results, from_domain, where)


def _verdict(results: list[tuple[str, str, object]], from_domain: str, where: str) -> Authentication:
    """DMARC for exactly `from_domain`, or DKIM / SPF aligned with it."""
    from_domain = from_domain.strip(".").lower()
    judged = {_prop(r, "header", "from").strip(".").lower() for m, _, r in results if m == "dmarc"} - {""}
    if judged - {from_domain}:  # the MTA read another From than we do: the header is ambiguous
        return Authentication("fail", f"{where} (DMARC judged {', '.join(sorted(judged))}, "
                                      f"the From address is at {from_domain})")
    dmarc_pass = any(m == "dmarc" and res == "pass" and _prop(r, "header", "from") for m, res, r in results)
    dkim_aligned = any(m == "dkim" and res == "pass" and aligned(_prop(r, "header", "d"), from_domain)
                       for m, res, r in results)
    spf_aligned = any(m == "spf" and res == "pass" and aligned(domain_of(_prop(r, "smtp", "mailfrom")), from_domain)
                      for m, res, r in results)
    if any(m == "dmarc" and res == "fail" for m, res, _ in results):
        return Authentication("fail", f"{where} (DMARC fail)")
    if any(m == "spf" and res == "fail" for m, res, _ in results) and not dkim_aligned:
        return Authentication("fail", f"{where} (SPF fail and no aligned DKIM pass)")
    if dmarc_pass or dkim_aligned or spf_aligned:
        return Authentication("pass", f"{where} ({from_domain} authenticated)")
    return Authentication("none", f"{where} (nothing authenticates {from_domain})")


# --- rate caps ---


def over_cap(recent: RecentChallenges, s: ChallengeSettings, authenticated: bool) -> str | None:
    """Which cap another challenge would exceed, or None. Unauthenticated senders have a budget of their
    own, so that a flood of forged ones cannot use up what senders whose mail passed DMARC/SPF/DKIM get."""
    if recent.sender_day >= s.per_sender_daily:
        return (f"{recent.sender_day} challenges to this mailbox in 24 hours "
                f"(per_sender_daily = {s.per_sender_daily})")
    if recent.domain_hour >= s.per_domain_hourly:
        return (f"{recent.domain_hour} challenges to this domain in the last hour "
                f"(per_domain_hourly = {s.per_domain_hourly})")
    if not authenticated and recent.unauthenticated_hour >= s.unauthenticated_hourly:
        return (f"{recent.unauthenticated_hour} challenges to unauthenticated senders in the last hour "
                f"(unauthenticated_hourly = {s.unauthenticated_hourly})")
    if recent.total_hour >= s.total_hourly:
        return f"{recent.total_hour} challenges in the last hour (total_hourly = {s.total_hourly})"
    return None


# --- the challenge steps' plan (ingest/chain.py), and carrying it out ---


@dataclass(frozen=True)
class Plan:
    """What the challenge steps decided for a held message."""

    reason: str  # why it is held: the Decision's reason
    wait: bool = False  # it is released when its sender's mailbox confirms
    send: bool = False  # open a new challenge and mail it
    join: Challenge | None = None  # the mailbox's open challenge it waits with
    capped: bool = False  # a cap stopped its challenge: the sweeper opens one when the budget allows
    authenticated: bool = False  # the trusted MTA authenticated the sender (which budget it uses)


def from_address(ctx) -> str | None:
    """The department address the challenge comes from: the one written to if it is one of the
    department's own (literal) addresses, else the first of them; None if it has none.

    Never an address a catch-all (`*@help.example`) matched: the sender chose that one, and would have
    us send `From: it-security.password-expired@help.example`."""
    own = [a for a, d in ctx.directory.addresses.items() if d.id == ctx.department.id and mailer.mailable(a)]
    recipient = ctx.recipient.strip().lower()
    return recipient if recipient in own else next(iter(own), None)


def carry_out(ctx, message: Message) -> None:
    """Write what the challenge steps decided, in the caller's transaction: the wait, and a new challenge with its mail."""
    p: Plan | None = ctx.challenge
    if p is None or not p.wait:
        return
    challenge = p.join
    if p.send:
        challenge = open_challenge(ctx, message, authenticated=p.authenticated)
    box = mailbox(ctx.sender_address, (ctx.settings or DEFAULT).subaddress_separator)
    challenge_store.add_wait(ctx.session, message, ctx.sender_address, box, challenge,
                             authenticated=p.authenticated, capped=p.capped)


def open_challenge(ctx, message: Message, *, authenticated: bool) -> Challenge | None:
    """A new challenge of the sender's mailbox and its outbox mail, in the caller's transaction; None
    if the mail could not be built (noted on the message)."""
    s = ctx.settings or DEFAULT
    now, address, sender_from = utcnow(), ctx.sender_address, from_address(ctx)
    box = mailbox(address, s.subaddress_separator)
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
    challenge_store.expire_stale(ctx.session, box, now)  # frees the one-open-challenge slot
    challenge = Challenge(token_hash=token_hash(token), sender=address, mailbox=box, domain=cap_domain(box),
                          authenticated=authenticated, department_id=ctx.department.id, state="open",
                          created_at=now, expires_at=expires, tickets=[], closed_reason="", mail_id=mail_id)
    challenge_store.add_challenge(ctx.session, challenge, Outbox(
        challenge=challenge, held_message=message, mail_from="", rcpt_to=address, mail_id=mail_id,
        content=content, state="pending", attempts=0, next_attempt_at=now, expires_at=expires, created_at=now,
        last_error=""))
    ctx.note("challenge", f"challenge to {address} queued from {sender_from}; the link works until "
                          f"{expires:%Y-%m-%d %H:%M} UTC")
    return challenge
