"""Engine, sessions and schema versioning for SQLite (embedded) and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from storage.files import create_sqlite_file, sqlite_path

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaOutdated(RuntimeError):
    pass


def describe(url: str) -> str:
    """The database for a message to the operator: a SQLite file as an absolute path, else the URL
    without its password."""
    path = sqlite_path(url)
    if path is not None:
        return str(path.resolve())
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_setup(engine: Engine) -> None:
    """WAL + synchronous=FULL: a 250 means the message is on disk.

    pysqlite's own transaction handling breaks SAVEPOINT; we emit BEGIN ourselves, and
    BEGIN IMMEDIATE for writers so a read never has to be upgraded to a write lock.
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        immediate = conn.get_execution_options().get("sqlite_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One engine per loop; `session()` for reads, `writer()` for write transactions, `run()` for both."""

    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        create_sqlite_file(url)  # mail is in it: 0600 (and its folder 0700) before SQLite makes it 0644
        self.engine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            _sqlite_setup(self.engine.sync_engine)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)
        self.writer = async_sessionmaker(
            self.engine.execution_options(sqlite_immediate=True), expire_on_commit=False
        )

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def run(self, fn, *args, write: bool = False):
        """Call `fn(session, *args)` (a store function) in one transaction, committed on success."""
        async with (self.writer if write else self.session)() as session, session.begin():
            return await session.run_sync(fn, *args)

    def sync_sqlite_sessions(self) -> sessionmaker:
        """Blocking sessions on the same SQLite file, for the writer process, which does nothing else:
        no round trip through aiosqlite's thread for every statement."""
        url = make_url(self.url).set(drivername="sqlite+pysqlite")
        engine = create_engine(url, execution_options={"sqlite_immediate": True})
        _sqlite_setup(engine)
        return sessionmaker(engine, expire_on_commit=False)

    async def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        async with self.engine.connect() as conn:
            return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())

    async def check_schema(self) -> None:
        """Raise SchemaOutdated (one line for the operator) unless the schema is at head."""
        current, head = await self.current_revision(), head_revision()
        if current != head:
            raise SchemaOutdated(
                f"database {describe(self.url)}: schema is at {current or 'nothing'}, this ticketmail needs "
                f"{head}: run `ticketmail db upgrade` (or `serve --upgrade`)"
            )


def _alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("")).get_current_head()


def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the schema to head (synchronous; runs its own event loop); the revisions before (None:
    a new database) and after."""
    from alembic import command

    create_sqlite_file(url)
    config = _alembic_config(url)
    before: list[str | None] = []
    config.attributes["on_revision"] = before.append  # storage/migrations/env.py reports it
    command.upgrade(config, "head")
    return (before[0] if before else None), head_revision()


async def upgrade_async(url: str) -> tuple[str | None, str]:
    return await asyncio.to_thread(upgrade, url)
