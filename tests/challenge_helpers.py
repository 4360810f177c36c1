"""A whole helpdesk for challenge-response tests: LMTP in, a real SMTP sink for the outgoing challenge,
the web app on a free loopback port, the outbox sender and the sweeper running as in `serve`."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import socket
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP as SMTPServer
from sqlalchemy import func, select

from ingest.challenges import ChallengeSettings
from ingest.delivery import Delivery
from ingest.lmtp import Limits, LMTPListener
from ingest.outbox import OutboxSender
from ingest.pipeline import Pipeline
from ingest.sweeper import Sweeper
from storage.database import Database
from storage.models import Outbox
from tests.ports import free_port
from ticketmail.config import Config
from web.app import create_app

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
BOB = "bob@newcomer.example"
LINK = re.compile(r"http://127\.0\.0\.1:\d+/confirm/[A-Za-z0-9_-]+")



@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.content, policy=email.policy.default)

    @property
    def text(self) -> str:
        return self.message.get_body(("plain",)).get_content()

    @property
    def link(self) -> str:
        return LINK.search(self.text).group(0)


class SmtpSink:
    """An SMTP server on the test's loop (aiosmtpd) that keeps what it receives."""

    def __init__(self, port: int = 0):
        self.port = port
        self.received: list[Received] = []
        self._server: asyncio.AbstractServer | None = None

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK"

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SMTPServer(self, hostname="sink.test"), "127.0.0.1",
                                                self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, count: int, seconds: float = 20.0) -> list[Received]:
        """The first `count` mails, waiting (bounded) for the outbox sender to deliver them."""
        for _ in range(int(seconds / 0.02)):
            if len(self.received) >= count:
                return self.received[:count]
            await asyncio.sleep(0.02)
        raise AssertionError(f"expected {count} mails at the SMTP sink, got {len(self.received)}")


@dataclass
class Desk:
    """The running helpdesk of one test."""

    db: Database
    config: Config
    pipeline: Pipeline
    lmtp: LMTPListener
    outbox: OutboxSender
    sweeper: Sweeper
    sink: SmtpSink
    url: str  # the web app's base URL (= [web] public_url)
    http: aiohttp.ClientSession
    stops: list = field(default_factory=list)

    async def deliver(self, raw: bytes, sender: str = BOB, recipient: str = SUPPORT, source: str = "lmtp"):
        return await self.pipeline.deliver(Delivery(raw, sender, recipient, source=source))

    async def challenge(self, count: int = 1) -> Received:
        """The count-th challenge mail at the sink, once the outbox has recorded it as sent."""
        self.outbox.wake()
        received = (await self.sink.wait_for(count))[count - 1]
        for _ in range(1000):  # bounded: the sender records the mail right after the relay took it
            async with self.db.session() as s:
                if await s.scalar(select(func.count()).select_from(Outbox).where(Outbox.state == "sent")) >= count:
                    return received
            await asyncio.sleep(0.02)
        raise AssertionError(f"the outbox did not record {count} mails as sent")


def settings_for(config: Config) -> ChallengeSettings:
    return ChallengeSettings.from_config(config)


async def start_desk(db: Database, configure=None, *, sink_port: int | None = None, sink_up: bool = True,
                     retry_base: float = 60.0) -> Desk:
    """Start LMTP, pipeline, web app, outbox sender and sweeper; `configure(config)` may change settings."""
    sink = SmtpSink(sink_port or 0)
    if sink_up:
        await sink.start()
    elif sink.port == 0:
        sink.port = free_port()  # nothing listens: the relay is down
    web_sock = socket.socket()
    web_sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{web_sock.getsockname()[1]}"
    config = Config(database_url=db.url)
    config.web.public_url = url
    config.smtp.port, config.smtp.timeout = sink.port, 5
    if configure:
        configure(config)
    runner = web.AppRunner(create_app(db, config))
    await runner.setup()
    await web.SockSite(runner, web_sock).start()
    pipeline = Pipeline(db, config.ticket_prefix, settings_for(config), in_process=True)  # its writer on this loop
    await pipeline.start()
    lmtp = LMTPListener(pipeline, host="127.0.0.1", port=0, limits=Limits(max_message_bytes=4_000_000))
    await lmtp.start()
    outbox = OutboxSender(db, config.smtp, interval=0.05, retry_base=retry_base)
    await outbox.start()
    sweeper = Sweeper(db, held_days=config.challenge.held_days, keep_for_review=config.challenge.keep_for_review,
                      ticket_prefix=config.ticket_prefix, challenge=settings_for(config), interval=3600)
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    desk = Desk(db, config, pipeline, lmtp, outbox, sweeper, sink, url, http)
    desk.stops = [http.close, outbox.stop, lambda: lmtp.stop(grace=5), pipeline.stop, runner.cleanup]
    if sink_up:
        desk.stops.append(sink.stop)
    return desk


async def stop_desk(desk: Desk) -> None:
    for stop in desk.stops:
        await stop()


@pytest.fixture
async def desk(db, cli):
    """A helpdesk whose Support and Sales departments challenge unknown senders."""
    for name, address in (("Support", SUPPORT), ("Sales", SALES)):
        code, _, err = await cli("department", "add", name, "--address", address, "--unknown-sender", "challenge")
        assert code == 0, err
    running = await start_desk(db)
    yield running
    await stop_desk(running)


async def as_json(cli, *argv):
    code, out, err = await cli(*argv, "--json")
    assert code == 0, err
    return json.loads(out)
