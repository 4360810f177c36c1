"""The pipe between the pipeline (in serve) and its writer process: the messages and their one encoding.

Parent to writer: a `Start`, then one `Job` per delivery. Writer to parent: `Ready` or `Failed`, then
one `Answers` per committed group. Every frame is a header with two lengths, the pickled message, and
then a job's raw message bytes as they are (none for the other messages): pickling the raw bytes
would copy the message twice more, and the sender writes them a piece at a time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pickle
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Union

from ingest.delivery import Delivery, Outcome
from ingest.parse import ParsedMessage

if TYPE_CHECKING:
    from ingest.challenges import ChallengeSettings

HEADER = struct.Struct("!II")  # the pickled message's length, the raw bytes' length
PIECE = 1 << 20  # raw bytes written between two waits for the pipe to drain


@dataclass(frozen=True)
class Start:
    """The writer's settings, its first message. The database URL may hold a password: it goes over
    the pipe, not on the command line."""

    url: str
    ticket_prefix: str
    challenge: ChallengeSettings | None
    resubmission_days: int = 7  # ingest/resubmission.py; 0: off


@dataclass(frozen=True)
class Ready:
    """The writer has started."""


@dataclass(frozen=True)
class Failed:
    """The writer could not start."""

    reason: str


@dataclass(frozen=True)
class Job:
    """One delivery to store. Without `parsed`, the writer parses the message."""

    id: int
    delivery: Delivery
    parsed: ParsedMessage | None


@dataclass(frozen=True)
class Answer:
    """A job's outcome once committed, or why it could not be stored."""

    job_id: int
    outcome: Outcome | None = None
    error: str = ""


@dataclass(frozen=True)
class Answers:
    """The answers of one committed group."""

    answers: list[Answer]


Message = Union[Start, Ready, Failed, Job, Answers]


def encode(message: Message) -> tuple[bytes, memoryview]:
    """The frame's header and pickled message, and the raw bytes that follow it (a job's; else empty)."""
    raw = b""
    if isinstance(message, Job):
        raw = message.delivery.raw
        message = dataclasses.replace(message, delivery=dataclasses.replace(message.delivery, raw=b""))
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data), len(raw)) + data, memoryview(raw)


async def send(pipe: asyncio.StreamWriter, message: Message) -> None:
    """Write one message, its raw bytes a piece at a time, each piece waiting for the pipe to drain."""
    head, raw = encode(message)
    pipe.write(head)
    for at in range(0, len(raw), PIECE):
        pipe.write(raw[at : at + PIECE])
        await pipe.drain()


def write(out: BinaryIO, message: Message) -> None:
    """Write one message to a blocking file (the writer process's stdout) and flush it."""
    head, raw = encode(message)
    out.write(head)
    out.write(raw)
    out.flush()


class Receiver:
    """Reads messages from a pipe; `arriving` says whether one is on its way (begun, not yet whole)."""

    def __init__(self, reader: asyncio.StreamReader):
        self.reader, self.arriving = reader, False

    async def read(self) -> Message | None:
        """The next message; None once the other side has closed the pipe (or died in the middle)."""
        try:
            length, raw_length = HEADER.unpack(await self.reader.readexactly(HEADER.size))
            self.arriving = True
            message = pickle.loads(await self.reader.readexactly(length))
            if isinstance(message, Job):
                raw = await self.reader.readexactly(raw_length)
                message = dataclasses.replace(message, delivery=dataclasses.replace(message.delivery, raw=raw))
            return message
        except asyncio.IncompleteReadError:
            return None
        finally:
            self.arriving = False
