"""A raw LMTP session for tests that need exact replies or a message sent in parts, and `until()`."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests import statuscodes as codes

SUPPORT = "support@xyzhosting.com"
ALICE = "alice@customer.example"


async def until(condition, what: str, seconds: float = 10.0) -> None:
    """Wait for `condition()`; fail the test, naming `what`, if it does not come true in time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.01)


def code_of(reply: str) -> int:
    """The reply code of a reply line."""
    return int(reply[:3])


class Session:
    """A raw LMTP session over a socket: exact replies, partial sends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Session:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def reply(self) -> str:
        """One whole (possibly multi-line) reply; its last line."""
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if not line:
                raise ConnectionError("connection closed without a reply")
            if line[3:4] != b"-":
                return line.decode().rstrip("\r\n")

    async def command(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        return await self.reply()

    async def start_data(self, sender: str = ALICE, rcpt: str = SUPPORT) -> None:
        assert code_of(await self.reply()) == codes.READY
        assert code_of(await self.command("LHLO test")) == codes.OK
        assert code_of(await self.command(f"MAIL FROM:<{sender}>")) == codes.OK
        assert code_of(await self.command(f"RCPT TO:<{rcpt}>")) == codes.OK
        assert code_of(await self.command("DATA")) == codes.START_DATA

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    def close(self) -> None:
        self.writer.close()
