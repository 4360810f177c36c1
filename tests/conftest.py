"""Fixtures: every storage test runs on SQLite and on PostgreSQL, through real servers on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from graphlib import TopologicalSorter

import pytest

from ingest.lmtp import Limits, LMTPListener
from ingest.pipeline import Pipeline
from storage.database import Database, upgrade

PG_ADMIN_URL = os.environ.get("TICKETMAIL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject.toml): a worker per core and one more, as most tests wait on a server or a
    process rather than compute (measured on 2 cores: 2 workers 96 s, 3 workers 85 s, 4 no faster)."""
    return (os.cpu_count() or 1) + 1


def _pg(coro_fn):
    import asyncpg

    async def go():
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            return await coro_fn(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return str(path)


@pytest.fixture(scope="session")
def pg_database():
    """A fresh PostgreSQL database for this test run (for each xdist worker: its own), migrated once; dropped
    at the end."""
    name = f"ticketmail_test_{uuid.uuid4().hex[:10]}"
    try:
        _pg(lambda c: c.execute(f'CREATE DATABASE "{name}"'))
    except Exception as e:  # noqa: BLE001 - any failure to reach the server
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {e}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {e}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    url = f"{base.replace('postgresql://', 'postgresql+asyncpg://')}/{name}"
    upgrade(url)
    yield url
    _pg(lambda c: c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _empty_pg(url: str) -> None:
    """Delete every row and restart the id sequences: the database as migrated.

    DELETE, tables that refer to others first, rather than TRUNCATE: on the few rows a test leaves it
    costs a fifth (TRUNCATE makes new files for every table and syncs them), once per PostgreSQL test."""
    import asyncpg

    async def go():
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            tables = [r["tablename"] for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'alembic_version'")]
            refers = {t: set() for t in tables}
            for r in await conn.fetch("SELECT conrelid::regclass::text AS t, confrelid::regclass::text AS r "
                                      "FROM pg_constraint WHERE contype = 'f'"):
                if r["t"] != r["r"] and r["t"] in refers:
                    refers[r["t"]].add(r["r"])
            sequences = [r["sequencename"] for r in await conn.fetch(
                "SELECT sequencename FROM pg_sequences WHERE schemaname='public'")]
            async with conn.transaction():
                for table in reversed(list(TopologicalSorter(refers).static_order())):
                    await conn.execute(f'DELETE FROM "{table}"')
                for sequence in sequences:
                    await conn.execute(f'ALTER SEQUENCE "{sequence}" RESTART')
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty, migrated database of each kind (of one kind under `one_database`)."""
    if request.param == "sqlite":
        path = tmp_path / "ticketmail.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    url = request.getfixturevalue("pg_database")
    _empty_pg(url)
    return url


# For tests the database plays no part in (HTTP headers, command line parsing and warnings, terminal
# escaping, protocol replies): they need a database to run, not both kinds of it.
one_database = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def db(db_url):
    database = Database(db_url)
    yield database
    await database.dispose()


@pytest.fixture
def cli(db_url, monkeypatch, capsys):
    """Run a `ticketmail` command in this process; returns (exit code, stdout, stderr)."""
    from ticketmail.cli import main

    monkeypatch.setenv("TICKETMAIL_DATABASE_URL", db_url)
    monkeypatch.delenv("TICKETMAIL_CONFIG", raising=False)

    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
async def pipeline(db):
    """The pipeline with its writer on the test's loop: for what the pipeline decides (no process)."""
    p = Pipeline(db, in_process=True)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def writer_process_pipeline(db):
    """The pipeline with its writer process, as `serve` runs it: for tests the process plays a part in."""
    p = Pipeline(db)
    await p.start()
    yield p
    await p.stop()


@asynccontextmanager
async def listening(pipeline: Pipeline, **limits) -> AsyncIterator[LMTPListener]:
    """The real LMTP listener on a free loopback port, delivering through `pipeline`."""
    listener = LMTPListener(pipeline, host="127.0.0.1", port=0, limits=Limits(**limits))
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(grace=5)


@pytest.fixture
async def lmtp(pipeline):
    """The LMTP listener with the writer on the test's loop: for what the protocol and the pipeline do."""
    async with listening(pipeline, max_message_bytes=4_000_000) as listener:
        yield listener


@pytest.fixture
async def writer_process_lmtp(writer_process_pipeline):
    """The LMTP listener delivering through the writer process, as `serve` runs it."""
    async with listening(writer_process_pipeline, max_message_bytes=4_000_000) as listener:
        yield listener


def lmtp_send(port: int, sender: str, recipients: list[str], raw: bytes) -> list[tuple[int, bytes]]:
    """Deliver over LMTP with smtplib; returns the (code, text) reply of every recipient after DATA.

    smtplib.LMTP reads one reply after DATA; LMTP sends one per accepted recipient, so read the rest.
    """
    with closing(smtplib.LMTP("127.0.0.1", port)) as client:  # no QUIT: a server shutting down says 421 to it
        client.ehlo_or_helo_if_needed()
        code, msg = client.mail(sender)
        assert code == 250, msg
        accepted, replies = [], []
        for r in recipients:
            code, msg = client.rcpt(r)
            if code == 250:
                accepted.append(r)
            replies.append((r, code, msg))
        if not accepted:
            return [(c, m) for _, c, m in replies]
        first = client.data(raw)
        after = [first] + [client.getreply() for _ in accepted[1:]]
        it = iter(after)
        return [next(it) if c == 250 else (c, m) for _, c, m in replies]


async def deliver(port: int, sender: str, recipients: list[str] | str, raw: bytes):
    if isinstance(recipients, str):
        recipients = [recipients]
    return await asyncio.to_thread(lmtp_send, port, sender, recipients, raw)


async def race_in_two_processes(db: Database, pairs: list[tuple]) -> list:
    """Deliver each pair of deliveries at the same time through two ticketmail processes (two pipelines,
    each with its writer process and engine) on one database; the outcomes, pair by pair."""
    other = Database(db.url)
    first, second = Pipeline(db), Pipeline(other)
    await first.start()
    await second.start()
    try:
        return await asyncio.gather(*(p.deliver(d) for pair in pairs for p, d in zip((first, second), pair)))
    finally:
        await first.stop()
        await second.stop()
        await other.dispose()
