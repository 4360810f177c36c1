"""The decisions a message goes through, as one ordered list (see CHAIN at the bottom).

Each step looks at the message and either returns a final Decision or None to let the next step
decide; every step that learns something writes it to `ctx.events`, so the message's event log says
why it ended where it did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingest import challenges, threading
from ingest.directory import DepartmentInfo, Directory
from ingest.parse import ParsedMessage
from ingest.rules import Facts, Verdict
from storage import store
from storage.models import Customer, Ticket


@dataclass(frozen=True)
class Decision:
    action: str  # create | append | hold | delete | reject | ignore
    reason: str


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
    challenge: challenges.Plan | None = None  # for a held message: carried out by tickets.act

    @property
    def sender_address(self) -> str:
        return sender_address(self.parsed, self.sender)

    def note(self, kind: str, detail: str) -> None:
        self.events.append((kind, detail))


def sender_address(parsed: ParsedMessage, envelope_sender: str) -> str:
    """Who the ticket is from: the From address, else the envelope sender."""
    return parsed.from_addr or envelope_sender.lower()


def detect_loop(ctx: Context) -> Decision | None:
    """Mail from our own department addresses, or marked as looped, must never make a ticket."""
    if ctx.parsed.from_addr and ctx.directory.is_own_address(ctx.parsed.from_addr):
        return Decision("ignore", f"mail loop: From {ctx.parsed.from_addr} is one of our own addresses")
    for value in ctx.parsed.header("X-Loop"):
        if any(ctx.directory.is_own_address(a) for a in value.replace(",", " ").split()):
            return Decision("ignore", f"mail loop: X-Loop names our address {value.strip()}")
    return None


def detect_auto_reply(ctx: Context) -> Decision | None:
    """RFC 3834 auto-replies, bounces and list mail: recorded on their ticket, never a new one."""
    if reason := challenges.automatic(ctx.parsed):
        ctx.auto = reason
    elif ctx.parsed.first("List-Id") is not None:
        ctx.auto = "mailing list mail (List-Id)"
    elif ctx.source == "lmtp" and not ctx.sender:
        ctx.auto = "null envelope sender (a bounce or notification)"
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
        ctx.customer = Customer(email=address, name=ctx.parsed.from_name, verified=False, added_by="trusted")
        return Decision("create", f"unknown sender {address} trusted by rule")
    return None


def unknown_sender_policy(ctx: Context) -> Decision | None:
    """The department's policy for senders it does not know."""
    address = ctx.sender_address
    policy = ctx.department.unknown_sender if ctx.department else "hold"
    where = ctx.department.name if ctx.department else "no department"
    if challenges.blocked(ctx):
        return Decision("delete", f"sender {address} is blocked (held discard --block); the raw message is "
                                  "kept until `held purge`")
    if policy == "accept":
        ctx.customer = Customer(email=address, name=ctx.parsed.from_name, verified=False, added_by="accepted")
        return Decision("create", f"unknown sender {address} accepted ({where} accepts unknown senders)")
    if policy == "reject":
        return Decision("reject", f"unknown sender {address} rejected ({where} accepts only known customers)")
    if policy == "challenge":
        return challenge_or_hold(ctx)
    return Decision("hold", f"unknown sender {address} held for review ({where} holds unknown senders)")


def challenge_or_hold(ctx: Context) -> Decision:
    """Hold, and challenge the sender only when that is safe (the checks: ingest/challenges.py)."""
    ctx.challenge = challenges.plan(ctx)
    return Decision("hold", ctx.challenge.reason)


# The order of decisions, top to bottom.
CHAIN = (
    detect_loop,  # our own addresses coming back: ignore
    detect_auto_reply,  # RFC 3834, Precedence, List-Id, bounces: mark, never a new ticket
    apply_rules,  # the admin's processing rules: delete, assign, priority, tag, trust
    find_followup,  # In-Reply-To/References, or the subject reference from someone on the ticket
    sender_standing,  # known customer (or trusted by rule): a new ticket
    unknown_sender_policy,  # accept | reject | hold | challenge
)


def decide(ctx: Context) -> Decision:
    for step in CHAIN:
        decision = step(ctx)
        if decision:
            return decision
    raise AssertionError("unknown_sender_policy always decides")
