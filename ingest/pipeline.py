"""The one entry both LMTP and the IMAP bridge call: record raw -> parse -> decide -> act.

Deliveries are written by one writer that commits them in groups: each caller waits until the
commit that covers its message, so "delivered" always means "on disk", while many messages share
one fsync. The writer (ingest/writer.py) is a child process fed over a pipe: its database work runs
on the second core instead of taking turns with the LMTP sessions for this interpreter's lock
(measured in bench/: see README, Performance). Tests of what the pipeline decides may run the same
writer on this loop instead (`in_process=True`).

Every delivery, stored or not, ends with one log line here (logger ticketmail.delivery), and is
counted by the optional `metrics` (web/metrics.py): this is where this process sees each outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import sys
import time

from ingest import writer_pipe
from ingest.delivery import Delivery, Outcome
from ingest.directory import Cache, DepartmentInfo, Directory
from ingest.parse import ParsedMessage
from ingest.writer import InProcessWriter
from storage.database import Database

log = logging.getLogger(__name__)
delivery_log = logging.getLogger("ticketmail.delivery")


class StorageError(RuntimeError):
    """The writer could not store a delivery (the LMTP answer is 451: the MTA retries)."""


class WriterProcess:
    """The writer as a child process (`python -m ingest.writer`), fed over a pipe (ingest/writer_pipe.py)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._from_writer: writer_pipe.Receiver | None = None
        self._sending = asyncio.Lock()  # one job's bytes at a time on the pipe

    async def start(self, settings: writer_pipe.Start) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest.writer", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._from_writer = writer_pipe.Receiver(self._proc.stdout)
        await writer_pipe.send(self._proc.stdin, settings)
        hello = await self._from_writer.read()
        if not isinstance(hello, writer_pipe.Ready):
            raise StorageError(f"the writer process could not start: {getattr(hello, 'reason', 'it exited')}")

    async def send(self, job: writer_pipe.Job) -> None:
        async with self._sending:
            await writer_pipe.send(self._proc.stdin, job)

    async def answers(self) -> writer_pipe.Answers | None:
        """The answers of the next committed group; None once the writer has exited."""
        return await self._from_writer.read()

    async def ended(self) -> str:
        return f"process died (exit code {await self._proc.wait()})"

    async def stop(self) -> None:
        """Let the writer commit what it was given, then wait for it to exit."""
        self._proc.stdin.close()
        await self._proc.wait()


class Pipeline:
    def __init__(self, db: Database, ticket_prefix: str = "Ticket", challenge=None, *, in_process: bool = False,
                 resubmission_days: int = 7, metrics=None):
        """in_process: the writer runs on this loop instead of in a process of its own (tests of what
        the pipeline decides; `serve` keeps the process). metrics: counts each delivery and commit
        (web/metrics.Metrics), or None."""
        self.db = db  # for reads on the caller's loop
        self.ticket_prefix = ticket_prefix
        self.challenge = challenge  # ingest.challenges.ChallengeSettings; None: the defaults
        self.resubmission_days = resubmission_days
        self._directory = Cache()
        self._writer: WriterProcess | InProcessWriter = InProcessWriter() if in_process else WriterProcess()
        self._running = False
        self._answers: asyncio.Task | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.failed = asyncio.Event()  # the writer died: nothing can be stored any more
        self.died = ""  # how it died
        self._stopping = False
        self.metrics = metrics
        self.directory_seconds = 5.0  # how stale the recipients' snapshot may be (see department_for)
        self._directory_checked = 0.0

    async def start(self) -> None:
        await self.db.run(self._directory.current)
        self._directory_checked = time.monotonic()
        await self._writer.start(writer_pipe.Start(self.db.url, self.ticket_prefix, self.challenge,
                                                   self.resubmission_days))
        self._running = True
        self._answers = asyncio.create_task(self._read_answers(), name="pipeline-answers")

    async def stop(self) -> None:
        """Let the writer commit what it was given, then wait for it to end."""
        if self._running:
            self._stopping = True
            await self._writer.stop()
            await self._answers
            self._running = False

    def trouble(self) -> str:
        """Why nothing can be delivered now ("" while the writer runs): for the health check."""
        if self.failed.is_set():
            return f"the writer {self.died}"
        if not self._running:
            return "not started"
        return "stopping" if self._stopping else ""

    @property
    def directory(self) -> Directory:
        """The snapshot `department_for` last read (the LMTP handler groups recipients by it)."""
        return self._directory.snapshot

    async def department_for(self, address: str) -> DepartmentInfo | None:
        """The department owning an envelope recipient. A recipient the snapshot does not know makes
        it check the revision (a department added since), and so does a snapshot older than
        `directory_seconds` (an address removed or moved since): checking it for every recipient would
        cost this process more than the rest of a delivery."""
        found = self.directory.department_for(address)
        if found is None or time.monotonic() - self._directory_checked > self.directory_seconds:
            found = (await self.db.run(self._directory.current)).department_for(address)
            self._directory_checked = time.monotonic()
        return found

    async def deliver(self, delivery: Delivery, parsed: ParsedMessage | None = None) -> Outcome:
        """Store and process one delivery; returns once committed. Raises if it could not be stored.

        Without `parsed`, the writer parses the message."""
        started = time.monotonic()
        try:
            outcome = await self._deliver(delivery, parsed)
        except Exception as e:
            self._delivered(delivery, parsed, e, time.monotonic() - started)
            raise
        self._delivered(delivery, parsed, outcome, time.monotonic() - started)
        return outcome

    async def _deliver(self, delivery: Delivery, parsed: ParsedMessage | None) -> Outcome:
        if self.failed.is_set():
            raise StorageError("the writer is not running")
        job_id = next(self._ids)
        answer = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        # Shielded: a job cut off half-way (its LMTP client went away) would garble the pipe.
        await asyncio.shield(self._writer.send(writer_pipe.Job(job_id, delivery, parsed)))
        return await answer

    def _delivered(self, d: Delivery, parsed: ParsedMessage | None, result: Outcome | Exception,
                   seconds: float) -> None:
        """The delivery's log line and its count. Every value from the mail is escaped by the log's
        formatter (ingest/logs.py), never pasted into the line's text."""
        stored = isinstance(result, Outcome)
        fields = {
            "source": d.source,
            "message_id": parsed.message_id if parsed else message_id_of(d.raw),
            "sender": d.sender,
            "recipients": [d.recipient, *d.also],
            "outcome": outcome_name(result),
            "ticket": result.ticket if stored else None,
            "reason": result.reason if stored else f"not stored: {result}",
            "ms": round(seconds * 1000, 1),
        }
        delivery_log.info("delivery", extra={"fields": fields})
        if self.metrics:
            self.metrics.delivered(d.source, fields["outcome"], seconds, result.step if stored else "")

    async def _read_answers(self) -> None:
        try:
            while (answers := await self._writer.answers()) is not None:
                if self.metrics:
                    self.metrics.committed(len(answers.answers))
                for a in answers.answers:
                    answer = self._waiting.pop(a.job_id)
                    if answer.done():
                        continue  # the caller went away (connection lost); the MTA retries and finds it stored
                    if a.outcome:
                        answer.set_result(a.outcome)
                    else:
                        answer.set_exception(StorageError(a.error))
            if not self._stopping:
                self.died = await self._writer.ended()
                log.critical("the pipeline's writer %s", self.died)
                self.failed.set()
        finally:
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(StorageError("the writer stopped"))
            self._waiting.clear()


def outcome_name(result: Outcome | BaseException) -> str:
    """What happened, in one word: the message's status, `duplicate` (the same delivery again),
    `resubmitted` (the same message again, ingest/resubmission.py), or `error` (not stored: retried)."""
    if not isinstance(result, Outcome):
        return "error"
    return result.repeat or result.status


_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def message_id_of(raw: bytes) -> str | None:
    """The Message-ID of a message nobody has parsed here (the writer parses large ones and IMAP's),
    read from its header section alone: for the log line, not for any decision.

    >>> message_id_of(b"Subject: x\\r\\nMessage-ID:\\r\\n <a@b.example>\\r\\n\\r\\nMessage-ID: <body@b.example>")
    'a@b.example'
    """
    end = raw.find(b"\n\r\n", 0, 65536)
    if end < 0:
        end = raw.find(b"\n\n", 0, 65536)
    head = raw[:65536] if end < 0 else raw[: end + 1]
    found = _MESSAGE_ID.search(head)
    if not found:
        return None
    value = re.sub(r"\s+", " ", found.group(1).decode("utf-8", "replace")).strip()
    inside = re.match(r"<([^>]*)>", value)  # as the parser gives it: without the angle brackets
    return (inside.group(1) if inside else value)[:998] or None
