"""Logs under an outage: one traceback per distinct error, then counts, not a traceback per message."""

from __future__ import annotations

import asyncio
import logging
import re
import signal

from ingest.logs import RepeatedErrors
from tests.conftest import deliver
from tests.mail import message
from tests.ports import free_port
from tests.test_crash import start_server
from tests.test_lmtp import SUPPORT, _break_storage_for, _repair_storage


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_dropped_then_counted(caplog):
    clock = Clock()
    repeated = RepeatedErrors(window=60, clock=clock)
    log = logging.getLogger("test.outage")
    caplog.handler.addFilter(repeated)
    try:
        for n in range(100):
            try:
                raise ConnectionRefusedError(f"connect call failed, attempt {n}")
            except ConnectionRefusedError:
                log.exception("storing message %d failed", n)
            clock.now += 0.1
        log.warning("a different warning")
        clock.now += 60
        log.error("something else entirely")
        repeated.flush()
    finally:
        caplog.handler.removeFilter(repeated)
    records = caplog.records
    assert [r.getMessage() for r in records if r.exc_info] == ["storing message 0 failed"]
    assert [r.getMessage() for r in records] == [
        "storing message 0 failed",
        "a different warning",
        "something else entirely",
        "99 more like this in the last 70 s: storing message 0 failed",
    ]


async def test_storage_outage_logs_one_traceback_per_error_not_per_message(cli, db, db_url, tmp_path):
    """Regression: a 10 s database outage wrote ~700 full tracebacks."""
    await cli("department", "add", "Support", "--address", SUPPORT, "--unknown-sender", "accept")
    await _break_storage_for(db, SUPPORT)
    port, log_path = free_port(), tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = await asyncio.to_thread(start_server, db_url, port, log)
        try:
            for n in range(40):
                [(code, _)] = await deliver(port, "bob@else.example", SUPPORT, message(subject=f"outage {n}"))
                assert code == 451
        finally:
            server.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(server.wait, 30) == 0
            await _repair_storage(db)
    text = log_path.read_text()
    records = [line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]
    errors = [r for r in records if " ERROR " in r]
    assert 1 <= len(errors) <= 3, errors  # one per place that reports it, not one per message
    assert "injected storage failure" in text
    assert any(re.search(r"WARNING .*: \d+ more like this in the last \d+ s: ", r) for r in records), records
    assert len(text.splitlines()) < 400, text  # 40 tracebacks on PostgreSQL are ~3,000 lines
