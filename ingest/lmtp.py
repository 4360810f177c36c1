"""The LMTP listener (RFC 2033): translates LMTP to pipeline calls and outcomes to status lines.

It also keeps a misbehaving or hostile client from taking the process down: a cap on sessions, a
bound on a session's time without a delivery, command lines limited on their own (DATA keeps
`max_message_bytes`), a budget of message bytes in flight, and a shutdown that answers every
message it has read before closing."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
import logging


from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import syntax

from ingest.delivery import Delivery, Outcome
from ingest.parse import MAX_ADDRESS, parse_message, too_long_for_a_mailbox
from ingest.pipeline import Pipeline
from ingest.unix_socket import UnixSocket

log = logging.getLogger(__name__)

TEMPFAIL = "451 4.3.0 <{rcpt}> temporary storage failure, please retry"
TOO_BIG = "552 5.3.4 Message exceeds the maximum size"
BUSY = "452 4.3.1 Too much mail in progress, please retry later"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, please retry later"
TOO_MANY = "421 4.3.2 Too many connections, please retry later"
IDLE = "421 4.4.2 Idle too long without delivering a message, closing"
LINE_TOO_LONG = "500 5.5.2 Command line too long"
# A path may be refused beyond 256 octets with its <> (RFC 5321 4.5.3.1.3, "501 Path too long"): it is no
# working address, and taken, the database might refuse it (451 for as long as the MTA keeps trying).
SENDER_TOO_LONG = f"501 5.1.7 Path too long: the sender address is over {MAX_ADDRESS} octets"
RECIPIENT_TOO_LONG = f"501 5.1.3 Path too long: the recipient address is over {MAX_ADDRESS} octets"
_WITH_STATUS_CODE = {"500 Command line too long": LINE_TOO_LONG,
                     "552 Error: message size exceeds fixed maximum message size": TOO_BIG}

# How much of the stream one read may buffer. Command lines beyond aiosmtpd's 512 (plus extensions)
# are refused; beyond this they are not even kept. DATA is read in pieces of up to this size.
READ_LIMIT = 64 * 1024
PARSE_HERE_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 26214400
    max_sessions: int = 100  # connections at once; beyond it 421 at the greeting
    idle_seconds: float = 300  # a session that delivers nothing for this long is closed (NOOPs don't count)
    max_inflight_bytes: int = 104857600  # message bytes in DATA and awaiting the writer; beyond: 452


def status_line(rcpt: str, outcome: Outcome | BaseException) -> str:
    """The reply for one recipient: 250 once stored, 550 if refused, 451 (retry) on any failure."""
    if isinstance(outcome, BaseException):
        return TEMPFAIL.format(rcpt=rcpt)
    if outcome.status == "rejected":
        return f"550 5.7.1 <{rcpt}> {outcome.reason}"
    if outcome.status == "failed":  # stored as it came; the MTA must not offer it again
        return f"250 2.0.0 <{rcpt}> stored, processing failed: kept for an admin to retry"
    what = f"ticket #{outcome.ticket}" if outcome.ticket else outcome.status
    return f"250 2.0.0 <{rcpt}> delivered ({what})"


class _Server(LMTP):
    """aiosmtpd's LMTP session with our limits and a DATA phase that reads the message in large pieces.

    aiosmtpd reads DATA a line at a time, which is most of the event loop's work for a large
    message (measured in bench/: ~80% of the loop at 100 KB). Here the reader looks for each
    ".\r\n" instead and checks whether it ends the message, and a refused message gets one reply
    per recipient, as RFC 2033 requires (aiosmtpd sends one, and the replies go out of step).
    """

    line_length_limit = READ_LIMIT  # aiosmtpd sizes the stream reader's buffer with it

    def __init__(self, handler, listener: LMTPListener, **kwargs):
        self.listener = listener
        self.limits = listener.limits
        self.busy = False  # in DATA or waiting for the pipeline: shutdown lets it finish
        self.charged = 0  # this session's message bytes counted in the listener's in-flight budget
        self._idle_timer: asyncio.TimerHandle | None = None
        super().__init__(handler, data_size_limit=self.limits.max_message_bytes, **kwargs)
        # During shutdown every new command gets 421 (QUIT still says goodbye).
        self._smtp_methods = {name: self._unless_closing(name, m) for name, m in self._smtp_methods.items()}

    def _unless_closing(self, name: str, method):
        async def run(arg):
            if self.listener.closing and name != "QUIT":
                return self.close_with(SHUTTING_DOWN)
            return await method(arg)

        return run

    def close_with(self, reply: str) -> None:
        """Send one last reply and close (the transport sends what it holds before closing)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply.encode("ascii") + b"\r\n")
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.listener.sessions.add(self)
        self._arm_idle_timer()

    def connection_lost(self, error) -> None:
        self.listener.sessions.discard(self)
        if self._idle_timer:
            self._idle_timer.cancel()
        super().connection_lost(error)

    def _arm_idle_timer(self) -> None:
        if self._idle_timer:
            self._idle_timer.cancel()
        self._idle_timer = self.loop.call_later(self.limits.idle_seconds, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self.busy:  # a message on its way re-arms the timer when it is answered
            log.info("closing LMTP session from %s: no delivery in %s s", self.session.peer, self.limits.idle_seconds)
            self.close_with(IDLE)

    async def _handle_client(self) -> None:
        if self.listener.closing:
            return self.close_with(SHUTTING_DOWN)
        if len(self.listener.sessions) > self.limits.max_sessions:
            log.warning("refusing an LMTP connection: %d sessions open", len(self.listener.sessions) - 1)
            self.listener.refused += 1
            return self.close_with(TOO_MANY)
        await super()._handle_client()

    async def push(self, status) -> None:
        # aiosmtpd's own replies without an enhanced status code: ours instead (the size: MAIL FROM SIZE=)
        await super().push(_WITH_STATUS_CODE.get(status, status))

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        if not self.envelope.rcpt_tos:
            return await self.push("503 5.5.1 Error: need RCPT command")
        if arg:
            return await self.push("501 5.5.4 Syntax: DATA")
        self.busy = True
        self.listener.busy += 1
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            data, refusal = await self._read_data()
            if refusal:
                status = "\r\n".join([refusal] * len(self.envelope.rcpt_tos))
            else:
                self.envelope.content = self.envelope.original_content = data
                del data
                status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(status)
        finally:  # also when the client went away in the middle
            self.listener.release(self.charged)
            self.charged = 0
            self.busy = False
            self.listener.busy -= 1
            self.listener.changed()
            self._arm_idle_timer()

    async def _read_data(self) -> tuple[bytes, str]:
        """The message up to the lone "." line, dot-unstuffed (RFC 5321 4.5.2); else a refusal for
        every recipient (too big, or over the in-flight budget). Its bytes are charged as they come."""
        data, size, refusal = bytearray(), 0, ""
        tail = b"\r\n"  # the stream before DATA's first line counts as a line end
        while True:
            try:
                piece = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as e:
                piece = await self._reader.readexactly(e.consumed)
            self._reset_timeout()  # aiosmtpd's read timeout: progress counts, not only commands
            size += len(piece)
            if not refusal:
                refusal = self._refusal(size, len(piece))
                if refusal:  # keep reading to the end, but not the data
                    self.listener.release(self.charged)
                    data, self.charged = bytearray(), 0
                else:
                    self.charged += len(piece)
                    # Unstuff with the two bytes before the piece: a CRLF may end the last one.
                    data += (tail[-2:] + piece).replace(b"\r\n.", b"\r\n")[2:]
            window = tail + piece
            if window.endswith(b"\r\n.\r\n"):  # a "." alone on its line
                break
            tail = window[-4:]
        if refusal:
            return b"", refusal
        del data[-2:]  # the end: CRLF "." CRLF, whose dot the unstuffing took already
        return bytes(data), ""

    def _refusal(self, size: int, more: int) -> str:
        if size > self.limits.max_message_bytes:
            return TOO_BIG
        if not self.listener.charge(more):
            log.warning("452 to %s: %d message bytes in flight", self.session.peer, self.listener.inflight)
            return BUSY
        return ""


class Handler:
    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if too_long_for_a_mailbox(address):  # in octets: an SMTPUTF8 address may take more than its characters
            return SENDER_TOO_LONG
        envelope.mail_from = address  # what aiosmtpd does without this hook
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if too_long_for_a_mailbox(address):
            return RECIPIENT_TOO_LONG
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
        try:
            return "\r\n".join(await self._deliver(envelope))
        except Exception:  # one raised error would desync the replies; a cancellation must go on up
            log.exception("delivery from %s failed", envelope.mail_from)
            return "\r\n".join(TEMPFAIL.format(rcpt=r) for r in envelope.rcpt_tos)

    async def _deliver(self, envelope) -> list[str]:
        raw = envelope.original_content
        # Parsed here (the writer process is the busier one), unless large: a parse holds ~2.7x the
        # message for a moment, and this process already holds the messages of every session.
        parsed = parse_message(raw) if len(raw) <= PARSE_HERE_BYTES else None
        sender = "" if envelope.mail_from in ("<>", "") else envelope.mail_from
        # One delivery per department; recipients of the same department share its outcome.
        groups: dict[int, list[str]] = {}
        for rcpt in envelope.rcpt_tos:
            dept = self.pipeline.directory.department_for(rcpt)
            groups.setdefault(dept.id if dept else -1, []).append(rcpt)
        keys = list(groups)
        outcomes = await asyncio.gather(
            *(
                self.pipeline.deliver(Delivery(raw=raw, sender=sender, recipient=groups[k][0],
                                               also=tuple(groups[k][1:])), parsed)
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

    def __init__(self, pipeline: Pipeline, *, host="127.0.0.1", port=8024, socket="", socket_mode=0o660,
                 socket_gid: int | None = None, hostname="", limits: Limits = Limits()):
        self.handler = Handler(pipeline)
        self.host, self.port, self.socket = host, port, socket
        self.socket_mode, self.socket_gid = socket_mode, socket_gid  # None: this process's group
        self._unix: UnixSocket | None = None
        self.hostname = hostname or None  # aiosmtpd: None is this host's name
        self.limits = limits
        self.sessions: set[_Server] = set()
        self.busy = 0  # sessions in DATA or waiting for the pipeline
        self.inflight = 0  # message bytes read and not yet answered
        self.refused = 0  # connections refused at the greeting (max_sessions): /metrics
        self.closing = False
        self._changed = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None

    def charge(self, size: int) -> bool:
        """Count `size` more message bytes in flight, unless that would go over the budget."""
        if self.inflight + size > self.limits.max_inflight_bytes:
            return False
        self.inflight += size
        return True

    def release(self, size: int) -> None:
        self.inflight -= size

    def changed(self) -> None:
        self._changed.set()

    def _protocol(self) -> _Server:
        return _Server(
            self.handler,
            self,
            enable_SMTPUTF8=True,
            hostname=self.hostname,
            ident="ticketmail LMTP",
            loop=asyncio.get_running_loop(),
        )

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.socket:
            gid = os.getgid() if self.socket_gid is None else self.socket_gid
            self._unix = UnixSocket(self.socket, self.socket_mode, gid)
            self._server = await loop.create_unix_server(self._protocol, sock=self._unix.sock)
        else:
            self._server = await loop.create_server(self._protocol, host=self.host, port=self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting; sessions between messages get 421 now, a message being sent or stored
        gets its reply (within `grace`), then every session is closed."""
        if self._server is None:
            return
        self.closing = True
        self._server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.busy:
            for session in list(self.sessions):
                if not session.busy:
                    session.close_with(SHUTTING_DOWN)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                log.warning("%d LMTP sessions still sending or storing a message after %s s: closing them",
                            self.busy, grace)
                break
        for session in list(self.sessions):
            session.close_with(SHUTTING_DOWN)
        await self._server.wait_closed()
        self._server = None
        if self._unix:
            self._unix.remove()
