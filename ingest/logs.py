"""Logging for `serve` and its writer process: an error repeated during an outage is logged once with
its traceback, then summed up as a count, instead of a traceback per message; `[log] format` writes
plain lines or JSON lines.

A record may carry `fields` (extra={"fields": {...}}: the delivery line of ingest/pipeline.py): values
that came from mail, written JSON-escaped in both formats, so a CR, LF or terminal escape in a
Message-ID cannot start a line of its own or colour an operator's terminal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENV = "TICKETMAIL_LOG_FORMAT"  # also how the writer process learns the format (and [log] format's override)
FORMATS = ("text", "json")


def _escaped(value) -> str:
    """JSON, ASCII only: control characters (CR, LF, ESC, C1 such as CSI) become visible escapes."""
    return json.dumps(value, ensure_ascii=True, default=str)


class TextLines(logging.Formatter):
    """The plain format, with a record's fields after its message as key=JSON pairs."""

    def __init__(self):
        super().__init__(FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        return line + "".join(f" {k}={_escaped(v)}" for k, v in fields.items()) if fields else line


class JsonLines(logging.Formatter):
    """One JSON object per record and line: time, level, logger, message, the record's fields, and a
    traceback as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return _escaped(entry)


def formatter(kind: str) -> logging.Formatter:
    return JsonLines() if kind == "json" else TextLines()


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


def setup(kind: str | None = None) -> RepeatedErrors:
    """Log to stderr in format `kind` (text | json; None: $TICKETMAIL_LOG_FORMAT, else text), with
    repeated errors summed up; returns the filter so the caller can flush it. The format is left in the
    environment for the processes this one starts (the writer)."""
    kind = kind or os.environ.get(ENV) or "text"
    os.environ[ENV] = kind
    logging.basicConfig(level=logging.INFO)
    repeated = RepeatedErrors()
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter(kind))
        handler.addFilter(repeated)
    return repeated
