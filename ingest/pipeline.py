"""The one entry both LMTP and the IMAP bridge call: record raw -> parse -> decide -> act.

Deliveries are written by one writer that commits them in groups: each caller waits until the
commit that covers its message, so "delivered" always means "on disk", while many messages share
one fsync. The writer is a child process (ingest/writer.py) fed over a pipe: its database work runs
on the second core instead of taking turns with the LMTP sessions for this interpreter's lock
(measured in bench/: see README, Performance).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys

from ingest import writer_pipe
from ingest.delivery import Delivery, Outcome
from ingest.directory import Cache, DepartmentInfo, Directory
from ingest.parse import ParsedMessage
from storage.database import Database

log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """The writer could not store a delivery (the LMTP answer is 451: the MTA retries)."""


class Pipeline:
    def __init__(self, db: Database, ticket_prefix: str = "Ticket", challenge=None):
        self.db = db  # for reads on the caller's loop
        self.ticket_prefix = ticket_prefix
        self.challenge = challenge  # ingest.challenges.ChallengeSettings; None: the defaults
        self._directory = Cache()
        self._proc: asyncio.subprocess.Process | None = None
        self._from_writer: writer_pipe.Receiver | None = None
        self._answers: asyncio.Task | None = None
        self._waiting: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.failed = asyncio.Event()  # the writer process died: nothing can be stored any more
        self._stopping = False
        self._sending = asyncio.Lock()  # one job's bytes at a time on the pipe

    async def start(self) -> None:
        await self.db.run(self._directory.current)
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ingest.writer", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        self._from_writer = writer_pipe.Receiver(self._proc.stdout)
        await writer_pipe.send(self._proc.stdin, writer_pipe.Start(self.db.url, self.ticket_prefix, self.challenge))
        hello = await self._from_writer.read()
        if not isinstance(hello, writer_pipe.Ready):
            raise StorageError(f"the writer process could not start: {getattr(hello, 'reason', 'it exited')}")
        self._answers = asyncio.create_task(self._read_answers(), name="pipeline-answers")

    async def stop(self) -> None:
        """Let the writer commit what it was given, then wait for it to exit."""
        if self._proc:
            self._stopping = True
            self._proc.stdin.close()
            await self._proc.wait()
            await self._answers
            self._proc = None

    @property
    def directory(self) -> Directory:
        """The snapshot `department_for` last read (the LMTP handler groups recipients by it)."""
        return self._directory.snapshot

    async def department_for(self, address: str) -> DepartmentInfo | None:
        """The department owning an envelope recipient. A recipient the snapshot does not know makes
        it check the revision (a department added since): checking it for every recipient would cost
        this process more than the rest of a delivery."""
        found = self.directory.department_for(address)
        if found is None:
            found = (await self.db.run(self._directory.current)).department_for(address)
        return found

    async def deliver(self, delivery: Delivery, parsed: ParsedMessage | None = None) -> Outcome:
        """Store and process one delivery; returns once committed. Raises if it could not be stored.

        Without `parsed`, the writer process parses the message."""
        if self.failed.is_set():
            raise StorageError("the writer process is not running")
        job_id = next(self._ids)
        answer = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        # Shielded: a job cut off half-way (its LMTP client went away) would garble the pipe.
        await asyncio.shield(self._send(writer_pipe.Job(job_id, delivery, parsed)))
        return await answer

    async def _send(self, job: writer_pipe.Job) -> None:
        async with self._sending:
            await writer_pipe.send(self._proc.stdin, job)

    async def _read_answers(self) -> None:
        try:
            while (answers := await self._from_writer.read()) is not None:
                for a in answers.answers:
                    answer = self._waiting.pop(a.job_id)
                    if answer.done():
                        continue  # the caller went away (connection lost); the MTA retries and finds it stored
                    if a.outcome:
                        answer.set_result(a.outcome)
                    else:
                        answer.set_exception(StorageError(a.error))
            if not self._stopping:  # the writer exited
                log.critical("the pipeline's writer process died (exit code %s)", await self._proc.wait())
                self.failed.set()
        finally:
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(StorageError("the writer process stopped"))
            self._waiting.clear()
