"""The sweeper: a background task that ends what time ends.

Each round, in one transaction: waiting mail of senders who are verified customers by now is released
(a confirmation in another process raced it, or an admin added the customer) and their challenges are
closed; open challenges past their expiry become expired; mail of a challenge that ended unsent is given
up; held mail older than `held_days` is purged with an event (its log stays), or, with `keep_for_review`,
stops waiting for a confirmation and stays held for an admin.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from ingest.confirm import release_stragglers
from storage import challenge_store, store
from storage.database import Database
from storage.models import Message, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swept:
    expired: int  # challenges
    given_up: int  # unsent challenge mails
    released: int  # stragglers released
    purged: int  # held messages purged
    kept: int  # held messages kept for review


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


class Sweeper:
    def __init__(self, db: Database, *, held_days: int, keep_for_review: bool, ticket_prefix: str,
                 interval: float = 300.0):
        self.db = db
        self.options = {"held_days": held_days, "keep_for_review": keep_for_review, "ticket_prefix": ticket_prefix}
        self.interval = interval
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> Swept:
        swept = await self.db.run(partial(sweep, **self.options), utcnow(), write=True)
        if any(vars(swept).values()):
            log.info("sweeper: %s", swept)
        return swept

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the database is unreachable, say: try again next round
                log.exception("sweeper: a round failed")
            await asyncio.sleep(self.interval)
