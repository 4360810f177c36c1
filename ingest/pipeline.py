"""The one entry both LMTP and the IMAP bridge call: record raw -> parse -> decide -> act.

Deliveries are written by a single writer that commits them in groups: each caller waits until
the commit that covers its message, so "delivered" always means "on disk", while many messages
share one fsync. Each message runs in its own savepoint, so one failing message fails alone.

The writer owns a thread. On SQLite it writes through the blocking sqlite3 driver there, so its
many small statements are not each a round trip through aiosqlite and the busy main loop
(measured: several times the throughput, see bench/); on PostgreSQL it runs asyncpg on an event
loop of its own. Either way the decisions are the same synchronous code (chain.py, tickets.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
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
    future: asyncio.Future  # of the caller's loop


class Pipeline:
    def __init__(self, db: Database, ticket_prefix: str = "Ticket"):
        self.db = db  # the caller's, for reads on the caller's loop
        self.ticket_prefix = ticket_prefix
        self.directory = directory.Directory()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the writer's
        self._callers: asyncio.AbstractEventLoop | None = None  # the loop that started us and calls deliver()
        self._queue: asyncio.Queue[_Job | None] | None = None

    async def start(self) -> None:
        self._callers = asyncio.get_running_loop()
        self.directory = await self.db.run(directory.load)
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._writer_main(ready),), name="pipeline-writer", daemon=True
        )
        self._thread.start()
        await asyncio.wrap_future(ready)

    async def stop(self) -> None:
        """Commit what is queued, then stop the writer and close its engine."""
        if self._thread:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def department_for(self, address: str) -> directory.DepartmentInfo | None:
        """The department owning an envelope recipient, re-reading the directory on a miss."""
        found = self.directory.department_for(address)
        if found is None:
            self.directory = await self.db.run(directory.refresh, self.directory)
            found = self.directory.department_for(address)
        return found

    async def deliver(self, delivery: Delivery, parsed: ParsedMessage | None = None) -> Outcome:
        """Store and process one delivery; returns once committed. Raises if it could not be stored."""
        if parsed is None:
            parsed = parse_message(delivery.raw)
        job = _Job(delivery, parsed, asyncio.get_running_loop().create_future())
        self._loop.call_soon_threadsafe(self._queue.put_nowait, job)
        return await job.future

    # --- the writer thread ---

    async def _writer_main(self, ready: concurrent.futures.Future) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        try:
            wdb = Database(self.db.url)
            sync_sessions = wdb.sync_sqlite_sessions() if wdb.is_sqlite else None
        except Exception as e:
            ready.set_exception(e)
            return
        ready.set_result(None)
        try:
            while True:
                jobs = [await self._queue.get()]
                while len(jobs) < MAX_BATCH and not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
                stopping = None in jobs
                jobs = [j for j in jobs if j is not None]
                if jobs:
                    await self._commit(wdb, sync_sessions, jobs)
                if stopping and self._queue.empty():
                    return
        finally:
            if sync_sessions:
                sync_sessions.kw["bind"].dispose()
            await wdb.dispose()

    async def _commit(self, wdb: Database, sync_sessions, jobs: list[_Job]) -> None:
        try:
            if sync_sessions:
                with sync_sessions() as session, session.begin():
                    results = self._process_all(session, jobs)
            else:
                results = await wdb.run(self._process_all, jobs, write=True)
        except Exception as e:  # the commit itself failed: nothing of this group is stored
            log.exception("commit of %d messages failed", len(jobs))
            results = [e] * len(jobs)
        # One wake-up of the callers' loop per group, not one per message.
        self._callers.call_soon_threadsafe(_answer, jobs, results)

    def _process_all(self, session, jobs: list[_Job]) -> list[Outcome | Exception]:
        """The whole group in one savepoint; if anything in it fails, again one message at a time."""
        self.directory = directory.refresh(session, self.directory)
        keys = [dedup_key(job.delivery, self.directory) for job in jobs]
        try:
            with session.begin_nested():
                seen = store.messages_by_key(session, keys)
                store.prefetch_customers(session, {chain.sender_address(j.parsed, j.delivery.sender) for j in jobs})
                stored = [self._process(session, job, key, seen) for job, key in zip(jobs, keys)]
                session.flush()
            return [outcome(m, reason) for m, reason in stored]
        except Exception:
            log.info("a message of a group of %d failed; storing them one by one", len(jobs))
            store.forget_customers(session)
        return [self._process_one(session, job, key) for job, key in zip(jobs, keys)]

    def _process_one(self, session, job: _Job, key: str) -> Outcome | Exception:
        try:
            with session.begin_nested():
                message, reason = self._process(session, job, key, store.messages_by_key(session, [key]))
                session.flush()
            return outcome(message, reason)
        except IntegrityError:
            # Another process committed the same delivery first: answer as it did.
            existing = store.messages_by_key(session, [key]).get(key)
            if existing:
                return outcome(existing, "already delivered")
            log.exception("storing message from %s failed", job.delivery.sender)
            return RuntimeError("integrity error")
        except Exception as e:
            log.exception("storing message from %s to %s failed", job.delivery.sender, job.delivery.recipient)
            return e

    def _process(self, session, job: _Job, key: str, seen: dict[str, Message]) -> tuple[Message, str]:
        """Record, decide and act on one delivery; returns the stored message and the reason."""
        if key in seen:
            return seen[key], "already delivered"
        d, parsed = job.delivery, job.parsed
        message = seen[key] = record(d, parsed, key)
        session.add(message)
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
        decision = chain.decide(ctx)
        tickets.act(ctx, message, decision)
        return message, decision.reason


def _answer(jobs: list[_Job], results: list[Outcome | Exception]) -> None:
    for job, result in zip(jobs, results):
        if job.future.done():
            continue  # the caller went away (connection lost); the MTA will retry and find it stored
        if isinstance(result, BaseException):
            job.future.set_exception(result)
        else:
            job.future.set_result(result)


def outcome(message: Message, reason: str) -> Outcome:
    return Outcome(message.status, message.ticket_id, reason, duplicate=reason == "already delivered")


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
        message_id=store.clean(parsed.message_id)[:998] if parsed.message_id else None,
        from_addr=store.clean(parsed.from_addr)[:320],
        from_name=store.clean(parsed.from_name),
        to_addrs=[store.clean(a) for a in parsed.to],
        cc_addrs=[store.clean(a) for a in parsed.cc],
        subject=store.clean(parsed.subject),
        date=parsed.date,
        text=store.clean(parsed.text),
        html=store.clean(parsed.html),
        raw=d.raw,
        sha256=key.split(":")[0],
        size=len(d.raw),
        source=d.source,
        source_key=d.source_key,
        envelope_sender=store.clean(d.sender),
        envelope_recipient=store.clean(d.recipient),
        attachments=[
            Attachment(
                filename=store.clean(a.filename),
                content_type=store.clean(a.content_type)[:200],
                size=a.size,
                sha256=a.sha256,
                content=a.content,
                content_id=store.clean(a.content_id)[:998] if a.content_id else None,
                inline=a.inline,
            )
            for a in parsed.attachments
        ],
        events=[],
    )
