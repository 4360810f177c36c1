"""/healthz and /metrics as an operator's monitoring sees them: a real `ticketmail serve` process (or the
web app beside the real pipeline and LMTP listener, for a writer that dies), real LMTP deliveries."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ingest import chain
from ingest.delivery import Delivery
from ingest.pipeline import Pipeline
from storage.database import Database
from tests.conftest import deliver, listening, one_database
from tests.ports import free_port, refusing_port
from tests.lmtp_session import until
from tests.mail import message
from ticketmail.config import Config, ConfigError, load
from web.app import create_app
from web.keys import SERVICES, Services
from web.metrics import CHALLENGE_STEPS, Metrics

SUPPORT = "support@xyzhosting.com"
SALES = "sales@xyzhosting.com"
ALICE = "alice@customer.example"
NO_ADMIN = "no admin can sign in yet: add one with `ticketmail admin add NAME`"


@dataclass
class Served:
    web: int
    lmtp: int
    metrics: int
    log: Path

    def url(self, path: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.web}{path}"


@asynccontextmanager
async def serving(db_url: str, tmp_path: Path, env: dict | None = None, **settings: str):
    """`ticketmail serve` in a process of its own until the block ends (then SIGTERM); settings are
    TICKETMAIL_* variables without the prefix, e.g. METRICS_ENABLED="true"; `env`, other variables."""
    served = Served(web=free_port(), lmtp=free_port(), metrics=free_port(), log=tmp_path / "serve.log")
    env = dict(os.environ, **(env or {}), TICKETMAIL_DATABASE_URL=db_url, TICKETMAIL_WEB_PORT=str(served.web),
               TICKETMAIL_LMTP_PORT=str(served.lmtp), TICKETMAIL_METRICS_PORT=str(served.metrics),
               TICKETMAIL_BRIDGE_KEY_FILE=str(tmp_path / "secret.key"),
               **{f"TICKETMAIL_{k}": v for k, v in settings.items()})
    env.pop("TICKETMAIL_CONFIG", None)
    with open(served.log, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ticketmail.cli", "serve"], env=env, stdout=log, stderr=log)
    try:
        await until(lambda: "; ready" in served.log.read_text() or proc.poll() is not None, "serve to be ready", 30)
        assert proc.poll() is None, served.log.read_text()
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 30)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


def samples(text: str) -> dict[tuple, float]:
    """Every sample of a Prometheus text page: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def refused():
    """A loopback port where nothing answers, held for the whole test."""
    with refusing_port() as port:
        yield port


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKETMAIL_BRIDGE_KEY_FILE", str(tmp_path / "secret.key"))


async def add_directory(cli, monkeypatch, imap_port: int) -> None:
    """Support takes mail from anyone, Sales challenges unknown senders; an IMAP account whose server
    refuses every connection."""
    for name, address, policy in (("Support", SUPPORT, "accept"), ("Sales", SALES, "challenge")):
        code, _, err = await cli("department", "add", name, "--address", address, "--unknown-sender", policy)
        assert code == 0, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("imap-secret-pw\n"))
    code, _, err = await cli("imap", "add", "broken", "--email", "imap-user@xyzhosting.com", "--server", "127.0.0.1",
                             "--port", str(imap_port), "--security", "none", "--department", "Support",
                             "--password-stdin", "--no-test")
    assert code == 0, err


def greeting(port: int) -> tuple[socket.socket, bytes]:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    return conn, conn.recv(200)


async def test_serve_reports_its_health_and_counts_what_it_delivered(db_url, cli, key_file, monkeypatch, tmp_path,
                                                                    refused):
    await add_directory(cli, monkeypatch, imap_port=refused)
    async with serving(db_url, tmp_path, METRICS_ENABLED="true", LMTP_MAX_SESSIONS="1") as served:
        status, text = await get(served.url("/healthz"))
        assert status == 200, text
        health = json.loads(text)
        assert health["status"] == "ok" and health["failing"] == []
        assert health["components"] == {name: {"ok": True} for name in ("database", "writer", "lmtp", "web")}
        log = served.log.read_text()  # no admin yet: serve says how to add one, before "; ready"
        assert f"admin panel at http://127.0.0.1:{served.web}/admin/" in log
        assert log.index(NO_ADMIN) < log.index("; ready")

        # The IMAP account's state, its error once the sync has failed to connect; nothing that logs in.
        async def imap_error():
            return json.loads((await get(served.url("/healthz")))[1])["imap_accounts"]

        deadline = time.monotonic() + 20
        while not (accounts := await imap_error())[0]["last_error"] and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        (account,) = accounts
        assert account["name"] == "broken" and account["enabled"] is True and account["backlog"] == 0
        assert account["last_error"] and account["last_error_at"] and account["last_sync"] is None
        page = (await get(served.url("/healthz")))[1]
        assert "imap-user" not in page and "imap-secret-pw" not in page and "secret.key" not in page

        # A ticket, and a held message that gets no challenge (a robot's address).
        [(code, reply)] = await deliver(served.lmtp, ALICE, SUPPORT, message(frm=ALICE))
        assert (code, reply) == (250, f"2.0.0 <{SUPPORT}> delivered (ticket #1)".encode())
        robot = "noreply@shop.example"
        [(code, _)] = await deliver(served.lmtp, robot, SALES, message(frm=robot, to=SALES))
        assert code == 250

        # max_sessions = 1: a second connection while one is open is refused at the greeting.
        first, hello = await asyncio.to_thread(greeting, served.lmtp)
        with closing(first):
            assert hello.startswith(b"220")
            second, refusal = await asyncio.to_thread(greeting, served.lmtp)
            second.close()
            assert refusal.startswith(b"421")
            status, page = await get(served.url("/metrics", served.metrics))
        assert status == 200
        got = samples(page)

        assert got[("ticketmail_messages_received_total", (("outcome", "ticket"), ("source", "lmtp")))] == 1
        assert got[("ticketmail_messages_received_total", (("outcome", "held"), ("source", "lmtp")))] == 1
        assert got[("ticketmail_challenges_suppressed_total", (("reason", "suppressed"),))] == 1
        assert got[("ticketmail_held_messages", ())] == 1
        assert got[("ticketmail_delivery_seconds_count", (("source", "lmtp"),))] == 2
        assert got[("ticketmail_writer_group_size_sum", ())] == 2  # two deliveries, in one or two commits
        assert got[("ticketmail_lmtp_sessions_open", ())] == 1
        assert got[("ticketmail_lmtp_sessions_refused_total", ())] == 1
        assert got[("ticketmail_imap_errors_total", (("account", "broken"),))] >= 1
        assert got[("ticketmail_imap_reconnects_total", (("account", "broken"),))] >= 1
        assert got[("ticketmail_challenges", (("state", "confirmed"),))] == 0
        assert got[("ticketmail_database_up", ())] == 1

        # Not on the public web port.
        for path in ("/metrics", "/metrics/"):
            assert (await get(served.url(path)))[0] == 404, path


@one_database
async def test_metrics_are_off_by_default(db_url, tmp_path):
    async with serving(db_url, tmp_path) as served:
        assert (await get(served.url("/healthz")))[0] == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(served.url("/metrics", served.metrics))
        assert (await get(served.url("/metrics")))[0] == 404
    assert "metrics on" not in served.log.read_text()


@asynccontextmanager
async def app_beside(db: Database, pipeline: Pipeline, listener):
    """The web app with the services wired as serve wires them (ticketmail/serve.py)."""
    app = create_app(db, Config(database_url=db.url))
    services = app[SERVICES] = Services("writer", "lmtp")
    services.watch("writer", pipeline.trouble)
    services.watch("lmtp", lambda: "shutting down" if listener.closing else "")
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@one_database
async def test_a_dead_writer_is_named_and_healthz_answers_503(db):
    pipeline = Pipeline(db)  # its writer process, as serve runs it
    await pipeline.start()
    try:
        async with listening(pipeline) as listener, app_beside(db, pipeline, listener) as client:
            async with client.get("/healthz") as response:
                assert response.status == 200
            pipeline._writer._proc.kill()
            await asyncio.wait_for(pipeline.failed.wait(), 10)
            async with client.get("/healthz") as response:
                assert response.status == 503
                health = await response.json()
    finally:
        await pipeline.stop()
    assert health["status"] == "failing" and health["failing"] == ["writer"]
    assert health["components"]["writer"] == {"ok": False, "error": "the writer process died (exit code -9)"}
    assert health["components"]["database"] == {"ok": True} and health["components"]["lmtp"] == {"ok": True}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_an_unreachable_database_is_named_and_healthz_answers_503(kind, tmp_path, refused):
    url = {"sqlite": f"sqlite+aiosqlite:///{tmp_path}/no/such/dir/ticketmail.db",
           "postgresql": f"postgresql+asyncpg://ticketmail:db-secret@127.0.0.1:{refused}/ticketmail"}[kind]
    db = Database(url)
    app = create_app(db, Config(database_url=url))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        async with client.get("/healthz") as response:
            status, text = response.status, await response.text()
    finally:
        await client.close()
        await db.dispose()
    assert status == 503
    health = json.loads(text)
    assert health["failing"] == ["database"] and health["components"]["database"]["ok"] is False
    assert health["imap_accounts"] is None
    assert "db-secret" not in text and str(tmp_path) not in text  # nothing of the URL


def test_the_metrics_and_log_settings_are_checked_and_name_their_key():
    config = load(env={})
    assert (config.metrics.enabled, config.metrics.host, config.metrics.port) == (False, "127.0.0.1", 9465)
    assert config.log.format == "text"
    assert load(env={"TICKETMAIL_LOG_FORMAT": "json", "TICKETMAIL_METRICS_ENABLED": "true"}).log.format == "json"
    for env, key in (({"TICKETMAIL_LOG_FORMAT": "xml"}, "log.format (from TICKETMAIL_LOG_FORMAT):"),
                     ({"TICKETMAIL_METRICS_PORT": "70000"}, "metrics.port (from TICKETMAIL_METRICS_PORT):"),
                     ({"TICKETMAIL_METRICS_ENABLED": "maybe"}, "TICKETMAIL_METRICS_ENABLED:"),
                     ({"TICKETMAIL_METRICS_ENABLED": "1", "TICKETMAIL_METRICS_PORT": "8080"},
                      "metrics.port (from TICKETMAIL_METRICS_PORT):")):
        with pytest.raises(ConfigError) as refused:
            load(env=env)
        assert str(refused.value).startswith(key), refused.value


@one_database
async def test_serve_tells_systemd_when_it_is_ready_and_when_it_stops(db_url, cli, monkeypatch, tmp_path):
    """Type=notify in contrib/ticketmail.service: READY=1 once it listens, STOPPING=1 on SIGTERM. With an
    admin, serve prints where the panel is and nothing about adding one."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long enough password\n"))
    assert (await cli("admin", "add", "alice"))[0] == 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        async with serving(db_url, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify")}) as served:
            assert await asyncio.to_thread(notify.recv, 100) == b"READY=1"
            assert (await get(served.url("/healthz")))[0] == 200  # ready means serving
            log = served.log.read_text()  # all that comes before "; ready", which serving waited for
            assert f"admin panel at http://127.0.0.1:{served.web}/admin/" in log and NO_ADMIN not in log
        assert await asyncio.to_thread(notify.recv, 100) == b"STOPPING=1"


UNIT = Path(__file__).parent.parent / "contrib" / "ticketmail.service"


def test_the_readme_shows_the_units_own_lines():
    """The README's unit is the core of contrib/ticketmail.service, not a second one drifting apart."""
    shown = re.search(r"```ini\n(.*?)```", (UNIT.parent.parent / "README.md").read_text(), re.S).group(1)
    unit = UNIT.read_text().splitlines()
    assert [line for line in shown.splitlines() if line and line not in unit] == []


def test_the_example_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd-analyze is not one of the servers the suite requires (PostgreSQL, Dovecot, Postfix,
    Chromium), so without it this test is skipped, under CI too."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = UNIT.read_text()
    command = re.search(r"^ExecStart=(\S+) --config \S+ serve$", unit, re.MULTILINE)
    assert command and command.group(1) == "/opt/ticketmail/.venv/bin/ticketmail"
    assert all(f"\n{line}\n" in unit for line in ("Restart=on-failure", "User=ticketmail", "NoNewPrivileges=yes",
                                                    "ProtectSystem=strict", "ReadWritePaths=/opt/ticketmail/var",
                                                    "PrivateTmp=yes", "Type=notify"))
    # verify wants the command to exist: this checkout's, in a copy of the unit; all else as it is.
    (tmp_path / "ticketmail.service").write_text(unit.replace(command.group(1), str(Path(sys.executable).parent /
                                                                                   "ticketmail")))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "ticketmail.service")],
                            capture_output=True, text=True, timeout=60)
    # An unknown key or a bad value is only a warning on stderr (the exit code stays 0).
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@one_database
async def test_imap_deliveries_and_repeats_are_counted_by_source_and_outcome(db, cli):
    code, _, err = await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    assert code == 0, err
    metrics = Metrics()
    pipeline = Pipeline(db, in_process=True, metrics=metrics)
    await pipeline.start()
    try:
        raw = message(frm=ALICE)
        imap = Delivery(raw, sender=ALICE, recipient=SUPPORT, source="imap:support", source_key="7/1",
                        account="support")
        assert (await pipeline.deliver(imap)).ticket == 1
        assert (await pipeline.deliver(imap)).repeat == "duplicate"  # fetched again after a crash: the same delivery
        again = b"Received: from relay.example by mx.example; Sat, 28 Nov 2026 10:05:00 +0000\r\n" + raw
        await pipeline.deliver(Delivery(again, sender=ALICE, recipient=SUPPORT))  # via another path: the same message
    finally:
        await pipeline.stop()
    got = samples((await metrics.scrape(db)).decode())
    received = {labels: value for (name, labels), value in got.items()
                if name == "ticketmail_messages_received_total"}
    assert received == {(("outcome", "ticket"), ("source", "imap")): 1,
                        (("outcome", "duplicate"), ("source", "imap")): 1,
                        (("outcome", "resubmitted"), ("source", "lmtp")): 1}
    assert got[("ticketmail_writer_group_size_count", ())] == 3 and got[("ticketmail_held_messages", ())] == 0


def test_the_challenge_steps_counted_are_the_chains_own():
    """web/metrics.py counts challenge decisions by the CHAIN step that made them: each is a step."""
    assert set(CHALLENGE_STEPS) <= {step.__name__ for step in chain.CHAIN}