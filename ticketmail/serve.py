"""`ticketmail serve`: the LMTP listener, the web app and the IMAP bridge on one event loop.

Each service is an async context (set up, yield, tear down) entered on one `AsyncExitStack`, so a
failure while starting any of them stops the ones started before it, and shutdown runs in reverse.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager

from aiohttp import web

from bridge.supervisor import Supervisor
from ingest import logs, mailer
from ingest.challenges import ChallengeSettings
from ingest.lmtp import Limits, LMTPListener
from ingest.outbox import OutboxSender
from ingest.pipeline import Pipeline
from ingest.sweeper import Sweeper
from ingest.unix_socket import group_id
from storage.database import Database
from storage.files import warn_if_readable
from ticketmail.admin import admins
from ticketmail.config import Config, ConfigError
from web import metrics as prometheus
from web.app import Runner, create_app
from web.keys import SERVICES, Services

log = logging.getLogger("ticketmail")


async def serve(config: Config) -> int:
    """Serve until SIGTERM or SIGINT (0), or until the writer process dies (1)."""
    repeated = logs.setup(config.log.format)  # an outage logs its error once, then a count a minute
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warn_if_readable(config.database_url, config.bridge.key_file)  # mail, the IMAP key: for us alone
    async with AsyncExitStack() as stack:
        stack.callback(repeated.flush)  # the last count, after whatever shutting down logged
        db = Database(config.database_url)
        stack.push_async_callback(db.dispose)
        settings, bridge = await _checked(db, config)
        stop = _signalled()  # from here on, SIGTERM while starting stops us once started
        run = stack.enter_async_context
        # Started in this order, stopped in reverse: LMTP first (it lets deliveries in progress finish),
        # the web app, the bridge, then the pipeline both deliver into, the sweeper and the outbox sender.
        await run(_running(OutboxSender(db, config.smtp)))  # challenge mail, sent after the pipeline's commit
        await run(_running(Sweeper(db, held_days=config.challenge.held_days, ticket_prefix=config.ticket_prefix,
                                   keep_for_review=config.challenge.keep_for_review, challenge=settings)))
        metrics = prometheus.Metrics() if config.metrics.enabled else None
        pipeline = await run(_running(Pipeline(db, config.ticket_prefix, settings,
                                               resubmission_days=config.resubmission_days, metrics=metrics)))
        services = Services("writer", "lmtp")  # what /healthz reports beside the database
        services.watch("writer", pipeline.trouble)
        services.imap_activity = bridge.activity
        await run(_running(bridge, pipeline))  # IMAP accounts: one sync loop each
        panel = await run(_web_app(db, config, services))
        if metrics:
            await run(_metrics(metrics, db, config))
        lmtp = await run(_lmtp(pipeline, config))
        services.watch("lmtp", lambda: "shutting down" if lmtp.closing else "")
        if metrics:
            metrics.watch_lmtp(lmtp)
            metrics.watch_bridge(bridge)
        where = config.lmtp.socket or f"{config.lmtp.host}:{lmtp.port}"
        also = f", metrics on {config.metrics.host}:{config.metrics.port}" if metrics else ""
        log.info("admin panel at %s", panel)
        if not await admins.list_all(db):
            log.warning("no admin can sign in yet: add one with `ticketmail admin add NAME`")
        log.info("LMTP on %s, web on %s:%s%s; ready", where, config.web.host, config.web.port, also)
        _notify("READY=1")
        await _until_stopped(stop, pipeline, repeated)
        _notify("STOPPING=1")
        log.info("shutting down: no new connections, finishing deliveries in progress")
    log.info("stopped")
    return 1 if pipeline.failed.is_set() else 0


async def _checked(db: Database, config: Config) -> tuple[ChallengeSettings, Supervisor]:
    """What would otherwise fail later, or on each message, fails here with one line."""
    await db.check_schema()
    settings = ChallengeSettings.from_config(config)
    try:  # an operator's broken template fails here, not on each challenge
        mailer.check_templates(settings.template_dir)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    bridge = Supervisor(db, config)
    await bridge.check()  # a missing or wrong key to the IMAP passwords: one line now, not in each loop
    return settings, bridge


@asynccontextmanager
async def _running(service, *args):
    """A service with `start(*args)` and `stop()`, running for as long as the context."""
    await service.start(*args)
    try:
        yield service
    finally:
        await service.stop()


@asynccontextmanager
async def _lmtp(pipeline: Pipeline, config: Config):
    c = config.lmtp
    limits = Limits(max_message_bytes=c.max_message_bytes, max_sessions=c.max_sessions,
                    idle_seconds=c.idle_seconds, max_inflight_bytes=c.max_inflight_bytes)
    try:
        gid = group_id(c.socket_group)
    except KeyError:
        raise ConfigError(f"lmtp.socket_group: there is no group {c.socket_group!r}") from None
    listener = LMTPListener(pipeline, host=c.host, port=c.port, socket=c.socket, socket_mode=int(c.socket_mode, 8),
                            socket_gid=gid, hostname=c.hostname, limits=limits)
    with _listening("LMTP", c.socket or f"{c.host}:{c.port}", "[lmtp] socket" if c.socket else "[lmtp] host, port"):
        await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()  # within its grace, deliveries in progress get their replies


@asynccontextmanager
async def _web_app(db: Database, config: Config, services: Services):
    """The web app (confirmation pages, the admin panel) on [web] host, port; yields the panel's address."""
    app = create_app(db, config)
    app[SERVICES] = services
    runner = Runner(app, access_log=None)  # our headers on aiohttp's own 400s too
    await runner.setup()
    try:
        with _listening("the web app", f"{config.web.host}:{config.web.port}", "[web] host, port"):
            await web.TCPSite(runner, config.web.host, config.web.port).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}/admin/"  # the panel's address
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _metrics(metrics: prometheus.Metrics, db: Database, config: Config):
    """/metrics on a listener of its own ([metrics] host, port), never on the web app's."""
    if not _loopback(config.metrics.host):
        log.warning("metrics on %s: not a loopback address; the counts name IMAP accounts, so let only "
                    "your monitoring reach it", config.metrics.host)
    runner = web.AppRunner(prometheus.create_app(metrics, db), access_log=None)
    await runner.setup()
    try:
        where = f"{config.metrics.host}:{config.metrics.port}"
        with _listening("the metrics listener", where, "[metrics] host, port"):
            await web.TCPSite(runner, config.metrics.host, config.metrics.port).start()
        yield runner
    finally:
        await runner.cleanup()


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


@contextmanager
def _listening(what: str, where: str, setting: str):
    """A port taken or a socket path not writable: one line that says which, not a traceback."""
    try:
        yield
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise ConfigError(f"{what} cannot listen on {where}: {reason} ({setting})") from None


def _notify(state: str) -> None:
    """Tell systemd how far serve is (Type=notify: contrib/ticketmail.service); nothing without
    $NOTIFY_SOCKET. The protocol is one datagram (sd_notify(3)), not worth a dependency."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": the abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        try:
            notify.connect(address)
            notify.sendall(state.encode())
        except OSError as e:
            log.warning("cannot tell systemd %s on %s: %s", state, path, e)


def _signalled() -> asyncio.Event:
    """An event set by SIGTERM, SIGINT or SIGHUP (a closed terminal, or a reload ticketmail does not
    need: rules are re-read as they change): each stops serve the same orderly way, saying which."""
    stop = asyncio.Event()

    def stopping(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        asyncio.get_running_loop().add_signal_handler(sig, stopping, sig)
    return stop


async def _until_stopped(stop: asyncio.Event, pipeline: Pipeline, repeated: logs.RepeatedErrors) -> None:
    """Until `stop` is set, or until the writer process dies."""
    # A dead writer cannot store anything: exit, so the service manager restarts us.
    watch = [asyncio.create_task(stop.wait()), asyncio.create_task(pipeline.failed.wait())]
    counts = asyncio.create_task(_flush_every(repeated, repeated.window))
    await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
    for task in (*watch, counts):
        task.cancel()


async def _flush_every(repeated: logs.RepeatedErrors, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        repeated.flush()
