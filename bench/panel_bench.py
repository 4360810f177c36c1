"""The panel's ticket list on a large database: page times through the real aiohttp app, signed in.

Run: `.venv/bin/python bench/panel_bench.py [--tickets 100000] [--requests 40] [--only sqlite|postgresql]`.
For each database (a SQLite file in a temp folder; a throwaway PostgreSQL database on 127.0.0.1:5432,
dropped after) it migrates a new schema, fills TICKETS tickets with one message each (bulk inserts through
SQLAlchemy core; the search triggers and indexes of migration 0010 do their work as for any insert), signs
in over HTTP on loopback, and times each kind of page REQUESTS times: median and p99 (the slowest of 40 is
the p99's ceiling; more requests make it meaningful). The pages: the first page of the list, pages deep in
it (following "Next page" links), filters, and text searches for a common, a rare and a missing word.
Every loop is bounded; the only address used is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from bridge.accounts import Secret  # noqa: E402
from storage.database import Database, upgrade_async  # noqa: E402
from storage.models import Customer, Department, Event, Message, Ticket  # noqa: E402
from ticketmail.admin import admins  # noqa: E402
from ticketmail.config import Config  # noqa: E402
from web.app import create_app  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "bench password 1"
DEPARTMENTS = ("Support", "Sales", "Billing", "Abuse", "Hosting")
WORDS = ("server", "invoice", "password", "domain", "backup", "mail", "account", "login", "error", "website",
         "database", "payment", "renewal", "certificate", "dns", "migration", "upgrade", "refund", "outage", "slow")
CHUNK = 5000


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def rows(count: int, customers: int, rng: random.Random):
    """Ticket, message and event rows in chunks; ticket i has the rare word "quux{i}" in its body."""
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    for base in range(0, count, CHUNK):
        tickets, messages, events = [], [], []
        for i in range(base + 1, min(base + CHUNK, count) + 1):
            at = start + timedelta(seconds=i * 300 + rng.randrange(300))
            customer = rng.randrange(1, customers + 1)
            department = rng.randrange(1, len(DEPARTMENTS) + 1)
            tickets.append(dict(id=i, subject=f"{_words(rng, 4)} question {i}", department_id=department,
                                customer_id=customer, status="closed" if rng.random() < 0.7 else "open",
                                priority="normal", tags=["vip"] if rng.random() < 0.05 else [],
                                created_at=at, updated_at=at + timedelta(hours=rng.randrange(48))))
            body = f"Hello,\n{_words(rng, 60)}\nreference quux{i}\n{_words(rng, 40)}\n"
            messages.append(dict(id=i, dedup_key=f"bench-{i}", ticket_id=i, department_id=department,
                                 status="ticket", message_id=f"<bench-{i}@customer.example>",
                                 from_addr=f"customer{customer}@example.com", from_name=f"Customer {customer}",
                                 to_addrs=["support@xyzhosting.com"], cc_addrs=[], subject=tickets[-1]["subject"],
                                 date=at, text=body, html="", sha256="0" * 64, size=len(body), source="lmtp",
                                 source_key="", envelope_sender="", envelope_recipient="support@xyzhosting.com",
                                 received_at=at, verdict=None, raw=body.encode()))
            events.append(dict(message_id=i, at=at, kind="ticket-created", detail="new ticket in Support"))
        yield tickets, messages, events


async def fill(db: Database, count: int) -> float:
    started = time.perf_counter()
    rng = random.Random(42)
    customers = max(1, count // 20)
    async with db.engine.begin() as conn:
        await conn.execute(insert(Department), [dict(id=i, name=n, unknown_sender="accept",
                                                     created_at=datetime.now(timezone.utc))
                                                for i, n in enumerate(DEPARTMENTS, 1)])
        for base in range(0, customers, CHUNK):
            await conn.execute(insert(Customer), [dict(id=i, email=f"customer{i}@example.com", name="", verified=True,
                                                       added_by="cli", created_at=datetime.now(timezone.utc))
                                                  for i in range(base + 1, min(base + CHUNK, customers) + 1)])
    for tickets, messages, events in rows(count, customers, rng):
        async with db.engine.begin() as conn:
            await conn.execute(insert(Ticket), tickets)
            await conn.execute(insert(Message), messages)
            await conn.execute(insert(Event), events)
    if not db.is_sqlite:  # the ids were given: move the sequences past them, and let the planner see the rows
        async with db.engine.begin() as conn:
            for table in ("tickets", "messages", "customers", "departments"):
                await conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE")
    else:
        async with db.engine.begin() as conn:
            await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - started


async def timed(client: TestClient, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    async with client.get(path) as response:
        text = await response.text()
        assert response.status == 200, (path, response.status)
    return time.perf_counter() - started, text


def next_link(text: str) -> str | None:
    found = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', text)
    return "/admin/" + html.unescape(found[1]) if found else None


def shown(text: str) -> int:
    return len(re.findall(r'<td><a href="[^"]*">#\d+</a></td>', text))


async def measure(db: Database, tmp: Path, count: int, requests: int) -> list[tuple[str, int, list[float]]]:
    config = Config(database_url=db.url)
    config.bridge.key_file = str(tmp / "secret.key")
    await admins.add(db, "bench", Secret(PASSWORD), by="bench")
    client = TestClient(TestServer(create_app(db, config), host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/admin/sign-in") as response:
            token = re.search(r'name="csrf" value="([^"]+)"', await response.text())[1]
        async with client.post("/admin/sign-in", data={"csrf": token, "user": "bench", "password": PASSWORD},
                               allow_redirects=False) as response:
            assert response.status == 303, response.status
        rare = count // 2
        pages = {
            "list, first page": "/admin/tickets",
            "department + open": "/admin/tickets?department=Billing&status=open",
            "tag vip": "/admin/tickets?tag=vip",
            "customer": "/admin/tickets?customer=customer7@example.com",
            "search common word": "/admin/tickets?q=invoice",
            "search 2 words + open": "/admin/tickets?q=refund+outage&status=open",
            "search rare word": f"/admin/tickets?q=quux{rare}",
            "search missing word": "/admin/tickets?q=nowhere",
        }
        results = []
        for name, path in pages.items():
            await timed(client, path)  # warm
            times, text = [], ""
            for _ in range(requests):
                t, text = await timed(client, path)
                times.append(t)
            results.append((name, shown(text), times))
        # Deep pages: follow "Next page" from the first page, each page once (a bounded walk).
        for name, start in (("list, next pages", "/admin/tickets"), ("search, next pages", "/admin/tickets?q=invoice")):
            times, path, text = [], start, ""
            for _ in range(requests):
                _, text = await timed(client, path)
                path = next_link(text)
                if path is None:
                    break
                t, text = await timed(client, path)
                times.append(t)
            results.append((f"{name} (to page {len(times) + 1})", shown(text), times))
        return results
    finally:
        await client.close()


def table(kind: str, count: int, fill_seconds: float, results) -> str:
    lines = [f"{kind}: {count} tickets (1 message each), filled in {fill_seconds:.1f} s",
             f"  {'page':40} {'rows':>5} {'n':>4} {'median ms':>10} {'p99 ms':>8}"]
    for name, shown_rows, times in results:
        ordered = sorted(times)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        lines.append(f"  {name:40} {shown_rows:>5} {len(times):>4} {statistics.median(times) * 1000:>10.1f} "
                     f"{p99 * 1000:>8.1f}")
    return "\n".join(lines)


async def run_one(kind: str, count: int, requests: int) -> str:
    import asyncpg

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        name = f"ticketmail_bench_{uuid.uuid4().hex[:8]}"
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        else:
            conn = await asyncpg.connect(PG_ADMIN)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()
            url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        try:
            await upgrade_async(url)
            db = Database(url)
            try:
                seconds = await fill(db, count)
                return table(kind, count, seconds, await measure(db, tmp, count, requests))
            finally:
                await db.dispose()
        finally:
            if kind != "sqlite":
                conn = await asyncpg.connect(PG_ADMIN)
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    for kind in (args.only,) if args.only else ("sqlite", "postgresql"):
        print(asyncio.run(run_one(kind, args.tickets, args.requests)), flush=True)


if __name__ == "__main__":
    main()
