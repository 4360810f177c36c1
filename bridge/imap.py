"""One IMAP connection for the bridge, around aioimaplib: TLS, STARTTLS, login, and the few commands we use.

aioimaplib never fails a pending command when the connection drops (it can wait forever in IDLE after
a BYE) and drops untagged EXISTS that arrive outside IDLE, so every call here races the command
against the connection's end and a timeout, and the protocol is taught to notice EXISTS and BYE.
Every failure becomes an `ImapError` whose message is one plain sentence for the operator.

Server text enters here, line by line, and the account's password is masked in it before anything
else sees it (a server may quote our LOGIN in its refusal or its BYE): the sentences we build from it,
what is stored on the account, what is logged.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import aioimaplib

from bridge.accounts import Account, AfterAction
from bridge.responses import (  # noqa: F401 - ImapError and Mailbox are part of this module's interface
    ImapError,
    Mailbox,
    encode_mailbox,
    mask,
    parse_fetch,
    parse_namespace,
    parse_search,
    parse_select,
    parse_status,
    quote,
    redact_status,
    secret_spellings,
    uid_set,
)

log = logging.getLogger(__name__)
# aioimaplib logs raw protocol lines (ours with LOGIN's quoted password at DEBUG, the server's unfiltered
# at INFO); nothing in them is for an operator, and `serve` logs at INFO.
logging.getLogger("aioimaplib").setLevel(logging.WARNING)


def describe(exc: BaseException, account: Account, timeout: float) -> str:
    """The operator's sentence for a connection failure."""
    where = account.where()
    if isinstance(exc, ImapError):
        return str(exc)
    if isinstance(exc, socket.gaierror):
        return f"server name {account.server} does not resolve ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection to {where} refused (no IMAP server listening there?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate of {account.server} not trusted: {exc.verify_message} "
                "(give the server's CA with --ca-file)")
    if isinstance(exc, ssl.SSLError):
        hint = ""
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"):
            hint = f" (is {account.port} a plain IMAP port? try --security starttls, or port 993)"
        return f"TLS handshake with {where} failed: {exc.reason or exc}{hint}"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        hint = " (is it a TLS port? try --security tls)" if account.security != "tls" else ""
        return f"{where} did not answer within {timeout:g} s{hint}"
    if isinstance(exc, FileNotFoundError) and account.ca_file:
        return f"CA file {account.ca_file} does not exist"
    if isinstance(exc, OSError):
        return f"cannot connect to {where}: {exc.strerror or type(exc).__name__}"
    detail = redact(str(exc), account)
    return f"{type(exc).__name__} talking to {where}" + (f": {detail}" if detail else "")


def spellings(account: Account) -> tuple[bytes, ...]:
    return secret_spellings(account.username, account.password.reveal())


def redact(text: str, account: Account) -> str:
    """`text` without the account's password in any spelling (a library's message may quote the command
    it failed on)."""
    data = text.encode(errors="surrogateescape")
    return mask(data, spellings(account)).decode(errors="surrogateescape")


def shows_password(text: str, account: Account) -> bool:
    return redact(text, account) != text


def tls_context(account: Account) -> ssl.SSLContext:
    """Certificates verified by default (system CAs, or only the account's CA file); off only when asked."""
    context = ssl.create_default_context(cafile=account.ca_file or None)
    if not account.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --- aioimaplib, taught to notice new mail and the server's goodbye ---


class _Protocol(aioimaplib.IMAP4ClientProtocol):
    def __init__(self, loop, conn_lost_cb, secrets, on_exists, on_expunge, on_bye, on_alert, on_error):
        super().__init__(loop, conn_lost_cb)
        self._secrets = secrets  # the password's spellings, masked in every status line
        self._on_exists, self._on_expunge = on_exists, on_expunge
        self._on_bye, self._on_alert, self._on_error = on_bye, on_alert, on_error

    def data_received(self, d: bytes) -> None:
        # A response aioimaplib cannot follow would otherwise escape to asyncio's exception log (its
        # message may quote the pending command: LOGIN's carries the password) and leave us waiting.
        try:
            super().data_received(d)
        except Exception as e:  # noqa: BLE001
            self._on_error(e)

    def _handle_responses(self, data: bytes, line_handler, current_cmd=None) -> None:
        """aioimaplib 2.0.3's own, as a loop: it called itself once per line, so a burst of untagged
        responses in one read (another client expunging 1,500 messages) ended in RecursionError."""
        while True:
            if not data:
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                data = current_cmd.append_literal_data(data)
                if current_cmd.wait_literal_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
            line, separator, tail = data.partition(b"\r\n")
            if not separator:
                raise aioimaplib.IncompleteRead(current_cmd, data)
            cmd = line_handler(line, current_cmd)
            if begin_literal := aioimaplib.literal_data_re.match(line):
                if cmd is None:
                    cmd = aioimaplib.Command("NIL", "unused")
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            else:
                current_cmd = cmd if cmd is not None and cmd.wait_data() else None
            data = tail

    def _handle_line(self, line: bytes, current_cmd):
        # The one door for server lines (literals, i.e. the mail, bypass it and stay byte-exact).
        line = redact_status(line, self._secrets)
        if line.startswith(b"* "):
            if line.endswith(b" EXISTS"):
                self._on_exists()
            elif line.endswith(b" EXPUNGE"):
                self._on_expunge()
            elif line.startswith(b"* BYE"):
                self._on_bye(line[5:].strip().decode(errors="replace"))
            elif line.startswith((b"* NO", b"* BAD")):
                self._on_alert(line[2:].strip().decode(errors="replace"))
        return super()._handle_line(line, current_cmd)


class _Client(aioimaplib.IMAP4):
    def __init__(self, host, port, timeout, ssl_context, hooks):
        self._hooks = hooks
        super().__init__(host, port, timeout=timeout, ssl_context=ssl_context)

    def create_client(self, host, port, loop, conn_lost_cb=None, ssl_context=None):
        loop = asyncio.get_running_loop()
        self.protocol = _Protocol(loop, *self._hooks)
        self._client_task = loop.create_task(
            loop.create_connection(lambda: self.protocol, host, port, ssl=ssl_context)
        )


def _keepalive(transport) -> None:
    """TCP keepalive: a peer that vanished without a FIN is noticed in minutes, not at the next IDLE renewal."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 15), ("TCP_KEEPCNT", 4)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Connection:
    """A logged-in IMAP connection of one account. Single use: after any error, close it and open another."""

    def __init__(self, account: Account, timeout: float):
        self.account = account
        self.timeout = timeout
        self.news = asyncio.Event()  # set whenever the server reports EXISTS: there may be new mail
        # Set by EXPUNGE: the selection changed. Cyrus announces a deleted folder with nothing else (no NO,
        # no BYE, as Dovecot sends), so the folder is looked at again (SELECT) after one.
        self.changed = asyncio.Event()
        self.tls = ""
        self._lost = asyncio.Event()
        self._bye = ""
        self._alert = asyncio.Event()  # an untagged NO/BAD: e.g. Dovecot's answer when our folder is deleted
        self._alert_text = ""
        self._client: _Client | None = None
        self._warned_no_uidplus = False

    @classmethod
    async def open(cls, account: Account, timeout: float) -> Connection:
        """Connect, secure and log in; raises ImapError with the reason."""
        conn = cls(account, timeout)
        try:
            await conn._open()
        except BaseException as e:
            conn.abort()
            if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt)):
                raise
            raise ImapError(describe(e, account, timeout)) from None
        return conn

    async def _open(self) -> None:
        account = self.account
        context = tls_context(account) if account.security in ("tls", "starttls") else None
        hooks = (self._on_lost, spellings(account), self.news.set, self.changed.set, self._on_bye, self._on_alert,
                 self._on_error)
        self._client = _Client(account.server, account.port, self.timeout,
                               context if account.security == "tls" else None, hooks)
        try:
            await self._call(self._client.wait_hello_from_server(), "the greeting")
        except ImapError as e:
            silent = "did not answer" in str(e) and account.security != "tls"  # a TLS port waits for a hello
            raise ImapError(f"{e} (is it a TLS port? try --security tls)" if silent else str(e)) from None
        _keepalive(self._client.protocol.transport)
        if account.security == "starttls":
            await self._starttls(context)
        elif account.security == "tls":
            self.tls = self._tls_description()
        await self._login()

    def _tls_description(self) -> str:
        ssl_object = self._client.protocol.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return ""
        verified = "certificate verified" if self.account.verify_tls else "certificate NOT verified"
        return f"{ssl_object.version()}, {verified}"

    async def _starttls(self, context: ssl.SSLContext) -> None:
        """Upgrade the plain connection in place (aioimaplib sends STARTTLS but cannot upgrade)."""
        protocol = self._client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError(f"{self.account.where()} does not offer STARTTLS: refusing to log in without TLS "
                            "(use --security tls on port 993, or none if you accept that)")
        response = await self._call(
            protocol.execute(aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)), "STARTTLS")
        if response.result != "OK":
            raise ImapError(f"{self.account.where()} refused STARTTLS: {_text(response)}")
        loop = asyncio.get_running_loop()
        transport = await asyncio.wait_for(
            loop.start_tls(protocol.transport, protocol, context, server_hostname=self.account.server),
            self.timeout,
        )
        protocol.transport = transport
        self.tls = self._tls_description()
        await self._call(protocol.capability(), "CAPABILITY")  # RFC 3501: forget what was said before TLS

    async def _login(self) -> None:
        protocol = self._client.protocol
        if "LOGINDISABLED" in protocol.capabilities:
            raise ImapError(f"{self.account.where()} does not allow login without TLS (LOGINDISABLED): "
                            "use --security tls or starttls")
        try:
            response = await self._call(
                self._client.login(quote(self.account.username), self.account.password.reveal()), "LOGIN")
        except ValueError:
            raise ImapError("the user name or password contains a line break or NUL") from None
        if response.result != "OK":
            raise ImapError(f"login failed for user {self.account.username} on {self.account.where()}: "
                            f"{_text(response)}")
        await self._call(protocol.capability(), "CAPABILITY")  # the complete list, now that we are in

    # --- plumbing ---

    def _on_lost(self, exc) -> None:
        self._lost.set()

    def _on_bye(self, text: str) -> None:
        self._bye = text
        self._lost.set()

    def _on_error(self, exc: Exception) -> None:
        self._bye = f"unexpected response ({type(exc).__name__}: {redact(str(exc), self.account)[:200]})"
        self._lost.set()
        self.abort()

    def _on_alert(self, text: str) -> None:
        self._alert_text = text
        self._alert.set()

    @property
    def capabilities(self) -> set[str]:
        return {c.upper() for c in self._client.protocol.capabilities} if self._client else set()

    async def _call(self, awaitable, what: str, timeout: float | None = None):
        """Await an aioimaplib call, but give up when the connection ends or `timeout` passes."""
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout or self.timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task in done:
            try:
                return task.result()
            except aioimaplib.CommandTimeout:
                raise ImapError(f"{self.account.where()} did not answer {what} in time") from None
            except aioimaplib.AioImapException as e:
                raise ImapError(f"{what} failed: {redact(str(e), self.account)}") from None
        task.cancel()
        if lost in done:
            raise ImapError(self._closed_text(what))
        raise ImapError(f"{self.account.where()} did not answer {what} within {timeout or self.timeout:g} s")

    def _closed_text(self, what: str) -> str:
        if self._bye:
            return f"{self.account.where()} closed the connection during {what}: {self._bye}"
        return f"{self.account.where()} closed the connection during {what}"

    def abort(self) -> None:
        if self._client and self._client.protocol.transport:
            self._client.protocol.transport.abort()

    async def close(self) -> None:
        """LOGOUT politely if the connection still works, then close it."""
        if self._client and not self._lost.is_set():
            try:
                await self._call(self._client.logout(), "LOGOUT", timeout=min(self.timeout, 5))
            except (ImapError, aioimaplib.AioImapException, OSError):
                pass
        self.abort()

    # --- the commands the bridge uses ---

    async def select(self, folder: str) -> Mailbox:
        response = await self._call(self._client.select(encode_mailbox(folder)), f"SELECT {folder}")
        if response.result != "OK":
            text = _text(response)
            if "NONEXISTENT" in text or "exist" in text.lower():
                raise ImapError(await self.missing_folder(folder))
            raise ImapError(f"cannot open folder {folder!r}: {text}")
        return parse_select(response.lines)

    async def missing_folder(self, folder: str, role: str = "") -> str:
        """The sentence for a folder that does not exist, with the name it may have here: servers whose
        personal folders live under a prefix (Cyrus, Courier: "INBOX.") say so in NAMESPACE."""
        sentence = f"folder {folder!r}{role} does not exist on {self.account.where()}"
        namespace = None
        if "NAMESPACE" in self.capabilities:
            response = await self._call(self._client.namespace(), "NAMESPACE")
            namespace = parse_namespace(response.lines) if response.result == "OK" else None
        if not namespace or not namespace[0] or folder.upper().startswith(namespace[0].upper()):
            return sentence
        prefix, separator = namespace
        candidate = prefix + (folder.replace("/", separator) if separator else folder)
        known = await self.status(candidate) is not None
        return (f"{sentence}; personal folders on this server are under {prefix!r} (hierarchy separator "
                f"{separator!r}): " + (f"did you mean {candidate!r}?" if known else f"e.g. {candidate!r}"))

    async def examine(self, folder: str) -> Mailbox:
        """Open read-only (for `imap test`): proves the folder can be opened and changes nothing."""
        response = await self._call(self._client.examine(encode_mailbox(folder)), f"EXAMINE {folder}")
        if response.result != "OK":
            raise ImapError(f"folder {folder!r} does not exist or cannot be opened: {_text(response)}")
        return parse_select(response.lines)

    async def status(self, folder: str) -> dict[str, int] | None:
        """MESSAGES, UNSEEN, UIDNEXT, UIDVALIDITY of a folder; None if it does not exist."""
        response = await self._call(
            self._client.status(encode_mailbox(folder), "(MESSAGES UNSEEN UIDNEXT UIDVALIDITY)"), "STATUS")
        return parse_status(response.lines) if response.result == "OK" else None

    async def uids_above(self, uid: int) -> list[int]:
        response = await self._call(self._client.uid_search("UID", f"{uid + 1}:*", charset=None), "UID SEARCH")
        _check(response, "UID SEARCH")
        return parse_search(response.lines, uid)

    async def fetch(self, uids: list[int]) -> list[tuple[int, bytes]]:
        """The raw messages, without setting \\Seen (BODY.PEEK): nothing is marked before it is committed."""
        # aioimaplib times FETCH out after `timeout` without data; the overall bound is for a stalled parse.
        response = await self._call(self._client.uid("fetch", uid_set(uids), "(UID BODY.PEEK[])"),
                                    "UID FETCH", timeout=self.timeout * 10)
        _check(response, "UID FETCH")
        return parse_fetch(response.lines)

    async def noop(self) -> None:
        _check(await self._call(self._client.noop(), "NOOP"), "NOOP")

    async def apply(self, after: AfterAction, uids: list[int]) -> None:
        """The account's after-action on committed messages: \\Seen, MOVE (or COPY + delete), or delete."""
        if not uids:
            return
        uids_text = uid_set(uids)
        if after.kind == "seen":
            await self._store(uids_text, r"(\Seen)")
        elif after.kind == "move" and "MOVE" in self.capabilities:
            response = await self._call(self._client.uid("move", uids_text, encode_mailbox(after.folder)), "UID MOVE")
            self._check_target(response, after.folder, "UID MOVE")
        elif after.kind == "move":
            response = await self._call(self._client.uid("copy", uids_text, encode_mailbox(after.folder)), "UID COPY")
            self._check_target(response, after.folder, "UID COPY")
            await self._delete(uids_text)
        else:
            await self._delete(uids_text)

    def _check_target(self, response, folder: str, what: str) -> None:
        if response.result != "OK":
            if "TRYCREATE" in _text(response):
                raise ImapError(f"folder {folder!r} for the after-action does not exist on {self.account.where()}")
            _check(response, what)

    async def _store(self, uids_text: str, flags: str) -> None:
        response = await self._call(self._client.uid("store", uids_text, "+FLAGS.SILENT", flags), "UID STORE")
        _check(response, "UID STORE")

    async def _delete(self, uids_text: str) -> None:
        await self._store(uids_text, r"(\Deleted)")
        if "UIDPLUS" in self.capabilities:
            _check(await self._call(self._client.uid("expunge", uids_text), "UID EXPUNGE"), "UID EXPUNGE")
        elif not self._warned_no_uidplus:
            # A plain EXPUNGE would also remove what other clients marked \Deleted: leave ours flagged.
            log.warning("imap %s: server lacks UIDPLUS; imported mail is flagged \\Deleted but not expunged",
                        self.account.name)
            self._warned_no_uidplus = True

    async def wait_for_news(self, seconds: float) -> bool:
        """Wait in IDLE until the server reports new mail (True), or the selection changed (EXPUNGE) or
        `seconds` pass (False: the caller looks at the folder again).

        Raises ImapError when the connection ends or the server reports a problem during IDLE (Dovecot
        says `* NO` when our folder is deleted): only a new SELECT can tell what the folder is now."""
        if self.news.is_set():
            return True
        client = self._client
        self._alert.clear()
        self.changed.clear()
        idle = await self._call(client.idle_start(timeout=seconds + self.timeout), "IDLE")
        waiters = [asyncio.ensure_future(e.wait()) for e in (self.news, self.changed, self._lost, self._alert)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._lost.is_set():
            raise ImapError(self._closed_text("IDLE"))
        if self._alert.is_set():
            raise ImapError(f"{self.account.where()} reported a problem during IDLE: {self._alert_text}")
        client.idle_done()
        _check(await self._call(idle, "IDLE (DONE)"), "IDLE")
        while not client.protocol.idle_queue.empty():  # we listen to EXISTS ourselves; drop the copies
            client.protocol.idle_queue.get_nowait()
        return self.news.is_set()

    async def wait_polling(self, seconds: float) -> None:
        """Without IDLE: sleep (the caller then asks the server again)."""
        try:
            await asyncio.wait_for(self._lost.wait(), seconds)
        except asyncio.TimeoutError:
            return
        raise ImapError(self._closed_text("the wait for new mail"))


def _text(response) -> str:
    last = response.lines[-1] if response.lines else b""
    return (last.decode(errors="replace") if isinstance(last, (bytes, bytearray)) else str(last)).strip()


def _check(response, what: str) -> None:
    if response.result != "OK":
        raise ImapError(f"{what} failed: {response.result} {_text(response)}")
