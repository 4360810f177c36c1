"""Logging for `serve` and its writer process: an error repeated during an outage is logged once with
its traceback, then summed up as a count, instead of a traceback per message."""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RepeatedErrors(logging.Filter):
    """Passes the first warning or error from one place in the code (and one exception type); drops
    its repeats for `window` seconds, then logs one line with how many there were."""

    def __init__(self, window: float = 60.0, clock=time.monotonic):
        super().__init__()
        self.window, self.clock = window, clock
        self._seen: dict[tuple, list] = {}  # key -> [when last written, repeats dropped since, its text]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "summary", False):
            return True
        now = self.clock()
        exc = record.exc_info[0].__qualname__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.pathname, record.lineno, exc)
        seen = self._seen.get(key)
        if seen is None or now - seen[0] > 10 * self.window:  # new, or quiet for long: in full
            self._seen[key] = [now, 0, record.getMessage().splitlines()[0][:200]]
            return True
        if now - seen[0] < self.window:
            seen[1] += 1
            return False
        if seen[1]:  # a later one: the count, and this one without its traceback (shown before)
            record.msg = f"{record.msg} [and {seen[1]} more like it in the last {now - seen[0]:.0f} s]"
        record.exc_info, record.exc_text = None, None
        seen[0], seen[1] = now, 0
        return True

    def flush(self) -> None:
        """Log the count of every error still being dropped (periodically, and at exit)."""
        now = self.clock()
        for (name, *_), seen in self._seen.items():
            if seen[1]:
                logging.getLogger(name).warning("%d more like this in the last %.0f s: %s", seen[1], now - seen[0],
                                                seen[2], extra={"summary": True})
                seen[0], seen[1] = now, 0


def setup() -> RepeatedErrors:
    """Log to stderr, with repeated errors summed up; returns the filter so the caller can flush it."""
    logging.basicConfig(level=logging.INFO, format=FORMAT)
    repeated = RepeatedErrors()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeated)
    return repeated
