"""The one entry both LMTP and the IMAP bridge call: record raw -> parse -> decide -> act.

Deliveries are written by a single writer task that commits them in groups: each caller waits
until the commit that covers its message, so "delivered" always means "on disk", while many
messages share one fsync. Each message runs in its own savepoint, so one failing message fails
alone.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from ingest import chain, directory, tickets
from ingest.parse import ParsedMessage, parse_message
from storage import store
from storage.database import Database
from storage.models import Attachment, Message

log = logging.getLogger(__name__)

MAX_BATCH = 200


@dataclass(frozen=True)
class Delivery:
    raw: bytes
    sender: str  # envelope sender, "" for the null sender
    recipient: str  # envelope recipient (IMAP: the account's address)
    source: str = "lmtp"  # lmtp | imap:NAME
    source_key: str = ""  # IMAP: "UIDVALIDITY/UID"
    department: str | None = None  # None: the department that owns `recipient`
    account: str = ""


@dataclass(frozen=True)
class Outcome:
    status: str  # ticket | followup | auto_reply | held | deleted | rejected | ignored
    ticket: int | None
    reason: str
    duplicate: bool = False


@dataclass
class _Job:
    delivery: Delivery
    parsed: ParsedMessage
    future: asyncio.Future


class Pipeline:
    def __init__(self, db: Database, ticket_prefix: str = "Ticket"):
        self.db = db
        self.ticket_prefix = ticket_prefix
        self.directory = directory.Directory()
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._writer: asyncio.Task | None = None

    async def start(self) -> None:
        async with self.db.session() as session:
            self.directory = await directory.load(session)
        self._writer = asyncio.create_task(self._write_loop(), name="pipeline-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop the writer."""
        if self._writer:
            await self._queue.join()
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None

    async def department_for(self, address: str) -> directory.DepartmentInfo | None:
        """The department owning an envelope recipient, re-reading the directory on a miss."""
        found = self.directory.department_for(address)
        if found is None:
            async with self.db.session() as session:
                self.directory = await directory.refresh(session, self.directory)
            found = self.directory.department_for(address)
        return found

    async def deliver(self, delivery: Delivery, parsed: ParsedMessage | None = None) -> Outcome:
        """Store and process one delivery; returns once committed. Raises if it could not be stored."""
        if parsed is None:
            parsed = parse_message(delivery.raw)
        job = _Job(delivery, parsed, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.future

    async def _write_loop(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < MAX_BATCH and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            try:
                await self._commit(jobs)
            finally:
                for _ in jobs:
                    self._queue.task_done()

    async def _commit(self, jobs: list[_Job]) -> None:
        results: list[Outcome | BaseException] = []
        try:
            async with self.db.writer() as session, session.begin():
                self.directory = await directory.refresh(session, self.directory)
                for job in jobs:
                    results.append(await self._process_one(session, job))
        except Exception as e:  # the commit itself failed: nothing of this batch is stored
            log.exception("commit of %d messages failed", len(jobs))
            results = [e] * len(jobs)
        for job, result in zip(jobs, results):
            if job.future.done():
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)

    async def _process_one(self, session, job: _Job) -> Outcome | BaseException:
        key = dedup_key(job.delivery, self.directory)
        try:
            async with session.begin_nested():
                return await self._process(session, job, key)
        except IntegrityError:
            # Another process committed the same delivery first: answer as it did.
            existing = await store.message_by_key(session, key)
            if existing:
                return Outcome(existing.status, existing.ticket_id, "already delivered", duplicate=True)
            log.exception("storing message from %s failed", job.delivery.sender)
            return RuntimeError("integrity error")
        except Exception as e:
            log.exception("storing message from %s to %s failed", job.delivery.sender, job.delivery.recipient)
            return e

    async def _process(self, session, job: _Job, key: str) -> Outcome:
        d, parsed = job.delivery, job.parsed
        existing = await store.message_by_key(session, key)
        if existing:
            return Outcome(existing.status, existing.ticket_id, "already delivered", duplicate=True)
        message = record(d, parsed, key)
        session.add(message)
        await session.flush()
        ctx = chain.Context(
            session=session,
            directory=self.directory,
            parsed=parsed,
            sender=d.sender,
            recipient=d.recipient,
            source=d.source,
            account=d.account,
            ticket_prefix=self.ticket_prefix,
            department=self.directory.department(d.department) or self.directory.department_for(d.recipient),
        )
        for warning in parsed.warnings:
            ctx.note("parse-warning", warning)
        decision = await chain.decide(ctx)
        await tickets.act(ctx, message, decision)
        await session.flush()
        return Outcome(message.status, message.ticket_id, decision.reason)


def dedup_key(delivery: Delivery, directory_: directory.Directory) -> str:
    """Same bytes for the same department are the same delivery (an MTA retry, an IMAP re-fetch)."""
    digest = hashlib.sha256(delivery.raw).hexdigest()
    dept = directory_.department(delivery.department) or directory_.department_for(delivery.recipient)
    return f"{digest}:{dept.id if dept else delivery.recipient.lower()}"


def record(d: Delivery, parsed: ParsedMessage, key: str) -> Message:
    """The stored form of a delivery: raw bytes byte-exact, plus what parsing found."""
    return Message(
        dedup_key=key,
        status="new",
        message_id=(parsed.message_id or None) and parsed.message_id[:998],
        from_addr=parsed.from_addr[:320],
        from_name=parsed.from_name,
        to_addrs=parsed.to,
        cc_addrs=parsed.cc,
        subject=parsed.subject,
        date=parsed.date,
        text=parsed.text,
        html=parsed.html,
        raw=d.raw,
        sha256=key.split(":")[0],
        size=len(d.raw),
        source=d.source,
        source_key=d.source_key,
        envelope_sender=d.sender,
        envelope_recipient=d.recipient,
        attachments=[
            Attachment(
                filename=a.filename,
                content_type=a.content_type[:200],
                size=a.size,
                sha256=a.sha256,
                content=a.content,
                content_id=a.content_id,
                inline=a.inline,
            )
            for a in parsed.attachments
        ],
        events=[],
    )
