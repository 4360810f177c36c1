"""The files that hold mail and the key to the IMAP passwords are the service user's alone."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from storage.database import Database, upgrade
from tests.bridge_helpers import serve


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask():
    """022, the common default, under which files come out world-readable unless created otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


async def test_a_new_database_its_folder_and_its_wal_are_private(tmp_path, usual_umask):
    folder = tmp_path / "var"
    path = folder / "ticketmail.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)  # `ticketmail db upgrade` on a new installation
    assert mode(folder) == 0o700 and mode(path) == 0o600

    db = Database(url)
    try:
        async with db.writer() as session, session.begin():
            await session.execute(text("CREATE TABLE probe (x)"))
        # While a connection is open in WAL mode, the -wal and -shm files exist (SQLite gives them the
        # main file's mode).
        for suffix in ("-wal", "-shm"):
            assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
    finally:
        await db.dispose()


async def test_opening_a_database_that_does_not_exist_yet_creates_it_private(tmp_path, usual_umask):
    path = tmp_path / "fresh" / "x.db"
    db = Database(f"sqlite+aiosqlite:///{path}")  # e.g. `tickets list` before `db upgrade`
    try:
        async with db.session() as session:
            await session.execute(text("SELECT 1"))
    finally:
        await db.dispose()
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


def test_the_key_file_and_a_folder_made_for_it_are_private(tmp_path, usual_umask):
    from bridge.accounts import load_key
    from ticketmail.config import Bridge

    path = tmp_path / "var" / "secret.key"
    load_key(Bridge(key_file=str(path)), create=True)  # the first `imap add`, before any database file
    assert mode(path.parent) == 0o700 and mode(path) == 0o600


def _started(log: Path, server, seconds: float = 60) -> str:
    """The log once serve says it is ready; raises if it exits or takes longer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        text_ = log.read_text()
        if "; ready" in text_:
            return text_
        if server.poll() is not None:
            raise AssertionError(f"serve exited with {server.returncode}: {text_}")
        time.sleep(0.1)
    raise AssertionError(f"serve did not get ready in {seconds} s: {log.read_text()}")


def _serve_log(url: str, key: Path, log: Path) -> str:
    with open(log, "w") as out:
        server = serve(url, out, TICKETMAIL_BRIDGE_KEY_FILE=str(key))
        try:
            return _started(log, server)
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0, log.read_text()


async def test_serve_warns_in_one_line_about_a_database_or_key_file_others_can_read(tmp_path):
    path = tmp_path / "ticketmail.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(upgrade, url)
    key = tmp_path / "secret.key"
    key.write_text("not needed while no IMAP account exists\n")
    path.chmod(0o644)
    key.chmod(0o640)

    log = await asyncio.to_thread(_serve_log, url, key, tmp_path / "serve1.log")
    (warning,) = [line for line in log.splitlines() if "readable by other users" in line]
    assert f"{path} (0644)" in warning and f"{key} (0640)" in warning
    assert f"(chmod 600 {path} {key})" in warning

    path.chmod(0o600)
    key.chmod(0o600)
    log = await asyncio.to_thread(_serve_log, url, key, tmp_path / "serve2.log")
    assert "readable by other users" not in log  # the check runs before "ready"
