"""The pipeline's writer: `python -m ingest.writer`, a process started by ingest/pipeline.py.

It reads jobs (deliveries) from stdin (ingest/writer_pipe.py) and commits whatever has arrived as one
group: the whole group in one savepoint, or, if anything in it fails, one message at a time, so a bad
message fails alone: stored as `failed` with its error if deciding or acting on it raised (the MTA gets
its 250 once that is committed), answered as a storage failure (451) if the database refused it. It
answers each group with one message on stdout. On SQLite it writes through the blocking sqlite3 driver
(through aiosqlite every statement would be a round trip through a second thread); on PostgreSQL
through asyncpg. Signals are ignored: the parent stops it by closing stdin.
`InProcessWriter` runs the same writer on the caller's loop, for tests of what the pipeline decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ingest import chain, logs, resubmission, tickets, writer_pipe
from ingest.delivery import Delivery, Outcome
from ingest.directory import Cache, Directory
from ingest.parse import ParsedMessage, parse_message
from ingest.writer_pipe import Answer, Answers, Failed, Job, Ready, Start
from storage import store
from storage.database import Database
from storage.models import Attachment, Message, utcnow

log = logging.getLogger("ticketmail.writer")


class Inbox:
    """Jobs waiting to be committed, and whether one is still on its way through the pipe."""

    def __init__(self, receiver: writer_pipe.Receiver | None = None):
        self.receiver, self.jobs = receiver, asyncio.Queue()

    def put(self, job: Job | None) -> None:
        """A job to commit; None: there will be no more."""
        self.jobs.put_nowait(job)

    async def receive(self) -> None:
        """Read jobs until the parent closes the pipe; then a None."""
        while (job := await self.receiver.read()) is not None:
            self.put(job)
        self.put(None)

    @property
    def arriving(self) -> bool:
        return self.receiver is not None and self.receiver.arriving

    async def group(self) -> list[Job] | None:
        """The jobs that have arrived, waiting for one still on its way while the group is small;
        None once the inbox is closed and every job has been handed out."""
        first = await self.jobs.get()
        if first is None:
            return None
        group, size = [first], len(first.delivery.raw)
        while not self.jobs.empty() or (self.arriving and size < GROUP_BYTES):
            job = await self.jobs.get()
            if job is None:
                self.put(None)  # for the next call
                break
            group.append(job)
            size += len(job.delivery.raw)
        return group


class Writer:
    def __init__(self, url: str, ticket_prefix: str, challenge, *, own_loop: bool = True, resubmission_days: int = 7):
        """own_loop: nothing else runs on this loop (the writer process), so the blocking SQLite
        driver may run on it; beside other tasks it runs in a thread, or a transaction of theirs on
        the same file would wait for the writer while the writer waited for it."""
        self.db = Database(url)
        self.own_loop = own_loop
        self.sync_sessions = self.db.sync_sqlite_sessions() if self.db.is_sqlite else None
        self.ticket_prefix = ticket_prefix
        self.challenge = challenge
        self.resubmission_window = timedelta(days=resubmission_days)
        self._directory = Cache()

    @property
    def directory(self) -> Directory:
        """The snapshot read for the group being committed."""
        return self._directory.snapshot

    async def close(self) -> None:
        if self.sync_sessions:
            self.sync_sessions.kw["bind"].dispose()
        await self.db.dispose()

    async def commit(self, jobs: list[Job]) -> list[Answer]:
        """Store a group of jobs; an outcome, or the reason of the failure, for each."""
        jobs = [dataclasses.replace(job, parsed=parse_message(job.delivery.raw)) if job.parsed is None else job
                for job in jobs]
        try:
            if self.sync_sessions and self.own_loop:
                results = self._commit_sqlite(jobs)
            elif self.sync_sessions:
                results = await asyncio.to_thread(self._commit_sqlite, jobs)
            else:
                results = await self.db.run(self._process_all, jobs, write=True)
        except Exception as e:  # the commit itself failed: nothing of this group is stored
            log.exception("commit of %d messages failed", len(jobs))
            results = [e] * len(jobs)
        return [Answer(job.id, r) if isinstance(r, Outcome) else
                Answer(job.id, error=f"{type(r).__name__}: {r}".splitlines()[0]) for job, r in zip(jobs, results)]

    def _commit_sqlite(self, jobs: list[Job]) -> list[Outcome | Exception]:
        with self.sync_sessions() as session, session.begin():
            return self._process_all(session, jobs)

    def _process_all(self, session, jobs: list[Job]) -> list[Outcome | Exception]:
        """The whole group in one savepoint; if anything in it fails, again one message at a time."""
        self._directory.current(session)
        keys = [dedup_key(job.delivery, self.directory) for job in jobs]
        again = [self._resubmission_key(job) for job in jobs]
        try:
            with session.begin_nested():
                seen = store.messages_by_key(session, keys)
                first = self._firsts(session, again)
                store.prefetch_customers(session, {chain.sender_address(j.parsed, j.delivery.sender) for j in jobs})
                stored = [self._process(session, job, key, seen, resubmitted, first)
                          for job, key, resubmitted in zip(jobs, keys, again)]
                session.flush()
                store.write_deferred_blobs(session)
            return [outcome(*result) for result in stored]
        except Exception:
            log.info("a message of a group of %d failed; storing them one by one", len(jobs))
            store.forget_customers(session)
        return [self._process_one(session, job, key, resubmitted) for job, key, resubmitted in zip(jobs, keys, again)]

    def _process_one(self, session, job: Job, key: str, resubmitted: str | None) -> Outcome | Exception:
        for attempt in (1, 2):
            session.info.pop("blobs", None)  # of the failed attempt before
            try:
                with session.begin_nested():
                    stored = self._process(session, job, key, store.messages_by_key(session, [key]), resubmitted,
                                           self._firsts(session, [resubmitted]))
                    session.flush()
                    store.write_deferred_blobs(session)
                return outcome(*stored)
            except IntegrityError:
                if attempt == 1:  # another process committed the same delivery, or the same message, first:
                    continue      # once more, to answer as it did
                log.exception("storing message from %s failed", job.delivery.sender)
                return RuntimeError("integrity error")
            except Exception as e:
                if isinstance(e, DBAPIError) and not refused_for_its_values(e):  # gone, full, locked: 451
                    log.exception("storing message from %s to %s failed", job.delivery.sender, job.delivery.recipient)
                    return e
                return self._store_failed(session, job, key, e)

    def _store_failed(self, session, job: Job, key: str, error: Exception) -> Outcome | Exception:
        """Deciding or acting on this message raised: keep it byte-exact as `failed`, its error in its event
        log, for an admin to retry (ticketmail/admin/failed.py). Answering 451 instead would have the MTA
        offer it again for days, and fail each time. If even this cannot be stored, the database is at
        fault: the error goes back (451), as for any other storage failure."""
        d, what = job.delivery, failure(error)
        session.info.pop("blobs", None)
        store.forget_customers(session)  # it may hold a customer of the rolled-back attempt
        try:
            with session.begin_nested():
                message = record(d, job.parsed, key)
                message.status = "failed"
                dept = self._department(d)
                message.department_id = dept.id if dept else None
                session.add(message)
                store.defer_large_blob(session, message, "raw", d.raw)
                for attachment in message.attachments:
                    store.defer_large_blob(session, attachment, "content", attachment.content)
                store.add_event(session, message, "failed", f"processing failed: {what}; the message is kept as it "
                                                            "arrived, for an admin to retry")
                session.flush()
                store.write_deferred_blobs(session)
        except Exception:
            log.exception("storing message from %s to %s failed", d.sender, d.recipient)
            return error
        # Where in our code it failed, without the exception's text (which may quote the mail) beyond `what`.
        log.error("processing message %d from %r to %r failed, stored as failed: %r\n%s", message.id, d.sender,
                  d.recipient, what, "".join(traceback.format_tb(error.__traceback__)).rstrip())
        return Outcome("failed", None, "processing failed; stored for an admin to retry")

    def _department(self, d: Delivery):
        return self.directory.department_of(d)

    def _resubmission_key(self, job: Job) -> str | None:
        if not self.resubmission_window:
            return None
        dept = self._department(job.delivery)
        message_id = store.clean(job.parsed.message_id)[:998] if job.parsed.message_id else None
        return resubmission.key(job.delivery.raw, message_id, dept.id if dept else None)

    def _firsts(self, session, keys: list[str | None]) -> dict[str, Message]:
        """The stored messages that the messages of these resubmission keys would repeat, in the window."""
        keys = [key for key in keys if key]
        return store.messages_by_resubmission_key(session, keys, utcnow() - self.resubmission_window) if keys else {}

    @staticmethod
    def _again(session, copy: Message, first: Message) -> None:
        """Keep `copy` (its bytes, not a ticket of its own) and record on both that it is `first` again."""
        copy.status, copy.department_id, copy.attachments = "resubmitted", first.department_id, []
        if first.id is None:  # the first is of this same group
            session.flush()
        store.add_event(session, copy, "resubmitted", f"the same message as message {first.id}")
        store.add_event(session, first, "resubmitted", f"same message again, via {copy.source} from "
                        f"{copy.envelope_sender or '<>'} to {copy.envelope_recipient}")

    def _process(self, session, job: Job, key: str, seen: dict[str, Message], resubmitted: str | None,
                 first: dict[str, Message]) -> tuple:
        """Record, decide and act on one delivery; returns the stored message, the reason, whether it had
        been stored before ("duplicate": the same delivery, "resubmitted": the same message; else ""), and
        which step decided (when one did)."""
        if key in seen:
            return seen[key], "already delivered", "duplicate"
        d, parsed = job.delivery, job.parsed
        message = seen[key] = record(d, parsed, key)
        session.add(message)
        store.defer_large_blob(session, message, "raw", d.raw)
        if resubmitted in first:
            self._again(session, message, first[resubmitted])
            return first[resubmitted], "same message again", "resubmitted"
        if resubmitted:
            message.resubmission_key, first[resubmitted] = resubmitted, message
        for attachment in message.attachments:
            store.defer_large_blob(session, attachment, "content", attachment.content)
        ctx = chain.delivery_context(session, self.directory, d, parsed, ticket_prefix=self.ticket_prefix,
                                     settings=self.challenge)
        decision = chain.decide(ctx)
        tickets.act(ctx, message, decision)
        return message, decision.reason, "", decision.step


def failure(error: BaseException) -> str:
    """An error in one line for a message's event log: its type and the first line of its text."""
    text = str(error).strip().splitlines()
    return store.clean(f"{type(error).__name__}: {text[0]}" if text else type(error).__name__)[:500]


def outcome(message: Message, reason: str, repeat: str = "", step: str = "") -> Outcome:
    return Outcome(message.status, message.ticket_id, reason, repeat, step)


def dedup_key(delivery: Delivery, directory: Directory) -> str:
    """Same bytes for the same department are the same delivery (an MTA retry, an IMAP re-fetch)."""
    digest = hashlib.sha256(delivery.raw).hexdigest()
    dept = directory.department_of(delivery)
    if dept:
        return f"{digest}:{dept.id}"
    recipient = delivery.recipient.lower()  # no department: an IMAP account's address, or one just removed
    if len(recipient) > 200 - 65:  # what messages.dedup_key holds beside the digest
        recipient = "sha256:" + hashlib.sha256(recipient.encode(errors="replace")).hexdigest()
    return f"{digest}:{recipient}"


def refused_for_its_values(error: DBAPIError) -> bool:
    """The database refused a value this message brought (PostgreSQL's class 22, data exception: a value too
    long, malformed text), not because of its own state: kept as failed it can be stored, and answering 451
    would have the MTA offer it again for days, refused each time."""
    return isinstance(error, DataError) or str(getattr(error.orig, "sqlstate", "") or "").startswith("22")


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
        envelope_sender=store.clean(d.sender)[:320],  # IMAP's comes from the mail (Return-Path, From)
        envelope_recipient=store.clean(d.recipient)[:320],
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


# A group waits for a message still arriving through the pipe, up to this many bytes in all:
# without it, large messages (which fill the pipe) would each be committed alone.
GROUP_BYTES = 16 * 1024 * 1024


async def commit_groups(writer: Writer, inbox: Inbox, answer: Callable[[Answers], None]) -> None:
    """Commit all that arrived while the last group was committing, until the inbox is closed."""
    while (jobs := await inbox.group()) is not None:
        answer(Answers(await writer.commit(jobs)))


class InProcessWriter:
    """The same writer as a task of the caller's loop, behind the interface of the writer process
    (ingest/pipeline.py's WriterProcess), for tests of what the pipeline decides."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self._answers: asyncio.Queue[Answers | None] = asyncio.Queue()
        self._writer: Writer | None = None
        self._task: asyncio.Task | None = None

    async def start(self, settings: Start) -> None:
        self._writer = Writer(settings.url, settings.ticket_prefix, settings.challenge, own_loop=False,
                              resubmission_days=settings.resubmission_days)
        self._task = asyncio.create_task(self._commit_groups(), name="in-process-writer")

    async def _commit_groups(self) -> None:
        try:
            await commit_groups(self._writer, self.inbox, self._answers.put_nowait)
        finally:
            self._answers.put_nowait(None)

    async def send(self, job: Job) -> None:
        self.inbox.put(job)

    async def answers(self) -> Answers | None:
        """The answers of the next committed group; None once the writer has ended."""
        return await self._answers.get()

    async def ended(self) -> str:
        try:
            await self._task
        except Exception as e:
            return f"task failed: {e!r}"
        return "task ended"

    async def stop(self) -> None:
        """Let the writer commit what it was given, then close it."""
        self.inbox.put(None)
        try:
            await self._task
        finally:
            await self._writer.close()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer
    receiver = writer_pipe.Receiver(reader)
    start: Start = await receiver.read()
    try:
        writer = Writer(start.url, start.ticket_prefix, start.challenge, resubmission_days=start.resubmission_days)
    except Exception as e:
        writer_pipe.write(out, Failed(f"{type(e).__name__}: {e}"))
        return
    writer_pipe.write(out, Ready())
    inbox = Inbox(receiver)
    receiving = asyncio.create_task(inbox.receive())
    try:
        await commit_groups(writer, inbox, lambda answers: writer_pipe.write(out, answers))
        await receiving
    finally:
        await writer.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    repeated = logs.setup()
    try:
        asyncio.run(serve())
    finally:
        repeated.flush()


if __name__ == "__main__":
    main()
