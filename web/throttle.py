"""Failed sign-ins slow further attempts down, per admin name and per client address.

A small counter in this process's memory: each `serve` process counts its own, and a restart forgets.
After FREE failures within FORGET_SECONDS, each attempt must wait 1, 2, 4 ... up to MAX_WAIT seconds
after the last failure, and is refused unchecked until then. A waiting attempt is answered at once, so a
flood ties up no connection and no argon2 hash; the right password signs in once the wait is over, so an
attacker can slow an admin down but not lock them out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

FREE = 3
MAX_WAIT = 60.0
FORGET_SECONDS = 15 * 60
MAX_KEYS = 10_000  # beyond it the oldest counters go: a spray from many addresses cannot fill memory


@dataclass
class _Failures:
    count: int
    last: float


class SignInThrottle:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._failures: OrderedDict[str, _Failures] = OrderedDict()

    def _current(self, key: str) -> _Failures | None:
        entry = self._failures.get(key)
        if entry is not None and self.clock() - entry.last > FORGET_SECONDS:
            del self._failures[key]
            return None
        return entry

    def wait(self, *keys: str) -> float:
        """Seconds until an attempt for these keys may be checked; 0 if now."""
        waits = [0.0]
        for key in keys:
            entry = self._current(key)
            if entry is not None and entry.count >= FREE:
                delay = min(2.0 ** (entry.count - FREE), MAX_WAIT)
                waits.append(entry.last + delay - self.clock())
        return max(waits)

    def failed(self, *keys: str) -> None:
        for key in keys:
            entry = self._current(key) or _Failures(0, 0.0)
            entry.count, entry.last = entry.count + 1, self.clock()
            self._failures[key] = entry
            self._failures.move_to_end(key)
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)
