"""`ticketmail serve`: the LMTP listener, the web app (and later the IMAP bridge) on one event loop."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from ingest.lmtp import LMTPListener
from ingest.pipeline import Pipeline
from storage.database import Database
from ticketmail.config import Config
from web.app import create_app

log = logging.getLogger("ticketmail")


async def serve(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    db = Database(config.database_url)
    try:
        await db.check_schema()
        pipeline = Pipeline(db, config.ticket_prefix)
        await pipeline.start()
        lmtp = LMTPListener(
            pipeline,
            host=config.lmtp.host,
            port=config.lmtp.port,
            socket=config.lmtp.socket,
            max_message_bytes=config.lmtp.max_message_bytes,
        )
        await lmtp.start()
        runner = web.AppRunner(create_app(db, config), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.web.host, config.web.port).start()
        where = config.lmtp.socket or f"{config.lmtp.host}:{lmtp.port}"
        log.info("LMTP on %s, web on %s:%s; ready", where, config.web.host, config.web.port)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

        log.info("shutting down: no new connections, finishing deliveries in progress")
        await lmtp.stop()
        await runner.cleanup()
        await pipeline.stop()
        log.info("stopped")
        return 0
    finally:
        await db.dispose()
