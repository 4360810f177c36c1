"""An IMAP server that quotes our LOGIN back: the password never reaches an admin's screen, the database or a log.

Dovecot never echoes credentials, so the peer here is a tiny IMAP server of the test's own that answers
LOGIN with `NO ... <the command it got>` (and every other connection with a BYE quoting it), adding the
password as typed and in base64, alone and as AUTHENTICATE PLAIN's `\\0user\\0password`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import sys

from tests.bridge_helpers import SUPPORT, bridge_key, departments, run_bridge  # noqa: F401 - fixtures
from tests.conftest import one_database

USER = "support"
# A quote and a backslash: on the wire (an IMAP quoted string) it is spelled differently than typed.
PASSWORD = 's3cr"et\\pa55-Xyz'


def spellings(user: str, password: str) -> list[str]:
    """Every way the echo below spells the password."""
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    return [password, quoted, base64.b64encode(password.encode()).decode(),
            base64.b64encode(f"\0{user}\0{password}".encode()).decode()]


def unquote(token: str) -> str:
    out, chars = [], iter(token[1:-1])
    for ch in chars:
        out.append(next(chars) if ch == "\\" else ch)
    return "".join(out)


class EchoingImap:
    """Odd connections: `NO` quoting the LOGIN command; even ones: `* BYE` quoting it, then goodbye."""

    def __init__(self):
        self.logins = 0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> EchoingImap:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] echo ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, rest = line.decode().rstrip("\r\n").partition(" ")
                command, _, args = rest.partition(" ")
                if command.upper() == "CAPABILITY":
                    writer.write(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n".encode())
                elif command.upper() == "LOGIN":
                    self.logins += 1
                    user, _, password = args.partition(" ")
                    user, password = unquote(user), unquote(password)
                    b64, plain = spellings(user, password)[2:]
                    echo = f"you sent: {line.decode().rstrip()} (password {password}, base64 {b64}, PLAIN {plain})"
                    if self.logins % 2:
                        writer.write(f"{tag} NO [AUTHENTICATIONFAILED] {echo}\r\n".encode())
                    else:
                        writer.write(f"* BYE {echo}\r\n".encode())
                        await writer.drain()
                        break
                else:
                    writer.write(f"{tag} BAD unexpected\r\n".encode())
                await writer.drain()
        finally:
            writer.close()

    async def wait_for_logins(self, count: int, seconds: float = 30) -> None:
        for _ in range(int(seconds / 0.05)):
            if self.logins >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} LOGIN attempts, got {self.logins}")


def assert_no_password(text: str) -> None:
    leaked = [form for form in spellings(USER, PASSWORD) if form in text]
    assert not leaked, f"password spelled {leaked} in: {text}"


async def imap_add(cli, monkeypatch, port: int, *extra: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    return await cli("imap", "add", "support", "--email", SUPPORT, "--server", "127.0.0.1", "--port", str(port),
                     "--security", "none", "--user", USER, "--password-stdin", *extra)


@one_database
async def test_a_server_quoting_our_login_never_shows_the_password(
        cli, monkeypatch, bridge_key, departments, run_bridge, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level: aioimaplib's own lines included
    server = await EchoingImap().start()
    try:
        # imap add tests the account first: the server's NO is the error the admin reads.
        code, out, err = await imap_add(cli, monkeypatch, server.port)
        assert code == 1 and "nothing saved" in err
        assert f"login failed for user {USER} on 127.0.0.1:{server.port}: [AUTHENTICATIONFAILED] you sent:" in err
        assert "********" in err
        assert_no_password(out + err)

        assert (await imap_add(cli, monkeypatch, server.port, "--no-test"))[0] == 0
        code, out, err = await cli("imap", "test", "support")  # the second connection: a BYE
        assert code == 1 and "closed the connection during LOGIN: you sent:" in err
        assert_no_password(out + err)

        # The bridge retries: several NOs and BYEs, each logged and stored on the account.
        await run_bridge()
        await server.wait_for_logins(server.logins + 4)
        for _ in range(200):
            (account,) = json.loads((await cli("imap", "list", "--json"))[1])
            if account["last_error"]:
                break
            await asyncio.sleep(0.05)
        assert "you sent:" in account["last_error"], account
        assert_no_password(json.dumps(account, ensure_ascii=False) + account["last_error"])
        assert_no_password((await cli("imap", "list"))[1])
    finally:
        await server.stop()
    log = caplog.text
    assert "login failed for user support" in log and "closed the connection during LOGIN: you sent:" in log
    assert_no_password(log)


def test_only_the_words_of_status_lines_are_masked_so_data_stays_exact():
    from bridge.responses import redact_status, secret_spellings

    secrets = secret_spellings("u", "1234")  # a short password that is also a number the server reports
    assert redact_status(b"A1 NO [AUTHENTICATIONFAILED] you sent LOGIN u 1234", secrets) == \
        b"A1 NO [AUTHENTICATIONFAILED] you sent LOGIN u ********"
    assert redact_status(b"* BYE quoting 1234", secrets) == b"* BYE quoting ********"
    assert redact_status(b"+ go on, 1234", secrets) == b"+ go on, ********"
    assert redact_status(b"A2 NO [ALERT 1234] 1234", secrets) == b"A2 NO [ALERT ********] ********"
    assert redact_status(b"* OK [UNSEEN] said 1234", secrets) == b"* OK [UNSEEN] said ********"
    for line in (b"* OK [UIDVALIDITY 1234] UIDs valid", b"* 3 FETCH (UID 1234 BODY[] {12}", b"* SEARCH 1234",
                 b"* 1234 EXISTS", b"* CAPABILITY IMAP4rev1 X1234"):
        assert redact_status(line, secrets) == line
