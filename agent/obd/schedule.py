"""When to ask what: per-item intervals, a bound on the request rate, back-off while nobody answers.

Kept apart from the transports so the timing rules are the same for CAN and
ELM327 polling and can be tested without a bus. Times are `time.monotonic()`.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable

__all__ = ["Backoff", "PollSchedule", "RateLimit"]


class PollSchedule:
    """Items (PIDs, "dtc" ...) each due every `interval` seconds; the most overdue goes first."""

    def __init__(self, items: Iterable[tuple[Hashable, float]] = ()):
        self._interval: dict[Hashable, float] = {}
        self._due: dict[Hashable, float] = {}
        self.replace(items, now=0.0)

    def replace(self, items: Iterable[tuple[Hashable, float]], now: float) -> None:
        """New items and intervals; items kept keep their due time, new ones are due at once."""
        interval = {item: float(seconds) for item, seconds in items if seconds > 0}
        self._due = {item: self._due.get(item, now) for item in interval}
        self._interval = interval

    def remove(self, item: Hashable) -> None:
        self._interval.pop(item, None)
        self._due.pop(item, None)

    def reset(self, now: float) -> None:
        """Everything due at once (after the ECUs were found again)."""
        self._due = dict.fromkeys(self._interval, now)

    def next(self) -> tuple[Hashable, float] | None:
        """(item, due time) of the item due first, or None when there is nothing to poll."""
        if not self._due:
            return None
        item = min(self._due, key=self._due.__getitem__)
        return item, self._due[item]

    def done(self, item: Hashable, now: float) -> None:
        """`item` was asked at `now`: next due one interval after its due time, never in the past."""
        if item in self._due:
            self._due[item] = max(self._due[item] + self._interval[item], now)

    def __contains__(self, item: Hashable) -> bool:
        return item in self._interval

    def items(self) -> list[tuple[Hashable, float]]:
        return list(self._interval.items())


class RateLimit:
    """At most `rate` requests per second: consecutive requests at least 1/rate seconds apart."""

    def __init__(self, rate: float):
        if not rate > 0:
            raise ValueError("the request rate must be positive")
        self.spacing = 1.0 / rate
        self._last: float | None = None

    def wait(self, now: float) -> float:
        """Seconds to wait before the next request may go out."""
        return 0.0 if self._last is None else max(0.0, self._last + self.spacing - now)

    def sent(self, now: float) -> None:
        self._last = now


class Backoff:
    """Exponential back-off with jitter between `low` and `high` seconds, reset by `reset()`."""

    def __init__(self, low: float, high: float, rng: random.Random | None = None):
        self.low, self.high = low, high
        self._next = low
        self._rng = rng or random.Random()

    def delay(self) -> float:
        """The next wait (doubling up to `high`), with up to 25 % jitter off it."""
        delay = self._next
        self._next = min(self._next * 2.0, self.high)
        return delay * (0.75 + self._rng.random() / 4.0)

    def reset(self) -> None:
        self._next = self.low
