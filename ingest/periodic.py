"""Background services that work in rounds (the outbox sender, the sweeper, the IMAP supervisor)."""

from __future__ import annotations

import asyncio
import logging


class Periodic:
    """Runs `run_once()` in a task of its own from `start()` until `stop()`: a round, then the next one
    `interval` seconds later, or at once on `wake()`. A round that raises is reported by `failed`, and
    the next one runs as planned."""

    name = "periodic"  # the task's name, and how its log lines begin
    interval = 60.0
    _task: asyncio.Task | None = None

    async def run_once(self):
        raise NotImplementedError

    async def failed(self, error: Exception) -> None:
        """A round raised (the database is unreachable, say): log it, and try again next round."""
        logging.getLogger(type(self).__module__).error("%s: a round failed", self.name, exc_info=error)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the round in progress, if any, and wait for it to end."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        if self._task:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as e:  # noqa: BLE001 - answered by `failed`
                await self.failed(e)
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            raise_if_cancelled()  # or stop() could wait for ever: seen as a test suite hanging
            self._wake.clear()


def raise_if_cancelled() -> None:
    """Stop if a cancel was requested but swallowed on the way (asyncio.wait_for before Python 3.12 can
    lose one when its inner task finishes at the same moment; libraries under us use it everywhere)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
