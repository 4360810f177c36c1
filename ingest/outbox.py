"""Sending the outbox: mail the pipeline wrote in its transaction goes out through `[smtp]` afterwards.

The pipeline never talks SMTP inside a transaction: it writes an outbox row beside the held message,
and this background task sends it once committed. While the relay is down each mail is retried with
backoff until its link would expire; the held message is safe either way. A mail is leased before it
is sent, so several processes sharing one database do not send it twice (a crash between sending and
recording it can, after the lease, send it again: at least once, never lost).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import aiosmtplib

from ingest import mailer
from ingest.periodic import Periodic
from storage import challenge_store
from storage.challenge_store import Mail
from storage.database import Database
from storage.models import utcnow

log = logging.getLogger(__name__)


def security_options(security: str) -> dict:
    """aiosmtplib's connection options for `[smtp] security`."""
    return {
        "none": {"use_tls": False, "start_tls": False},
        "starttls": {"use_tls": False, "start_tls": True},
        "tls": {"use_tls": True, "start_tls": False},
    }[security]


def permanent(error: Exception) -> bool:
    """A refusal that retrying cannot change: the recipient or the content refused with 5xx.

    A refused login or null sender is the operator's to fix, so those are retried."""
    if isinstance(error, mailer.UnsafeMail):  # the same bytes fail the same check every time
        return True
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        return all(e.code >= 500 for e in error.recipients)
    if isinstance(error, (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError)):
        return error.code >= 500
    return False


def next_attempt(mail: Mail, now: datetime, base: float, most: float) -> datetime | None:
    """When to try again (backoff doubling from `base` seconds up to `most`), or None once the link
    would have expired by then."""
    delay = min(base * 2 ** max(mail.attempts - 1, 0), most)
    at = now + timedelta(seconds=delay)
    return at if at < mail.expires_at else None


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".strip()[:500]


class OutboxSender(Periodic):
    """The background task that sends due outbox mail; `wake()` makes it look at once."""

    name = "outbox-sender"

    def __init__(self, db: Database, smtp, *, interval: float = 5.0, retry_base: float = 60.0,
                 retry_max: float = 3600.0, batch: int = 50):
        self.db = db
        self.smtp = smtp  # the [smtp] section
        self.interval = interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.batch = batch

    async def run_once(self) -> int:
        """Send what is due, one mail at a time, until none is or the relay fails; returns how many were sent."""
        sent = 0
        lease = timedelta(seconds=3 * self.smtp.timeout + 30)
        for _ in range(self.batch):
            now = utcnow()
            mails = await self.db.run(challenge_store.claim_due, now, now + lease, 1, write=True)
            if not mails:
                break
            mail = mails[0]
            try:
                await self.send(mail)
            except Exception as e:  # aiosmtplib's errors, OSError, timeouts: all are answered below
                final = permanent(e)
                retry = None if final else next_attempt(mail, utcnow(), self.retry_base, self.retry_max)
                log.warning("outbox: mail %d to %s not sent (attempt %d, %s): %s", mail.id, mail.rcpt_to,
                            mail.attempts, "retrying" if retry else "given up", describe(e))
                await self.db.run(challenge_store.mark_failed, mail, describe(e), retry, write=True)
                if final:
                    continue
                break  # the relay is in trouble: the rest waits for the next round
            detail = (f"challenge mail sent to {mail.rcpt_to} (through {self.smtp.host}:{self.smtp.port}); "
                      "held until they confirm")
            await self.db.run(challenge_store.mark_sent, mail, utcnow(), detail, write=True)
            sent += 1
        return sent

    async def send(self, mail: Mail) -> None:
        """One SMTP conversation for one mail, envelope sender as stored ("" is <>)."""
        # Rows written by an older version are sent only if they still read back as ours (issue 7).
        mailer.verify(mail.content)
        s = self.smtp
        client = aiosmtplib.SMTP(hostname=s.host, port=s.port, timeout=s.timeout,
                                 username=s.username or None, password=s.password or None,
                                 **security_options(s.security))
        async with client:
            await client.sendmail(mail.mail_from, [mail.rcpt_to], mail.content)
