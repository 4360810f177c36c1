"""Helpers for the IMAP bridge tests: accounts added through the real CLI, a bridge running in-process."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from sqlalchemy import func, select

from bridge.supervisor import Supervisor
from bridge.sync import Options
from storage.models import Message, Ticket
from tests.dovecot import USERS
from tests.ports import free_port
from tests.mail import message
from ticketmail.config import Config

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
# Short timeouts and backoff so a test sees a reconnect within seconds; the defaults are for production.
FAST = Options(timeout=10, batch=100, idle_seconds=60, backoff_base=0.2, backoff_cap=2)


@pytest.fixture
def bridge_key(monkeypatch, tmp_path):
    """The key file of this test (created by the first `imap add`), never the working directory's."""
    path = tmp_path / "secret.key"
    monkeypatch.setenv("TICKETMAIL_BRIDGE_KEY_FILE", str(path))
    monkeypatch.delenv("TICKETMAIL_BRIDGE_KEY", raising=False)
    return path


@pytest.fixture
async def departments(cli):
    for name, address in (("Support", SUPPORT), ("Sales", SALES)):
        code, _, err = await cli("department", "add", name, "--address", address, "--unknown-sender", "accept")
        assert code == 0, err


@pytest.fixture
def add_account(cli, monkeypatch, bridge_key, departments):
    """`ticketmail imap add` against the Dovecot given, implicit TLS with its test CA unless told otherwise."""

    async def add(dovecot, name="support", *extra, user=None, email=None, password=None,
                  port=None, ca=True) -> tuple[int, str, str]:
        user = user or name
        password = USERS[user] if password is None else password
        monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
        argv = ["imap", "add", name, "--email", email or f"{user}@xyzhosting.com", "--server", "127.0.0.1",
                "--port", str(port or dovecot.tls_port), "--user", user, "--password-stdin"]
        if ca:
            argv += ["--ca-file", str(dovecot.ca_file)]
        return await cli(*argv, *extra)

    return add


@pytest.fixture
async def run_bridge(db, pipeline, bridge_key):
    """Start the bridge's supervisor in this process (as `serve` does); stopped at the end of the test."""
    started: list[Supervisor] = []

    async def start(options: Options = FAST, with_pipeline=None) -> Supervisor:
        config = Config()
        config.bridge.key_file = str(bridge_key)
        supervisor = Supervisor(db, config, options, scan_seconds=0.3)
        await supervisor.check()
        await supervisor.start(with_pipeline or pipeline)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        await supervisor.stop()


def mails(count: int, prefix: str, to: str = SUPPORT, frm: str = "Alice <alice@customer.example>") -> list[bytes]:
    return [message(frm=frm, to=to, subject=f"{prefix} {n}", body=f"message {n} of {count}\n") for n in range(count)]


async def counts(db) -> tuple[int, int]:
    """(tickets, messages) in the database."""
    async with db.session() as s:
        return (await s.scalar(select(func.count(Ticket.id))), await s.scalar(select(func.count(Message.id))))


async def wait_until(check, timeout: float, what: str | Callable[[], str] | None = None, interval: float = 0.05):
    """Poll the async `check()` until it returns something true; returns that value. Fails the test
    when `timeout` passes first, naming `what` (a text, or a function giving one at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            about = what() if callable(what) else what or getattr(check, "__name__", "the condition")
            pytest.fail(f"timed out after {timeout} s waiting for {about} (last value: {value!r})")
        await asyncio.sleep(interval)


async def tickets_at_least(db, n: int, timeout: float, log: Path | None = None) -> int:
    """Wait until there are `n` tickets or more; their number. Fails the test (showing `log`) if not in time."""
    async def check():
        tickets, _ = await counts(db)
        return tickets if tickets >= n else 0

    return await wait_until(check, timeout, lambda: f"{n} tickets" + (f"; {log}:\n{log.read_text()}" if log else ""))


def serve(db_url: str, log, **env) -> subprocess.Popen:
    """`ticketmail serve` in a process of its own, on free ports, logging to `log`."""
    environment = dict(os.environ, TICKETMAIL_DATABASE_URL=db_url, TICKETMAIL_LMTP_PORT=str(free_port()),
                       TICKETMAIL_WEB_PORT=str(free_port()), **env)
    return subprocess.Popen([sys.executable, "-m", "ticketmail.cli", "serve"], env=environment,
                            stdout=log, stderr=log)
