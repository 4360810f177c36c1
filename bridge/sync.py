"""One account's sync loop: connect, fetch what is above the UID checkpoint, commit, act, advance, wait.

Exactly once: a message is handed to the pipeline (which commits before it answers), then the
after-action is applied on the server, then the checkpoint moves past its UID. A crash anywhere in
between fetches it again, and the pipeline recognises it (same bytes, same department) and answers
with the original outcome, so it never makes a second ticket. Messages are fetched with BODY.PEEK[]
(nothing is marked read before it is committed) and tracked by UID, never by flags or sequence numbers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import parseaddr

from bridge.accounts import Account
from bridge.imap import Connection, ImapError, Mailbox, describe, redact, shows_password
from ingest.delivery import Delivery
from ingest.parse import ParsedMessage, parse_message, too_long_for_a_mailbox
from ingest.periodic import raise_if_cancelled
from ingest.pipeline import Pipeline
from storage import imap_store
from storage.database import Database

log = logging.getLogger(__name__)

NO_UIDNEXT = 2**32  # beyond any UID: after a UIDVALIDITY change without UIDNEXT, all mail may be old


@dataclass(frozen=True)
class Options:
    timeout: float = 60.0  # every IMAP call (FETCH: without data for this long)
    batch: int = 100  # UIDs per UID FETCH: aioimaplib holds a whole response in memory
    # IDLE is ended and the folder looked at again (SELECT: its UIDVALIDITY, whether it still exists) this
    # often, and after any EXPUNGE: a server may not say that the folder was deleted and made anew (Cyrus).
    # Well below the 30 minutes after which servers may drop an IDLE.
    idle_seconds: float = 120.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0


def backoff(attempt: int, base: float, cap: float, rand=random.random) -> float:
    """Exponential backoff with jitter: between half and all of min(cap, base * 2^attempt)."""
    delay = min(cap, base * 2 ** min(attempt, 30))
    return delay / 2 + rand() * delay / 2


_HEADERS = BytesHeaderParser(policy=compat32)


def envelope_sender(raw: bytes) -> str:
    """The sender an MTA would have given: the topmost Return-Path, else the From address; "" for <>. An
    address longer than any mailbox (which no MTA would have taken) counts as none.

    Only the header block is read: the full parse happens once, in the pipeline's writer process."""
    end = raw.find(b"\r\n\r\n")
    headers = _HEADERS.parsebytes(raw[:end] if end >= 0 else raw)
    return_path = headers.get("Return-Path")
    if return_path is not None:
        if str(return_path).strip() in ("<>", ""):
            return ""
        address = parseaddr(str(return_path))[1].strip().lower()
        if "@" in address and not too_long_for_a_mailbox(address):
            return address
    address = parseaddr(str(headers.get("From", "")))[1].strip().lower()
    return "" if too_long_for_a_mailbox(address) else address


class StoreError(Exception):
    """The pipeline could not store a message (it will be fetched again)."""


class AccountSync:
    """The endless sync of one account; `run()` returns only when cancelled."""

    def __init__(self, account: Account, db: Database, pipeline: Pipeline, options: Options = Options(),
                 reconnects: Counter | None = None):
        self.account = account
        self.db = db
        self.pipeline = pipeline
        self.options = options
        self.reconnects = Counter() if reconnects is None else reconnects  # by account name: /metrics
        self.imported = 0  # messages handed to the pipeline by this loop (duplicates included)
        self.checkpoint = 0  # the last UID committed and acted on, as written to the database
        self._healthy = False
        self.activity = "starting"  # what the loop does now, for the panel: connecting, syncing, idle, ...

    async def run(self) -> None:
        attempt = 0
        name = self.account.name
        while True:
            self._healthy = False
            self.activity = "connecting"
            try:
                await self._connected()
            except asyncio.CancelledError:
                raise
            except (ImapError, StoreError) as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - any bug or surprise: log it, back off, try again
                error = describe(e, self.account, self.options.timeout)
                log.error("imap %s: unexpected %s", name, error, exc_info=_loggable(e, self.account))
            if self._healthy:
                attempt = 0
            delay = backoff(attempt, self.options.backoff_base, self.options.backoff_cap)
            attempt += 1
            log.warning("imap %s: %s; reconnecting in %.1f s", name, error, delay)
            self.activity = f"reconnecting in {delay:.0f} s"
            self.reconnects[name] += 1
            await self._record_error(error)
            raise_if_cancelled()
            await asyncio.sleep(delay)

    async def _connected(self) -> None:
        conn = await Connection.open(self.account, self.options.timeout)
        try:
            await self._session(conn)
        except BaseException:  # an error or a cancel: this connection is done with
            conn.abort()
            raise

    async def _session(self, conn: Connection) -> None:
        account = self.account
        if account.security == "none":
            log.warning("imap %s: no TLS: the password and mail cross the network in clear", account.name)
        mailbox = await conn.select(account.folder)
        uidvalidity, last_uid, rescan_below = await self._reconcile(mailbox)
        self.checkpoint = last_uid
        idle = "IDLE" in conn.capabilities
        log.info("imap %s: connected to %s%s, folder %s (messages: %d, UIDVALIDITY %d), %s",
                 account.name, account.where(), f" ({conn.tls})" if conn.tls else "", account.folder,
                 mailbox.exists, uidvalidity,
                 "waiting with IDLE" if idle else f"polling every {account.poll_seconds} s")
        while True:
            raise_if_cancelled()
            conn.news.clear()
            self.activity = "syncing"
            last_uid = await self._pass(conn, uidvalidity, last_uid, rescan_below)
            self._healthy = True
            if conn.news.is_set():
                continue  # the server reported new mail during the pass
            self.activity = "idle (IDLE)" if idle else f"idle (polling every {account.poll_seconds} s)"
            if idle and await conn.wait_for_news(self.options.idle_seconds):
                continue
            if not idle:
                await conn.wait_polling(account.poll_seconds)
            # A quiet while (IDLE renewal, an EXPUNGE, or a poll): SELECT again, which also shows a changed
            # UIDVALIDITY, or fails if the folder is gone.
            mailbox = await conn.select(account.folder)
            if mailbox.uidvalidity != uidvalidity:
                uidvalidity, last_uid, rescan_below = await self._reconcile(mailbox)
                self.checkpoint = last_uid

    async def _reconcile(self, mailbox: Mailbox) -> tuple[int, int, int]:
        """The checkpoint for this UIDVALIDITY; a changed one means every UID now names other mail."""
        stored, last_uid, rescan_below = await self.db.run(imap_store.checkpoint, self.account.id)
        if stored == mailbox.uidvalidity:
            return stored, last_uid, rescan_below
        rescan_below = 0
        if stored is not None:
            rescan_below = mailbox.uidnext or NO_UIDNEXT
            log.warning("imap %s: UIDVALIDITY of %s changed from %d to %d: rescanning the folder; mail "
                        "already imported is recognised and not imported again", self.account.name,
                        self.account.folder, stored, mailbox.uidvalidity)
        await self.db.run(imap_store.start_uidvalidity, self.account.id, mailbox.uidvalidity, rescan_below,
                          write=True)
        return mailbox.uidvalidity, 0, rescan_below

    async def _pass(self, conn: Connection, uidvalidity: int, last_uid: int, rescan_below: int) -> int:
        """Import everything above `last_uid` in batches; returns the new checkpoint.

        While one batch is being committed (the pipeline's writer is a process of its own), the next is
        fetched; a batch's after-action and checkpoint follow once its commit has answered."""
        uids = await conn.uids_above(last_uid)
        if not uids:
            await self.db.run(imap_store.record_sync, self.account.id, 0, write=True)
            return last_uid
        size = self.options.batch
        batches = [uids[i:i + size] for i in range(0, len(uids), size)]
        committing: tuple[list[int], asyncio.Task] | None = None
        try:
            for n, batch in enumerate(batches):
                fetched = await conn.fetch(batch)
                delivering = asyncio.ensure_future(self._deliver(fetched, uidvalidity, rescan_below))
                if committing:
                    last_uid = await self._finish(conn, uidvalidity, last_uid, *committing, len(uids) - n * size)
                committing = (batch, delivering)
            batch, delivering = committing
            committing = None
            return await self._finish(conn, uidvalidity, last_uid, batch, delivering, 0)
        finally:
            if committing and not committing[1].done():  # an error (or cancel) left a commit in flight
                committing[1].cancel()
                await asyncio.gather(committing[1], return_exceptions=True)

    async def _finish(self, conn: Connection, uidvalidity: int, last_uid: int, batch: list[int],
                      delivering: asyncio.Task, remaining: int) -> int:
        """Once a batch is committed: its after-action, then the checkpoint past it; returns the checkpoint."""
        done, failure = await delivering
        await conn.apply(self.account.after, done)
        # Everything up to the first failure is committed and acted on; UIDs the server did not return
        # were expunged by someone else meanwhile.
        checkpoint = max(batch) if failure is None else failure[0] - 1
        if checkpoint > last_uid:
            await self.db.run(imap_store.advance, self.account.id, uidvalidity, checkpoint, remaining, write=True)
            last_uid = self.checkpoint = checkpoint
        log.info("imap %s: committed %d (UID %d-%d), %d waiting", self.account.name, len(done),
                 batch[0], batch[-1], remaining)
        if failure is not None:
            raise StoreError(f"storing message UID {failure[0]} failed: {failure[1]}; it will be fetched again")
        return last_uid

    async def _deliver(self, fetched: list[tuple[int, bytes]], uidvalidity: int, rescan_below: int):
        """Hand a batch to the pipeline at once (one group commit); returns (committed UIDs, first failure)."""
        # The writer process parses (measured: parsing here and sending the result over costs both sides
        # more). After a UIDVALIDITY change, UIDs below rescan_below are old mail seen again, perhaps with
        # bytes the server changed: parsed here, and skipped if their Message-ID came from this account.
        parsed = {uid: parse_message(raw) for uid, raw in fetched if uid < rescan_below}
        seen_before = await self._imported_before(parsed)
        account = self.account

        async def one(uid: int, raw: bytes):
            if uid < rescan_below and parsed[uid].message_id in seen_before:
                return None
            delivery = Delivery(raw, sender=envelope_sender(raw), recipient=account.email,
                                source=account.source, source_key=f"{uidvalidity}/{uid}",
                                department=account.department, account=account.name)
            return await self.pipeline.deliver(delivery, parsed.get(uid))

        results = await asyncio.gather(*(one(uid, raw) for uid, raw in fetched), return_exceptions=True)
        done, failure = [], None
        for (uid, _), result in zip(fetched, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                failure = failure or (uid, redact(str(result) or type(result).__name__, account))
                continue
            done.append(uid)
        self.imported += len(done)
        return done, failure

    async def _imported_before(self, old: dict[int, ParsedMessage]) -> set[str]:
        ids = [m.message_id for m in old.values() if m.message_id]
        if not ids:
            return set()
        return await self.db.run(imap_store.imported_message_ids, self.account.source, ids)

    async def _record_error(self, error: str) -> None:
        try:
            await self.db.run(imap_store.record_error, self.account.id, error, write=True)
        except Exception as e:  # noqa: BLE001 - the database may be what failed; the log has it
            log.warning("imap %s: cannot record the error in the database: %s", self.account.name, e)


def _loggable(exc: BaseException, account: Account):
    """The exception for exc_info, unless its text would show the password."""
    return False if shows_password(repr(exc), account) else exc
