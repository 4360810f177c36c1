"""The decisions a message goes through, as one ordered list (see CHAIN at the bottom).

Each step looks at the message and either returns a final Decision or None to let the next step
decide; every step that learns something writes it to `ctx.events`, so the message's event log says
why it ended where it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ingest import automatic, challenges, threading
from ingest.directory import DepartmentInfo, Directory
from ingest.parse import ParsedMessage, too_long_for_a_mailbox
from ingest.rules import Facts, Verdict
from storage import challenge_store, store
from storage.models import Customer, Ticket, utcnow


@dataclass(frozen=True)
class Decision:
    action: str  # create | append | hold | delete | reject | ignore
    reason: str
    step: str = field(default="", compare=False)  # the step of CHAIN that decided (decide() sets it)


@dataclass
class Context:
    session: object
    directory: Directory
    parsed: ParsedMessage
    sender: str  # envelope sender, "" for <>
    recipient: str
    source: str
    account: str
    ticket_prefix: str
    department: DepartmentInfo | None
    verdict: Verdict | None = None
    auto: str | None = None  # why this is an automatic message, if it is one
    ticket: Ticket | None = None  # the ticket this message follows up
    customer: Customer | None = None
    events: list[tuple[str, str]] = field(default_factory=list)
    settings: challenges.ChallengeSettings | None = None  # [challenge]; None: the defaults
    authenticated: bool = False  # the trusted MTA authenticated the sender (which challenge budget it uses)
    challenge: challenges.Plan | None = None  # for a held message: carried out by tickets.act

    @property
    def sender_address(self) -> str:
        return sender_address(self.parsed, self.sender)

    def note(self, kind: str, detail: str) -> None:
        self.events.append((kind, detail))


def delivery_context(session, directory: Directory, delivery, parsed: ParsedMessage, *, ticket_prefix: str,
                     settings=None) -> Context:
    """The Context for deciding on a delivery (ingest.delivery.Delivery): as the writer decides, as a retry
    of failed mail and a trial of the rules do. The parse's warnings are noted first."""
    ctx = Context(session=session, directory=directory, parsed=parsed, sender=delivery.sender,
                  recipient=delivery.recipient, source=delivery.source, account=delivery.account,
                  ticket_prefix=ticket_prefix, department=directory.department_of(delivery), settings=settings)
    for warning in parsed.warnings:
        ctx.note("parse-warning", warning)
    return ctx


def sender_address(message: ParsedMessage, envelope_sender: str) -> str:
    """Who the ticket is from: the From address, else the envelope sender; "" if neither is a mailbox (the
    parse drops a From address longer than one, LMTP and IMAP never give such a sender, a stored one may
    be). `message` is the parsed message or the stored one (storage.models.Message): both have
    `from_addr`, lowercased."""
    sender = message.from_addr or envelope_sender.lower()
    return "" if too_long_for_a_mailbox(sender) else sender


def detect_loop(ctx: Context) -> Decision | None:
    """Mail from our own department addresses, or marked as looped, must never make a ticket."""
    if ctx.parsed.from_addr and ctx.directory.is_own_address(ctx.parsed.from_addr):
        return Decision("ignore", f"mail loop: From {ctx.parsed.from_addr} is one of our own addresses")
    for value in ctx.parsed.header("X-Loop"):
        if any(ctx.directory.is_own_address(a) for a in value.replace(",", " ").split()):
            return Decision("ignore", f"mail loop: X-Loop names our address {value.strip()}")
    return None


def detect_auto_reply(ctx: Context) -> Decision | None:
    """Bounces, auto-replies, bulk and list mail (ingest/automatic.py): recorded on their ticket, never a
    new one."""
    ctx.auto = automatic.reason(ctx.parsed, ctx.sender, ctx.source)
    if ctx.auto:
        ctx.note("auto-reply", f"automatic message: {ctx.auto}")
    return None


def facts(ctx: Context) -> Facts:
    p = ctx.parsed
    return Facts(
        from_=[(p.from_name, p.from_addr)] if p.from_addr else [],
        to=p.to_names,
        cc=p.cc_names,
        subject=p.subject,
        body=p.text,
        recipient=ctx.recipient,
        sender=ctx.sender,
        account=ctx.account,
        headers=p.by_name,
    )


def apply_rules(ctx: Context) -> Decision | None:
    """The admin's processing rules: assign, priority, tag, trust, or delete."""
    start = ctx.department.name if ctx.department else None
    ctx.verdict = verdict = ctx.directory.rules.evaluate(facts(ctx), department=start)
    for hit in verdict.hits:
        ctx.note("rule", hit)
    if verdict.department and verdict.department != start:
        assigned = ctx.directory.department(verdict.department)
        if assigned:
            ctx.department = assigned
        else:
            ctx.note("warning", f"rule assigns unknown department {verdict.department!r}; kept {start}")
    if verdict.delete:
        return Decision("delete", "deleted by rule; the raw message is kept until `held purge`")
    return None


def find_followup(ctx: Context) -> Decision | None:
    """In-Reply-To/References naming a ticket's message, or an authorised subject reference."""
    p = ctx.parsed
    ticket = store.ticket_by_message_ids(ctx.session, p.in_reply_to + p.references)
    if ticket:
        ctx.ticket = ticket
        return Decision("append", f"follow-up on ticket #{ticket.id} (In-Reply-To/References)")
    number = threading.find_ticket_number(p.subject, ctx.ticket_prefix)
    if number is not None:
        ticket = store.ticket(ctx.session, number)
        if ticket is None:
            ctx.note("reference", f"subject names ticket #{number}, which does not exist")
        elif store.was_on_ticket(ctx.session, ticket, ctx.sender_address):
            ctx.ticket = ticket
            return Decision("append", f"follow-up on ticket #{number} (subject reference)")
        else:
            ctx.note(
                "reference",
                f"subject names ticket #{number}, but {ctx.sender_address or 'the sender'} is not its "
                "customer nor was on it: not appended",
            )
    if ctx.auto:
        return Decision("ignore", f"automatic message ({ctx.auto}) answering no ticket: no ticket created")
    return None


def sender_standing(ctx: Context) -> Decision | None:
    """A known customer, or a sender a rule trusts, gets a ticket."""
    address = ctx.sender_address
    if not address:
        return Decision("hold", "no sender address (no From, null envelope sender): held for review")
    if not ctx.parsed.from_addr:
        ctx.note("warning", f"no usable From header; using the envelope sender {address}")
    ctx.customer = store.customer_by_email(ctx.session, address)
    if ctx.customer:
        return Decision("create", f"known customer {address}")
    if ctx.verdict and ctx.verdict.trust:
        ctx.customer = store.customer_from_mail(address, ctx.parsed.from_name, verified=False, added_by="trusted")
        return Decision("create", f"unknown sender {address} trusted by rule")
    return None


def blocked_sender(ctx: Context) -> Decision | None:
    """A sender an admin blocked (`held discard --block`, `held block`, the panel) is deleted on arrival,
    a customer, a follow-up or a sender a rule trusts too: blocking is how an admin stops someone's mail."""
    if challenge_store.is_blocked(ctx.session, ctx.sender_address):
        return Decision("delete", f"sender {ctx.sender_address} is blocked by an admin (held unblock lifts it); "
                                  "the raw message is kept until `held purge`")
    return None


def unknown_sender_policy(ctx: Context) -> Decision | None:
    """The department's policy for senders it does not know; `challenge` goes on to the steps below."""
    address = ctx.sender_address
    policy = ctx.department.unknown_sender if ctx.department else "hold"
    where = ctx.department.name if ctx.department else "no department"
    if policy == "accept":
        ctx.customer = store.customer_from_mail(address, ctx.parsed.from_name, verified=False, added_by="accepted")
        return Decision("create", f"unknown sender {address} accepted ({where} accepts unknown senders)")
    if policy == "reject":
        return Decision("reject", f"unknown sender {address} rejected ({where} accepts only known customers)")
    if policy == "challenge":
        return None
    return Decision("hold", f"unknown sender {address} held for review ({where} holds unknown senders)")


# --- the challenge steps: a department that challenges unknown senders holds their mail, and mails a
# challenge only when each check lets it through (why each check exists: ingest/challenges.py) ---


def _held(ctx: Context, reason: str, **plan) -> Decision:
    """Hold the message; `plan` says whether it waits for a challenge (see challenges.Plan)."""
    ctx.challenge = challenges.Plan(reason, authenticated=ctx.authenticated, **plan)
    return Decision("hold", reason)


def _settings(ctx: Context) -> challenges.ChallengeSettings:
    return ctx.settings or challenges.DEFAULT


def _mailbox(ctx: Context) -> str:
    return challenges.mailbox(ctx.sender_address, _settings(ctx).subaddress_separator)


def challenge_suppressed(ctx: Context) -> Decision | None:
    """Automatic mail, robots' addresses, our own mail coming back, rule-marked spam: held silently."""
    why = challenges.suppression(
        ctx.parsed, address=ctx.sender_address, envelope_sender=ctx.sender, source=ctx.source,
        is_own=lambda a: ctx.directory.department_for(a) is not None,
        tags=ctx.verdict.tags if ctx.verdict else ())
    if why:
        ctx.note("no-challenge", why)
        return _held(ctx, f"unknown sender {ctx.sender_address} held without a challenge: {why}")
    return None


def challenge_unauthenticated(ctx: Context) -> Decision | None:
    """The trusted MTA's Authentication-Results: a failure is held for review, and so is no verdict
    when challenge_unauthenticated = false."""
    s, address = _settings(ctx), ctx.sender_address
    auth = challenges.authentication(ctx.parsed.header("Authentication-Results"), s.trusted_authserv_id,
                                     challenges.domain_of(address))
    ctx.note("authentication", auth.detail)
    ctx.authenticated = auth.status == "pass"
    if auth.status == "fail":
        return _held(ctx, f"unknown sender {address} held for review, no challenge: {auth.detail}")
    if auth.status == "none" and not s.challenge_unauthenticated:
        return _held(ctx, f"unknown sender {address} held for review, no challenge: not authenticated "
                          "(challenge_unauthenticated = false)")
    return None


def challenge_joined(ctx: Context) -> Decision | None:
    """The sender's mailbox already has an open challenge: the message waits with it, no new mail."""
    pending = challenge_store.open_challenge(ctx.session, _mailbox(ctx), utcnow())
    if pending:
        return _held(ctx, f"unknown sender {ctx.sender_address} held: waits for the challenge sent "
                          f"{pending.created_at:%Y-%m-%d %H:%M} UTC", wait=True, join=pending)
    return None


def challenge_without_address(ctx: Context) -> Decision | None:
    """A department without an address of its own cannot send a challenge: the message waits."""
    if challenges.from_address(ctx) is None:
        return _held(ctx, f"unknown sender {ctx.sender_address} held, no challenge: {ctx.department.name} has "
                          "no address of its own to send one from", wait=True)
    return None


def challenge_capped(ctx: Context) -> Decision | None:
    """Another challenge would exceed a rate cap: the message waits, and the sweeper challenges it once
    the budget allows."""
    box = _mailbox(ctx)
    recent = challenge_store.recent_challenges(ctx.session, box, challenges.cap_domain(box), utcnow())
    capped = challenges.over_cap(recent, _settings(ctx), ctx.authenticated)
    if capped:
        ctx.note("challenge-capped", f"no challenge sent yet: {capped}")
        return _held(ctx, f"unknown sender {ctx.sender_address} held, challenged once the budget allows: "
                          f"{capped}", wait=True, capped=True)
    return None


def challenge(ctx: Context) -> Decision:
    """Every check passed: held, and a challenge is mailed to the sender (by tickets.act)."""
    return _held(ctx, f"unknown sender {ctx.sender_address} held: {ctx.department.name} challenges unknown "
                      "senders", wait=True, send=True)


# The order of decisions, top to bottom.
CHAIN = (
    detect_loop,  # our own addresses coming back: ignore
    detect_auto_reply,  # bounces, RFC 3834, Precedence, List-*: mark, never a new ticket
    apply_rules,  # the admin's processing rules: delete, assign, priority, tag, trust
    blocked_sender,  # blocked by an admin (held discard --block, held block): delete, a customer's too
    find_followup,  # In-Reply-To/References, or the subject reference from someone on the ticket
    sender_standing,  # known customer (or trusted by rule): a new ticket
    unknown_sender_policy,  # accept | reject | hold; challenge: the steps below
    challenge_suppressed,  # automatic mail, robots, our own mail, spam: held silently
    challenge_unauthenticated,  # the trusted MTA's verdict fails (or is missing, if so configured): held
    challenge_joined,  # the mailbox has an open challenge: held, waits with it
    challenge_without_address,  # the department has no address of its own: held, waits
    challenge_capped,  # a rate cap is reached: held, the sweeper challenges it later
    challenge,  # held, and the sender is challenged
)


def decide(ctx: Context) -> Decision:
    for step in CHAIN:
        decision = step(ctx)
        if decision:
            return replace(decision, step=step.__name__)
    raise AssertionError("the last step, challenge, always decides")
