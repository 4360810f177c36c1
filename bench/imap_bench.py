"""IMAP import throughput: the bridge (whole pipeline, tickets in SQLite) against mbsync and a bare aioimaplib loop.

Run: `.venv/bin/python bench/imap_bench.py [--count 5000] [--tls]`. One Dovecot (tests/dovecot.py: own config
in a temp folder, loopback only) gets COUNT unique ~4 KB messages by APPEND; then, in the same run and
from the same mailbox:

1. mbsync (Debian `isync`) pulls the folder into a fresh Maildir;
2. a bare aioimaplib loop: UID SEARCH, then UID FETCH BODY.PEEK[] in batches of 100, messages discarded;
3. the bridge: one account's sync loop (bridge/sync.py) into the real pipeline, every message a ticket
   of a known customer, committed to SQLite (WAL, synchronous=FULL), then flagged \\Seen on the server
   and the checkpoint advanced, as in production.

Each prints messages/s; the ratios to mbsync come last. The issue's goal: bridge >= 0.25 x mbsync.
Every loop is bounded by the message count; the only address used is 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dovecot import Dovecot  # noqa: E402

USER, PASSWORD = "support", "support-pw"
RCPT = "support@xyzhosting.com"
SENDER = "alice@customer.example"


def message(n: int) -> bytes:
    """A ~4 KB multipart/alternative message, unique by Message-ID and subject."""
    text = "Hello support,\n\n" + textwrap.fill(f"ticket {n}: our invoice shows the wrong VAT number. " * 28, 72)
    html = "<html><body><p>\n" + text.replace("\n", "<br>\n") + "\n</p></body></html>"
    received = [f"Received: from mx{i}.customer.example (mx{i}.customer.example [192.0.2.{i}]) by "
                f"mx.xyzhosting.com with ESMTPS id 4Xyz{i}; Sat, 28 Nov 2026 10:00:0{i} +0000" for i in range(3)]
    lines = received + [f"Return-Path: <{SENDER}>", f"From: Alice Customer <{SENDER}>", f"To: Support <{RCPT}>",
                        f"Subject: Invoice question {n}", "Date: Sat, 28 Nov 2026 10:00:00 +0000",
                        f"Message-ID: <bench-{n}@customer.example>", "MIME-Version: 1.0",
                        "Content-Type: multipart/alternative; boundary=b1", "",
                        "--b1", "Content-Type: text/plain; charset=utf-8", "", text,
                        "--b1", "Content-Type: text/html; charset=utf-8", "", html, "--b1--", ""]
    return "\r\n".join(lines).encode()


def fill(server: Dovecot, count: int) -> float:
    """APPEND `count` messages on one connection; returns the average size."""
    sizes = 0
    with server.client(USER) as c:
        for n in range(count):
            raw = message(n)
            sizes += len(raw)
            typ, data = c.append("INBOX", None, None, raw)
            assert typ == "OK", data
    return sizes / count


def run_mbsync(server: Dovecot, work: Path, tls: bool) -> tuple[int, float]:
    target = work / "mbsync"
    target.mkdir()
    security = ["SSLType IMAPS", f"CertificateFile {server.ca_file}"] if tls else ["SSLType None"]
    config = work / "mbsyncrc"
    config.write_text("\n".join([
        "IMAPAccount bench", "Host 127.0.0.1", f"Port {server.tls_port if tls else server.port}", f"User {USER}",
        f"Pass {PASSWORD}", "AuthMechs LOGIN", *security, "",
        "IMAPStore remote", "Account bench", "",
        "MaildirStore local", f"Path {target}/", f"Inbox {target}/INBOX", "",
        "Channel bench", "Far :remote:", "Near :local:", "Patterns INBOX", "Create Near", "Sync Pull",
        "SyncState *", "",
    ]))
    start = time.perf_counter()
    result = subprocess.run(["mbsync", "-q", "-c", str(config), "bench"], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mbsync failed: {result.stderr.strip()}")
    got = len(list((target / "INBOX" / "cur").iterdir())) + len(list((target / "INBOX" / "new").iterdir()))
    return got, elapsed


async def run_bare(server: Dovecot, tls: bool, batch: int = 100) -> tuple[int, float]:
    import aioimaplib

    start = time.perf_counter()
    if tls:
        client = aioimaplib.IMAP4_SSL("127.0.0.1", server.tls_port, ssl_context=server.tls_context(), timeout=60)
    else:
        client = aioimaplib.IMAP4("127.0.0.1", server.port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(USER, PASSWORD)
    await client.select("INBOX")
    response = await client.uid_search("ALL", charset=None)
    uids = [int(u) for line in response.lines[:-1] for u in line.split()]
    got = 0
    for i in range(0, len(uids), batch):
        chunk = uids[i:i + batch]
        response = await client.uid("fetch", f"{chunk[0]}:{chunk[-1]}", "(UID BODY.PEEK[])")
        got += sum(1 for line in response.lines if isinstance(line, bytearray))
    elapsed = time.perf_counter() - start
    await client.logout()
    return got, elapsed


async def run_bridge(server: Dovecot, work: Path, count: int, tls: bool) -> tuple[int, float]:
    from cryptography.fernet import Fernet
    from sqlalchemy import func, select

    from bridge.accounts import Secret, account_from_row, encrypt
    from bridge.sync import AccountSync, Options
    from ingest.pipeline import Pipeline
    from storage import imap_store
    from storage.database import Database, upgrade_async
    from storage.models import Customer, Department, DepartmentAddress, ImapAccount, Ticket

    url = f"sqlite+aiosqlite:///{work}/bench.db"
    await upgrade_async(url)
    db = Database(url)
    key = Fernet(Fernet.generate_key())

    def setup(s):
        dept = Department(name="Support", unknown_sender="accept", addresses=[DepartmentAddress(address=RCPT)])
        s.add_all([dept, Customer(email=SENDER, verified=True)])
        s.add(ImapAccount(name="bench", email=RCPT, server="127.0.0.1", port=server.tls_port if tls else server.port,
                          security="tls" if tls else "none", username=USER,
                          password_encrypted=encrypt(key, PASSWORD), folder="INBOX", after_action="seen",
                          poll_seconds=60, ca_file=str(server.ca_file), verify_tls=True, enabled=True,
                          last_uid=0, rescan_below=0, backlog=0, last_error=""))

    await db.run(setup, write=True)
    row = (await db.run(imap_store.accounts))[0]
    account = account_from_row(row, Secret(PASSWORD))
    pipeline = Pipeline(db)
    await pipeline.start()
    sync = AccountSync(account, db, pipeline, Options(batch=100))
    start = time.perf_counter()
    task = asyncio.create_task(sync.run())
    deadline = start + 600
    while time.perf_counter() < deadline and sync.checkpoint < count:  # committed, flagged, checkpoint written
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pipeline.stop()
    async with db.session() as s:
        tickets = await s.scalar(select(func.count(Ticket.id)))
    await db.dispose()
    return tickets, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--tls", action="store_true", help="implicit TLS for all three (default: plain loopback)")
    args = parser.parse_args()
    if not shutil.which("mbsync"):
        raise SystemExit("mbsync is not installed (Debian: apt-get install isync)")
    import logging

    logging.basicConfig(level=logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="ticketmail-imap-bench-"))
    server = Dovecot({USER: PASSWORD}).start()
    try:
        t = time.perf_counter()
        size = fill(server, args.count)
        print(f"mailbox: {args.count} messages of {size / 1024:.1f} KB on average, APPENDed in "
              f"{time.perf_counter() - t:.1f} s; {'implicit TLS' if args.tls else 'plain IMAP'} on 127.0.0.1")
        results = {}
        got, elapsed = run_mbsync(server, work, args.tls)
        results["mbsync (isync) into a Maildir"] = (got, elapsed)
        got, elapsed = asyncio.run(run_bare(server, args.tls))
        results["bare aioimaplib UID FETCH, batches of 100"] = (got, elapsed)
        got, elapsed = asyncio.run(run_bridge(server, work, args.count, args.tls))
        results["ticketmail bridge -> tickets (SQLite)"] = (got, elapsed)
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    base = results["mbsync (isync) into a Maildir"]
    base_rate = base[0] / base[1]
    for name, (got, elapsed) in results.items():
        rate = got / elapsed
        print(f"{name:45} {got:6d} msgs in {elapsed:6.2f} s = {rate:8.0f} msgs/s  ({rate / base_rate:.2f} x mbsync)")
    bridge = results["ticketmail bridge -> tickets (SQLite)"]
    ratio = (bridge[0] / bridge[1]) / base_rate
    print(f"goal: bridge >= 0.25 x mbsync: {'met' if ratio >= 0.25 else 'NOT met'} ({ratio:.2f})")


if __name__ == "__main__":
    main()
