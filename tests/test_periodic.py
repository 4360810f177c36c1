"""The background-service base: stop() stops, even when a wake-up and the cancel arrive together."""

from __future__ import annotations

import asyncio

from ingest.periodic import Periodic
from tests.lmtp_session import until


class Counting(Periodic):
    name, interval = "counting", 60.0

    def __init__(self):
        self.rounds = 0

    async def run_once(self):
        self.rounds += 1


async def test_stop_right_after_wake_stops():
    """Regression: Python 3.11's wait_for swallows a cancel that meets its inner wait finishing, so the
    service ran on and stop() (and the test suite) waited for ever."""
    service = Counting()
    await service.start()
    await until(lambda: service.rounds == 1, "the first round")
    service.wake()  # the wait ends in the same loop iteration as stop()'s cancel
    try:
        await asyncio.wait_for(service.stop(), 5)
    finally:
        if service._task:  # the bug: still running; don't leave it behind
            service._task.cancel()
    assert service.rounds == 1
