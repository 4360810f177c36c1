"""`ticketmail serve`: the LMTP listener, the web app (and later the IMAP bridge) on one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from bridge.supervisor import Supervisor
from ingest import logs, mailer
from ingest.challenges import ChallengeSettings
from ingest.lmtp import Limits, LMTPListener
from ingest.outbox import OutboxSender
from ingest.pipeline import Pipeline
from ingest.sweeper import Sweeper
from storage.database import Database
from storage.files import warn_if_readable
from ticketmail.config import Config, ConfigError
from web.app import Runner, create_app

log = logging.getLogger("ticketmail")


async def serve(config: Config) -> int:
    repeated = logs.setup()  # an outage logs its error once, then a count a minute
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db = Database(config.database_url)
    warn_if_readable(config.database_url, config.bridge.key_file)  # mail, the IMAP key: for us alone
    try:
        await db.check_schema()
        settings = ChallengeSettings.from_config(config)
        try:  # an operator's broken template fails here, not on each challenge
            mailer.check_templates(settings.template_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        bridge = Supervisor(db, config)
        await bridge.check()  # a missing or wrong key to the IMAP passwords: one line now, not in each loop
        pipeline = Pipeline(db, config.ticket_prefix, settings)
        await pipeline.start()
        await bridge.start(pipeline)  # IMAP accounts: one sync loop each
        outbox = OutboxSender(db, config.smtp)  # challenge mail, sent after the pipeline's commit
        sweeper = Sweeper(db, held_days=config.challenge.held_days, ticket_prefix=config.ticket_prefix,
                          keep_for_review=config.challenge.keep_for_review, challenge=settings)
        await outbox.start()
        await sweeper.start()
        c = config.lmtp
        lmtp = LMTPListener(pipeline, host=c.host, port=c.port, socket=c.socket, hostname=c.hostname, limits=Limits(
            max_message_bytes=c.max_message_bytes, max_sessions=c.max_sessions, idle_seconds=c.idle_seconds,
            max_inflight_bytes=c.max_inflight_bytes))
        await lmtp.start()
        runner = Runner(create_app(db, config), access_log=None)  # our headers on aiohttp's own 400s too
        await runner.setup()
        await web.TCPSite(runner, config.web.host, config.web.port).start()
        where = config.lmtp.socket or f"{config.lmtp.host}:{lmtp.port}"
        log.info("LMTP on %s, web on %s:%s; ready", where, config.web.host, config.web.port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # A dead writer cannot store anything: exit, so the service manager restarts us.
        watch = [asyncio.create_task(stop.wait()), asyncio.create_task(pipeline.failed.wait())]
        counts = asyncio.create_task(_flush_every(repeated, repeated.window))
        await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
        for task in (*watch, counts):
            task.cancel()

        log.info("shutting down: no new connections, finishing deliveries in progress")
        await lmtp.stop()
        await runner.cleanup()
        await bridge.stop()
        await pipeline.stop()
        await sweeper.stop()
        await outbox.stop()
        repeated.flush()
        log.info("stopped")
        return 1 if pipeline.failed.is_set() else 0
    finally:
        await db.dispose()


async def _flush_every(repeated: logs.RepeatedErrors, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        repeated.flush()
