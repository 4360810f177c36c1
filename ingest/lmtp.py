"""The LMTP listener (RFC 2033): translates LMTP to pipeline calls and outcomes to status lines."""

from __future__ import annotations

import asyncio
import logging
import weakref

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from ingest.parse import parse_message
from ingest.pipeline import Delivery, Outcome, Pipeline

log = logging.getLogger(__name__)

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
    """aiosmtpd's LMTP with a DATA phase that reads the message in large pieces.

    aiosmtpd reads DATA a line at a time, which is most of the event loop's work for a large
    message (measured in bench/: ~80% of the loop at 100 KB). Here the reader looks for each
    ".\r\n" instead and checks whether it ends the message, and too-big messages get one reply
    per recipient, as RFC 2033 requires (aiosmtpd sends one, and the replies go out of step).
    """

    def __init__(self, handler, *, max_message_bytes: int, **kwargs):
        # The reader's buffer limit bounds one DATA piece; long lines are legal in relayed mail.
        self.line_length_limit = max_message_bytes + 64 * 1024
        self.max_message_bytes = max_message_bytes
        super().__init__(handler, data_size_limit=max_message_bytes, **kwargs)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            return await self.push("503 5.5.1 Error: need RCPT command")
        if arg:
            return await self.push("501 5.5.4 Syntax: DATA")
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data, too_big = await self._read_data()
        if too_big:
            replies = ["552 5.3.4 Message exceeds the maximum size"] * len(self.envelope.rcpt_tos)
            self._set_post_data_state()
            return await self.push("\r\n".join(replies))
        self.envelope.content = self.envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> tuple[bytes, bool]:
        """The message up to the lone "." line, dot-unstuffed (RFC 5321 4.5.2), and whether it was too big."""
        pieces, size, too_big = [], 0, False
        tail = b"\r\n"  # the stream before DATA's first line counts as a line end
        while True:
            try:
                piece = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as e:
                piece = await self._reader.readexactly(e.consumed)
            size += len(piece)
            if size > self.max_message_bytes:
                too_big, pieces = True, []  # keep reading to the end, but not the data
            elif piece:
                pieces.append(piece)
            window = tail + piece
            if window.endswith(b"\r\n.\r\n"):  # a "." alone on its line
                break
            tail = window[-4:]
        if too_big:
            return b"", True
        data = b"".join(pieces)[:-3]  # without the final ".\r\n"
        if data.startswith(b"."):
            data = data[1:]
        return data.replace(b"\r\n.", b"\r\n"), False


class Handler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
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

    async def _deliver(self, envelope) -> list[str]:
        raw = envelope.original_content
        parsed = parse_message(raw)  # here: the writer process is the busier one
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
            max_message_bytes=self.max_message_bytes,
            enable_SMTPUTF8=True,
            hostname="ticketmail",
            ident="ticketmail LMTP",
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(proto)
        return proto

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
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

