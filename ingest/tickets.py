"""Carrying out a Decision: tickets created and appended, messages held, deleted or rejected."""

from __future__ import annotations

import dataclasses

from ingest import challenges
from ingest.chain import Context, Decision
from storage import store
from storage.models import Message, Ticket

STATUS = {"create": "ticket", "append": "followup", "hold": "held", "delete": "deleted",
          "reject": "rejected", "ignore": "ignored"}


def act(ctx: Context, message: Message, decision: Decision) -> None:
    """Apply `decision` to the stored `message` and log it, in the caller's transaction."""
    session = ctx.session
    message.status = STATUS[decision.action]
    message.department_id = ctx.department.id if ctx.department else None
    verdict = ctx.verdict
    if decision.action == "create":
        if ctx.customer.id is None:
            store.remember_customer(session, ctx.customer)
            ctx.note("customer", f"customer {ctx.customer.email} added ({ctx.customer.added_by})")
        message.ticket = Ticket(
            subject=ctx.parsed.subject or "(no subject)",
            department_id=message.department_id,
            customer=ctx.customer,
            priority=(verdict and verdict.priority) or "normal",
            tags=list(verdict.tags) if verdict else [],
        )
        where = ctx.department.name if ctx.department else "no department"
        ctx.note("ticket-created", f"new ticket in {where}: {decision.reason}")
    elif decision.action == "append":
        ticket = ctx.ticket
        message.ticket = ticket
        message.department_id = ticket.department_id
        if ctx.auto:
            message.status = "auto_reply"
            ctx.note("appended", f"automatic reply recorded on ticket #{ticket.id}; status unchanged")
        else:
            if ticket.status == "closed":
                ticket.status = "open"
                ctx.note("reopened", f"ticket #{ticket.id} reopened by a follow-up")
            if verdict and verdict.priority:
                ticket.priority = verdict.priority
            if verdict and verdict.tags:
                ticket.tags = list(dict.fromkeys([*ticket.tags, *verdict.tags]))
            ctx.note("appended", decision.reason)
        store.touch(ticket)
    else:
        if decision.action == "hold":
            message.verdict = dataclasses.asdict(verdict) if verdict else None  # for its release
            challenges.carry_out(ctx, message)  # the challenge and its mail, in this transaction
        ctx.note(decision.action if decision.action != "hold" else "held", decision.reason)
    for kind, detail in ctx.events:
        store.add_event(session, message, kind, detail)
