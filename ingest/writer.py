"""The pipeline's writer process: `python -m ingest.writer`, started by ingest/pipeline.py.

It reads pickled deliveries from stdin and commits whatever has arrived as one group: the whole
group in one savepoint, or, if anything in it fails, one message at a time, so a bad message fails
alone. It answers each group with one frame on stdout. On SQLite it writes through the blocking
sqlite3 driver (through aiosqlite every statement would be a round trip through a second thread);
on PostgreSQL through asyncpg. Signals are ignored: the parent stops it by closing stdin.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import sys

from sqlalchemy.exc import IntegrityError

from ingest import chain, directory, logs, tickets
from ingest.parse import parse_message
from ingest.pipeline import LENGTH, Outcome, dedup_key, frame, outcome, read_frame, record
from storage import store
from storage.database import Database
from storage.models import Message

log = logging.getLogger("ticketmail.writer")

def _frames(buffer: bytearray) -> list:
    """Take every complete frame off the front of `buffer`."""
    found = []
    while len(buffer) >= LENGTH.size:
        (length,) = LENGTH.unpack_from(buffer)
        if len(buffer) < LENGTH.size + length:
            break
        found.append(pickle.loads(buffer[LENGTH.size : LENGTH.size + length]))
        del buffer[: LENGTH.size + length]
    return found


class Writer:
    def __init__(self, url: str, ticket_prefix: str, challenge):
        self.db = Database(url)
        self.sync_sessions = self.db.sync_sqlite_sessions() if self.db.is_sqlite else None
        self.ticket_prefix = ticket_prefix
        self.challenge = challenge
        self.directory = directory.Directory()

    async def close(self) -> None:
        if self.sync_sessions:
            self.sync_sessions.kw["bind"].dispose()
        await self.db.dispose()

    async def commit(self, jobs: list) -> list[tuple[int, Outcome | str]]:
        """Store a group of (id, delivery, parsed); an outcome, or the reason of the failure, for each."""
        jobs = [(i, d, parse_message(d.raw) if p is None else p) for i, d, p in jobs]
        try:
            if self.sync_sessions:
                with self.sync_sessions() as session, session.begin():
                    results = self._process_all(session, jobs)
            else:
                results = await self.db.run(self._process_all, jobs, write=True)
        except Exception as e:  # the commit itself failed: nothing of this group is stored
            log.exception("commit of %d messages failed", len(jobs))
            results = [e] * len(jobs)
        return [(job[0], r if isinstance(r, Outcome) else f"{type(r).__name__}: {r}".splitlines()[0])
                for job, r in zip(jobs, results)]

    def _process_all(self, session, jobs: list) -> list[Outcome | Exception]:
        """The whole group in one savepoint; if anything in it fails, again one message at a time."""
        self.directory = directory.refresh(session, self.directory)
        keys = [dedup_key(job[1], self.directory) for job in jobs]
        try:
            with session.begin_nested():
                seen = store.messages_by_key(session, keys)
                store.prefetch_customers(session, {chain.sender_address(j[2], j[1].sender) for j in jobs})
                stored = [self._process(session, job, key, seen) for job, key in zip(jobs, keys)]
                session.flush()
            return [outcome(*result) for result in stored]
        except Exception:
            log.info("a message of a group of %d failed; storing them one by one", len(jobs))
            store.forget_customers(session)
        return [self._process_one(session, job, key) for job, key in zip(jobs, keys)]

    def _process_one(self, session, job, key: str) -> Outcome | Exception:
        try:
            with session.begin_nested():
                stored = self._process(session, job, key, store.messages_by_key(session, [key]))
                session.flush()
            return outcome(*stored)
        except IntegrityError:
            # Another process committed the same delivery first: answer as it did.
            existing = store.messages_by_key(session, [key]).get(key)
            if existing:
                return outcome(existing, "already delivered", duplicate=True)
            log.exception("storing message from %s failed", job[1].sender)
            return RuntimeError("integrity error")
        except Exception as e:
            log.exception("storing message from %s to %s failed", job[1].sender, job[1].recipient)
            return e

    def _process(self, session, job, key: str, seen: dict[str, Message]) -> tuple[Message, str, bool]:
        """Record, decide and act on one delivery; returns the stored message, the reason, and
        whether it had been stored before."""
        if key in seen:
            return seen[key], "already delivered", True
        _, d, parsed = job
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
            settings=self.challenge,
        )
        for warning in parsed.warnings:
            ctx.note("parse-warning", warning)
        decision = chain.decide(ctx)
        tickets.act(ctx, message, decision)
        return message, decision.reason, False


# A group waits for a message still arriving through the pipe, up to this many bytes in all:
# without it, large messages (which fill the pipe) would each be committed alone.
GROUP_BYTES = 16 * 1024 * 1024


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**31)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    out = sys.stdout.buffer
    url, ticket_prefix, challenge = await read_frame(reader)
    try:
        writer = Writer(url, ticket_prefix, challenge)
    except Exception as e:
        out.write(frame(f"{type(e).__name__}: {e}")) or out.flush()
        return
    out.write(frame("ready"))
    out.flush()
    pending, jobs = bytearray(), []
    try:
        while chunk := await reader.read(1 << 20):
            pending += chunk
            jobs += _frames(pending)
            if pending and len(pending) + sum(len(j[1].raw) for j in jobs) < GROUP_BYTES:
                continue  # a message is still on its way through the pipe: it joins this group
            if jobs:  # all that arrived while the last group was committing
                out.write(frame(await writer.commit(jobs)))
                out.flush()
                jobs = []
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
