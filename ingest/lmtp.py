"""The LMTP listener (RFC 2033): translates LMTP to pipeline calls and outcomes to status lines."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import weakref

from aiosmtpd.lmtp import LMTP

from ingest.parse import parse_message
from ingest.pipeline import Delivery, Outcome, Pipeline

log = logging.getLogger(__name__)

PARSE_IN_PROCESS_BYTES = 64 * 1024
TEMPFAIL = "451 4.3.0 <{rcpt}> temporary storage failure, please retry"


def status_line(rcpt: str, outcome: Outcome | BaseException) -> str:
    """The reply for one recipient: 250 once stored, 550 if refused, 451 (retry) on any failure."""
    if isinstance(outcome, BaseException):
        return TEMPFAIL.format(rcpt=rcpt)
    if outcome.status == "rejected":
        return f"550 5.7.1 <{rcpt}> {outcome.reason}"
    what = f"ticket #{outcome.ticket}" if outcome.ticket else outcome.status
    return f"250 2.0.0 <{rcpt}> delivered ({what})"


class _Server(LMTP):
    """aiosmtpd's LMTP, with one reply per recipient also for its own errors after DATA."""

    # Long lines are legal in real mail an MTA relays; refuse only absurd ones.
    line_length_limit = 4 * 1024 * 1024

    _data_recipients = 0

    async def smtp_DATA(self, arg: str) -> None:
        self._data_recipients = len(self.envelope.rcpt_tos) if self.envelope else 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_recipients = 0

    async def push(self, status):
        # aiosmtpd answers a too-big or too-long message with one line; LMTP wants one per
        # recipient, or the client's replies go out of step.
        if self._data_recipients > 1 and isinstance(status, str) and status[:1] in "45":
            status = "\r\n".join([status] * self._data_recipients)
        await super().push(status)


class Handler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.parser: concurrent.futures.ProcessPoolExecutor | None = None
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        try:
            department = await self.pipeline.department_for(address)
        except Exception:
            log.exception("looking up recipient %s failed", address)
            return f"451 4.3.0 <{address}> temporary failure, please retry"
        if department is None:
            return f"550 5.1.1 <{address}> no such mailbox here"
        envelope.rcpt_tos.append(address)
        return f"250 2.1.5 <{address}> OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        server._data_recipients = 0  # from here on, we answer per recipient ourselves
        self.in_flight += 1
        self.idle.clear()
        try:
            return "\r\n".join(await self._deliver(envelope))
        except BaseException:  # never raise: one raised error would desync the replies
            log.exception("delivery from %s failed", envelope.mail_from)
            return "\r\n".join(TEMPFAIL.format(rcpt=r) for r in envelope.rcpt_tos)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def _parse(self, raw: bytes):
        """Parse large messages in the parser process, small ones here (measured in bench/: below
        ~64 KB the round trip costs the event loop more than the parse it saves)."""
        if self.parser is not None and len(raw) > PARSE_IN_PROCESS_BYTES:
            try:
                return await asyncio.get_running_loop().run_in_executor(self.parser, parse_message, raw)
            except concurrent.futures.process.BrokenProcessPool:
                log.error("the parser process died; parsing in the main process from now on")
                self.parser = None
        return parse_message(raw)

    async def _deliver(self, envelope) -> list[str]:
        raw = envelope.original_content
        parsed = await self._parse(raw)
        sender = "" if envelope.mail_from in ("<>", "") else envelope.mail_from
        # One delivery per department; recipients of the same department share its outcome.
        groups: dict[int, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            dept = self.pipeline.directory.department_for(rcpt)
            groups.setdefault(dept.id if dept else -1, []).append(rcpt)
        keys = list(groups)
        outcomes = await asyncio.gather(
            *(
                self.pipeline.deliver(Delivery(raw=raw, sender=sender, recipient=groups[k][0]), parsed)
                for k in keys
            ),
            return_exceptions=True,
        )
        by_rcpt = {r: o for k, o in zip(keys, outcomes) for r in groups[k]}
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("storing a message from %s failed: %r", sender or "<>", outcome)
        return [status_line(r, by_rcpt[r]) for r in envelope.rcpt_tos]


class LMTPListener:
    """Serves LMTP on host:port or a unix socket, on the running event loop."""

    def __init__(self, pipeline: Pipeline, *, host="127.0.0.1", port=8024, socket="", max_message_bytes=26214400):
        self.handler = Handler(pipeline)
        self.host, self.port, self.socket = host, port, socket
        self.max_message_bytes = max_message_bytes
        self._server: asyncio.AbstractServer | None = None
        self._sessions: weakref.WeakSet[_Server] = weakref.WeakSet()

    def _protocol(self) -> _Server:
        proto = _Server(
            self.handler,
            data_size_limit=self.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname="ticketmail",
            ident="ticketmail LMTP",
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(proto)
        return proto

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # forkserver: never fork this process, which runs the writer's thread.
        self.handler.parser = concurrent.futures.ProcessPoolExecutor(1, multiprocessing.get_context("forkserver"))
        if self.socket:
            self._server = await loop.create_unix_server(self._protocol, path=self.socket)
        else:
            self._server = await loop.create_server(self._protocol, host=self.host, port=self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let deliveries in progress finish, then close the sessions."""
        if self._server is None:
            return
        self._server.close()
        try:
            await asyncio.wait_for(self.handler.idle.wait(), grace)
        except asyncio.TimeoutError:
            log.warning("%d deliveries still in progress at shutdown", self.handler.in_flight)
        for proto in list(self._sessions):
            if proto.transport is not None:
                proto.transport.close()
        await self._server.wait_closed()
        self._server = None
        if self.handler.parser:
            self.handler.parser.shutdown(cancel_futures=True)
