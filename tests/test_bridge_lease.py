"""Two `ticketmail serve` processes on one PostgreSQL: one syncs the account, the other takes over when it dies."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from sqlalchemy import text

from tests.bridge_helpers import (  # noqa: F401 - fixtures
    add_account,
    bridge_key,
    counts,
    departments,
    mails,
    serve,
    tickets_at_least,
    wait_until,
)
from tests.dovecot import dovecot  # noqa: F401 - fixture

LEASE = 6  # seconds; production's default is 30


# Each attempt to take a lease, whether or not it succeeds (a BEFORE INSERT trigger fires before the
# INSERT ... ON CONFLICT finds the lease taken): the proof that a process had its chance to take it.
RECORD_ATTEMPTS = [
    "CREATE TABLE lease_attempts (holder text NOT NULL)",
    "CREATE FUNCTION record_lease_attempt() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN INSERT INTO lease_attempts (holder) VALUES (NEW.holder); RETURN NEW; END $$",
    "CREATE TRIGGER lease_attempt BEFORE INSERT ON imap_leases FOR EACH ROW EXECUTE FUNCTION record_lease_attempt()",
]
# The test database is shared by the whole run: leave its schema as the migrations made it.
FORGET_ATTEMPTS = [
    "DROP TRIGGER lease_attempt ON imap_leases", "DROP FUNCTION record_lease_attempt()", "DROP TABLE lease_attempts",
]


@pytest.fixture
async def lease_attempts(db):
    """Lease attempts are recorded (see attempts_of) during the test."""
    await db.run(lambda s: [s.execute(text(statement)) for statement in RECORD_ATTEMPTS], write=True)
    yield
    await db.run(lambda s: [s.execute(text(statement)) for statement in FORGET_ATTEMPTS], write=True)


def attempts_of(session, pid: int) -> int:
    """How many times the process `pid` tried to take a lease (its holder name is host:pid:random)."""
    return session.scalar(text("SELECT count(*) FROM lease_attempts WHERE holder LIKE :p"), {"p": f"%:{pid}:%"})


def bridge_logins(dovecot) -> int:
    """Logins over TLS: the bridge's and `imap add`'s (this test's own APPENDs log in without TLS)."""
    return sum(1 for line in dovecot.log().splitlines() if "Login: user=<support>" in line and ", TLS" in line)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_one_process_syncs_an_account_and_another_takes_over_when_it_dies(
        dovecot, add_account, db, db_url, cli, tmp_path, bridge_key, lease_attempts):
    assert (await add_account(dovecot))[0] == 0
    assert bridge_logins(dovecot) == 1  # imap add's test
    env = dict(TICKETMAIL_BRIDGE_KEY_FILE=str(bridge_key), TICKETMAIL_BRIDGE_LEASE_SECONDS=str(LEASE))
    logs = {name: tmp_path / f"serve-{name}.log" for name in "ab"}
    files = {name: open(path, "w") for name, path in logs.items()}
    servers = {}
    try:
        servers["a"] = serve(db_url, files["a"], **env)

        async def a_syncs():
            return "imap support: syncing" in logs["a"].read_text()

        await wait_until(a_syncs, 30, lambda: f"A to sync the account; its log:\n{logs['a'].read_text()}")
        servers["b"] = serve(db_url, files["b"], **env)

        async def b_tried_twice():
            return await db.run(attempts_of, servers["b"].pid) >= 2

        await wait_until(b_tried_twice, 30, lambda: f"B to try to take the lease twice; its log:\n"
                                                    f"{logs['b'].read_text()}")
        assert "imap support: syncing" not in logs["b"].read_text(), "B took the lease A holds"

        await asyncio.to_thread(dovecot.append, "support", mails(20, "first"))
        assert await tickets_at_least(db, 20, timeout=30) == 20
        assert "imap support: syncing" not in logs["b"].read_text()
        assert bridge_logins(dovecot) == 2, "only A connected to the IMAP server"
        code, out, _ = await cli("imap", "list", "--json")
        assert f":{servers['a'].pid}:" in json.loads(out)[0]["synced_by"]

        servers["a"].send_signal(signal.SIGKILL)
        await asyncio.to_thread(servers["a"].wait, 10)
        killed = time.monotonic()
        await asyncio.to_thread(dovecot.append, "support", mails(10, "after the kill"))
        assert await tickets_at_least(db, 30, timeout=60, log=logs["b"]) == 30
        assert time.monotonic() - killed < 60
        assert "imap support: syncing" in logs["b"].read_text()
        assert bridge_logins(dovecot) == 3, "B connected once, after A died"
        code, out, _ = await cli("imap", "list", "--json")
        assert f":{servers['b'].pid}:" in json.loads(out)[0]["synced_by"]
        assert (await counts(db)) == (30, 30)
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(server.wait, 30) == 0
        for f in files.values():
            f.close()
    code, out, _ = await cli("imap", "list", "--json")
    assert json.loads(out)[0]["synced_by"] is None, "a clean stop gives the lease up"
