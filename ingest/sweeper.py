"""The sweeper: a background task that ends what time ends.

Each round, in one transaction: waiting mail of senders who are verified customers by now is released
(a confirmation in another process raced it, or an admin added the customer) and their challenges are
closed; open challenges past their expiry become expired; mail of a challenge that ended unsent is given
up; held mail older than `held_days` is purged with an event (its log stays), or, with `keep_for_review`,
stops waiting for a confirmation and stays held for an admin.

Then, in a transaction of its own, mail a rate cap held without a challenge gets one while the budget
allows (`challenge_capped`): authenticated senders first, oldest first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy.exc import IntegrityError

from ingest import challenges, directory
from ingest.challenges import ChallengeSettings
from ingest.confirm import release_stragglers
from ingest.periodic import Periodic
from ingest.release import stored_context
from storage import challenge_store, store
from storage.challenge_store import RecentChallenges
from storage.database import Database
from storage.models import ChallengeWait, Message, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    expired: int  # challenges
    given_up: int  # unsent challenge mails
    released: int  # stragglers released
    purged: int  # held messages purged
    kept: int  # held messages kept for review
    challenged: int = 0  # capped mail challenged now that the budget allows


def purge(session, message: Message, days: int) -> None:
    """Drop the content of held mail, keep the record (as `ticketmail held purge`)."""
    was = message.status
    message.status, message.raw, message.text, message.html, message.attachments = "purged", b"", "", "", []
    store.add_event(session, message, "purged", f"{was} message purged after {days} days; the log entry remains")


def sweep(session, now: datetime, *, held_days: int, keep_for_review: bool, ticket_prefix: str) -> Swept:
    released = release_stragglers(session, ticket_prefix=ticket_prefix)
    expired = challenge_store.expire_challenges(session, now)
    given_up = challenge_store.abandon_unsent(session, now)
    before = now - timedelta(days=held_days)
    purged = kept = 0
    if keep_for_review:
        overdue = challenge_store.overdue_waits(session, before)
        for message in overdue:
            store.add_event(session, message, "kept-for-review",
                            f"not confirmed within {held_days} days; kept for review (keep_for_review = true)")
        challenge_store.drop_waits(session, [m.id for m in overdue])
        kept = len(overdue)
    else:
        old = store.expired_messages(session, ("held",), before)
        for message in old:
            purge(session, message, held_days)
        challenge_store.drop_waits(session, [m.id for m in old])
        purged = len(old)
    return Swept(expired, given_up, released, purged, kept)


# How many capped messages one round looks at: the budget, not this, is what limits the challenges.
DRAIN_BATCH = 500


def challenge_capped(session, now: datetime, *, settings: ChallengeSettings, ticket_prefix: str,
                     limit: int = DRAIN_BATCH) -> int:
    """Challenge mail a rate cap held, authenticated senders first, oldest first, while the budget
    allows; returns how many challenges were opened (each with its outbox mail, as the pipeline does).

    Drains in several processes take turns (`lock_budget`); a delivery challenging the same mailbox at
    the same moment loses to, or wins over, this one at the unique index of open challenges."""
    challenge_store.lock_budget(session)
    snapshot, opened = None, 0
    for wait, received_at in challenge_store.capped_waits(session, limit):
        if challenge_store.challenged_since(session, wait.mailbox, received_at):
            uncap(session, wait, f"{wait.mailbox} was challenged after this message arrived; confirming that "
                                 "releases it")
            continue
        recent = challenge_store.recent_challenges(session, wait.mailbox, challenges.cap_domain(wait.mailbox), now)
        if budget_spent(recent, settings, wait.authenticated):
            break  # authenticated senders come first: whoever follows does not fit either
        if challenges.over_cap(recent, settings, wait.authenticated):
            continue  # this mailbox or domain has had its share; the next one may not
        snapshot = snapshot or directory.load(session)
        ctx = stored_context(session, session.get(Message, wait.message_id), ticket_prefix=ticket_prefix,
                             snapshot=snapshot, settings=settings)
        if why := no_longer_challenged(session, ctx, wait):
            uncap(session, wait, why)
            continue
        opened += open_later(session, ctx, wait)
    return opened


def uncap(session, wait: ChallengeWait, why: str) -> None:
    """The message stops waiting for the budget (it still waits for a confirmation of its mailbox)."""
    wait.capped = False
    store.add_event(session, session.get(Message, wait.message_id), "no-challenge", f"no later challenge: {why}")


def budget_spent(recent: RecentChallenges, settings: ChallengeSettings, authenticated: bool) -> bool:
    """Whether the hour's budget of this kind of sender is used up (as opposed to one mailbox's or domain's)."""
    if not authenticated and recent.unauthenticated_hour >= settings.unauthenticated_hourly:
        return True
    return recent.total_hour >= settings.total_hourly


def no_longer_challenged(session, ctx, wait: ChallengeWait) -> str | None:
    """Why held mail waiting for the budget should not be challenged after all, or None."""
    if ctx.department is None or ctx.department.unknown_sender != "challenge":
        return "its department no longer challenges unknown senders"
    if challenge_store.is_blocked(session, wait.sender):
        return f"{wait.sender} is blocked"
    if store.customer_by_email(session, wait.sender) is not None:
        return f"{wait.sender} is a customer now"
    if challenges.from_address(ctx) is None:
        return f"{ctx.department.name} has no address of its own to send one from"
    return None


def open_later(session, ctx, wait: ChallengeWait) -> int:
    """Open the challenge of one capped message in a savepoint; 1 if it was opened, else 0."""
    message = session.get(Message, wait.message_id)
    try:
        with session.begin_nested():
            challenge = challenges.open_challenge(ctx, message, authenticated=wait.authenticated)
            session.flush()
    except IntegrityError:  # a delivery in another process opened one for this mailbox just now: the next
        return 0  # round sees it and stops this message's wait for the budget
    wait.capped, wait.challenge = False, challenge
    for kind, detail in ctx.events:
        store.add_event(session, message, kind, detail)
    return int(challenge is not None)


class Sweeper(Periodic):
    """A sweep and a drain of the capped mail every `interval` seconds."""

    name = "sweeper"

    def __init__(self, db: Database, *, held_days: int, keep_for_review: bool, ticket_prefix: str,
                 challenge: ChallengeSettings, interval: float = 300.0):
        self.db = db
        self.options = {"held_days": held_days, "keep_for_review": keep_for_review, "ticket_prefix": ticket_prefix}
        self.drain = {"settings": challenge, "ticket_prefix": ticket_prefix}
        self.interval = interval

    async def run_once(self) -> Swept:
        swept = await self.db.run(partial(sweep, **self.options), utcnow(), write=True)
        challenged = await self.db.run(partial(challenge_capped, **self.drain), utcnow(), write=True)
        swept = replace(swept, challenged=challenged)
        if any(vars(swept).values()):
            log.info("sweeper: %s", swept)
        return swept
