"""Runs one sync loop per enabled IMAP account, beside LMTP and the web app, and keeps them apart.

Every few seconds it re-reads the accounts (so `imap add/remove/enable/disable` take effect without a
restart) and starts, restarts or stops loops to match. A loop's failure is its own: it backs off and
retries, and nothing else notices.

On PostgreSQL several `serve` processes share the accounts: each account is synced only by the
process holding its lease (a row with an expiry, renewed every third of `[bridge] lease_seconds` by
the database's clock). A process that dies stops renewing, and another takes the account over once the
lease has expired. A holder that cannot renew stops its loops before the lease can expire, so two
processes never sync one account at once. On SQLite there is one process, and no lease.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import time
import uuid
from collections import Counter

from bridge.accounts import Account, BridgeKeyError, account_from_row, decrypt, load_key
from bridge.sync import AccountSync, Options
from ingest.periodic import Periodic
from storage import imap_store
from storage.database import Database

log = logging.getLogger(__name__)


class Supervisor(Periodic):
    """Each round (every `scan_seconds`) matches the running sync loops to the accounts and leases."""

    name = "imap-supervisor"

    def __init__(self, db: Database, config, options: Options = Options(), scan_seconds: float | None = None):
        self.db = db
        self.bridge_config = config.bridge
        self.options = options
        self.lease_seconds = float(config.bridge.lease_seconds)
        self.interval = scan_seconds or max(1.0, self.lease_seconds / 3)
        self.use_leases = not db.is_sqlite
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pipeline = None
        self.loops: dict[int, tuple[Account, asyncio.Task, AccountSync]] = {}
        # By account name, for /metrics: every error of a sync loop ends its connection (a reconnect);
        # an account that cannot be synced at all (its password does not open) counts as an error only.
        self.reconnects: Counter[str] = Counter()
        self.config_errors: Counter[str] = Counter()
        self._key = None
        self._renewed_at = 0.0  # monotonic time a lease renewal was sent that then succeeded
        self._reported: dict[int, str] = {}  # account id -> the configuration error last logged

    async def check(self) -> None:
        """At start-up: raise BridgeKeyError (one line) if the key cannot open the enabled accounts' passwords."""
        rows = [r for r in await self.db.run(imap_store.accounts) if r.enabled]
        if rows:
            key = load_key(self.bridge_config)
            for row in rows:
                decrypt(key, row.password_encrypted, row.name)
            self._key = key

    async def start(self, pipeline) -> None:
        self.pipeline = pipeline
        await super().start()

    async def stop(self) -> None:
        """Stop every loop (in-flight deliveries are committed or fetched again later) and free the leases."""
        await super().stop()
        await self._stop_loops(list(self.loops))
        if self.use_leases:
            try:
                await self.db.run(imap_store.release_leases, self.holder, write=True)
            except Exception as e:  # noqa: BLE001 - the leases expire on their own
                log.warning("imap: could not release the leases (they expire in %g s): %s", self.lease_seconds, e)

    async def failed(self, error: Exception) -> None:
        """E.g. the database is down: keep trying, but stop syncing before the leases may have expired."""
        log.warning("imap: cannot read the accounts or leases: %s", str(error).splitlines()[0])
        if self.use_leases and self.loops and time.monotonic() - self._renewed_at > self.lease_seconds * 2 / 3:
            log.warning("imap: leases could not be renewed: stopping the sync before another "
                        "process may take the accounts over")
            await self._stop_loops(list(self.loops))

    async def run_once(self) -> None:
        wanted = await self._wanted()
        if self.use_leases:
            sent = time.monotonic()
            held = await self.db.run(self._take_leases, sorted(wanted), write=True)
            self._renewed_at = sent
            for account_id in set(wanted) - held:
                if account_id in self.loops:
                    log.warning("imap %s: lease lost to another process; stopped here", wanted[account_id].name)
            wanted = {i: a for i, a in wanted.items() if i in held}
        stale = [i for i, (account, task, _) in self.loops.items()
                 if wanted.get(i) != account or task.done()]
        for account_id in stale:
            _, task, _ = self.loops[account_id]
            if task.done() and not task.cancelled() and task.exception():
                log.error("imap: sync loop ended unexpectedly", exc_info=task.exception())
        await self._stop_loops(stale)
        for account_id, account in wanted.items():
            if account_id not in self.loops:
                self._start_loop(account)

    async def _wanted(self) -> dict[int, Account]:
        """The enabled accounts whose password opens, by id."""
        wanted = {}
        for row in await self.db.run(imap_store.accounts):
            if not row.enabled:
                self._reported.pop(row.id, None)
                continue
            try:
                self._key = self._key or load_key(self.bridge_config)
                wanted[row.id] = account_from_row(row, decrypt(self._key, row.password_encrypted, row.name))
                self._reported.pop(row.id, None)
            except (BridgeKeyError, ValueError) as e:
                await self._report(row, str(e))
        return wanted

    async def _report(self, row, error: str) -> None:
        """A configuration error, once in the log and on the account (`imap list`), not at every scan."""
        if self._reported.get(row.id) == error:
            return
        self._reported[row.id] = error
        log.error("imap %s: not synced: %s", row.name, error)
        self.config_errors[row.name] += 1
        await self.db.run(imap_store.record_error, row.id, error, write=True)

    def activity(self) -> dict[str, str]:
        """What each account's sync loop in this process does now, by account name (the panel shows it)."""
        return {account.name: sync.activity for account, _, sync in self.loops.values()}

    def _take_leases(self, session, account_ids: list[int]) -> set[int]:
        held = {i for i in account_ids if imap_store.take_lease(session, i, self.holder, self.lease_seconds)}
        gone = [i for i in self.loops if i not in account_ids]
        if gone:
            imap_store.release_leases(session, self.holder, gone)
        return held

    def _start_loop(self, account: Account) -> None:
        sync = AccountSync(account, self.db, self.pipeline, self.options, self.reconnects)
        task = asyncio.create_task(sync.run(), name=f"imap-{account.name}")
        self.loops[account.id] = (account, task, sync)
        where = f" (lease holder {self.holder})" if self.use_leases else ""
        log.info("imap %s: syncing %s on %s in this process%s", account.name, account.folder, account.where(), where)

    async def _stop_loops(self, account_ids: list[int]) -> None:
        tasks = []
        for account_id in account_ids:
            account, task, _ = self.loops.pop(account_id)
            task.cancel()
            tasks.append(task)
            log.info("imap %s: sync stopped in this process", account.name)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:  # a bug: say where it hangs
                stack = io.StringIO()
                task.print_stack(file=stack)
                log.error("imap: %s did not stop within 10 s: %s", task.get_name(), stack.getvalue())
