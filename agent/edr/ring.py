"""The pre-crash ring buffer: every capture signal's value at each 100 ms tick, for the last 20 s.

It lives only in memory. Nothing of it reaches the ledger unless a crash
triggers a capture, which then takes the buffered ticks as its pre-crash
data and keeps receiving new ticks until it ends.

Ticks sit on a fixed grid of the data's clock (multiples of 100 ms), and a
tick holds each signal's latest value at or before it (sample and hold).
A tick is emitted once a sample or a poll shows the clock has passed it.

Most capture signals only fill ticks: for those the ring reads the newest
frame of their message at each tick (`watch`) instead of taking every
sample, the same value sample and hold gives, at a tenth of a millisecond
per tick instead of a call per frame (issue 16: crash readiness cost 20 %
of throughput while every sample was offered).
"""

from __future__ import annotations

import collections
import math
import operator
from typing import Any, Callable, Protocol

PERIOD = 0.1  # seconds between ticks: 10 Hz, as Part 563 (2024) and UN R160 require
PRE_CRASH = 20.0  # seconds of ticks kept
STALE = 2.0  # a data gap this long: what was held is no longer the car's state

#: One tick: its time and (name, value, source) of every signal known then.
Tick = tuple[float, tuple[tuple[str, Any, "str | None"], ...]]


class FrameSource(Protocol):
    """What the ring reads a watched message from: its newest frame, and how to decode it."""

    last_data: bytes | None
    extract: Callable[[bytes], list]


class SnapshotRing:
    """Ticks of the last `length` seconds; `sink`, when set, also gets each new tick (a running capture)."""

    def __init__(self, period: float = PERIOD, length: float = PRE_CRASH):
        self.period = period
        self.ticks: collections.deque[Tick] = collections.deque(maxlen=round(length / period))
        self.values: dict[str, Any] = {}  # signal -> its newest value
        self.sources: dict[str, str | None] = {}  # signal -> its DBC Message.Signal
        self.sink: Callable[[Tick], None] | None = None
        self.due = -math.inf  # samples at or after this time must call advance() first (the hot path's one test)
        self._next: int | None = None  # index on the grid of the next tick to emit
        self._last_t = -math.inf
        # (bus, message) -> its frame source and the (index, name) of the signals read from it at each tick;
        # keyed by message so that a handler rebuilt for another policy replaces the old one
        self.watched: dict[tuple[str, str], tuple[FrameSource, tuple[tuple[int, str], ...]]] = {}
        # per watched message: its signals' names, and a picker of their values from a decode (C, not a loop)
        self._pickers: dict[tuple[str, str], tuple[tuple[str, ...], Callable[[list], tuple]]] = {}

    def watch(self, key: tuple[str, str], source: FrameSource, signals: list[tuple[int, str, "str | None"]]) -> None:
        """Fill ticks with these signals of `source`'s newest frame (index in its decode, name, DBC source)."""
        for _, name, dbc in signals:
            self.sources[name] = dbc
        self.watched[key] = (source, tuple((index, name) for index, name, _ in signals))
        indices = [index for index, _, _ in signals]
        pick = operator.itemgetter(*indices) if len(indices) > 1 else (lambda decoded, i=indices[0]: (decoded[i],))
        self._pickers[key] = (tuple(name for _, name, _ in signals), pick)

    def refresh(self) -> None:
        """Bring the watched signals' held values up to their messages' newest frames.

        Runs before a tick is emitted, and advance() runs before any frame at or past the tick is
        handled, so the newest frame is the one at or before the tick: the value sample and hold gives.
        """
        for key in self.watched:
            self.fold(key)

    def fold(self, key: tuple[str, str]) -> None:
        """Hold the watched message's newest frame's values (a signal absent from it keeps its held value).

        Also runs before a frame that may lack a signal (multiplexed, or shorter than the message)
        replaces the newest one, so that what the replaced frame carried is held as a sample would be.
        """
        source = self.watched[key][0]
        data = source.last_data
        if data is None:
            return
        names, pick = self._pickers[key]
        picked = pick(source.extract(data))
        if None not in picked:
            self.values.update(zip(names, picked))  # runs for every watched message at every tick: C loops
            return
        values = self.values
        for name, value in zip(names, picked):
            if value is not None:
                values[name] = value

    def _forget(self) -> None:
        """Nothing held is current: neither the values nor the watched messages' frames so far.

        A handler without a newest frame takes the next one even when it repeats the last: the
        streams' taps drop a repeated value themselves.
        """
        self.values.clear()
        for source, _ in self.watched.values():
            source.last_data = None

    def offer(self, t: float, name: str, value: Any, source: str | None) -> None:
        if t >= self.due:
            self.advance(t)
        self.values[name] = value
        self.sources[name] = source

    def advance(self, t: float) -> None:
        """Emit every tick before t (a sample at t belongs to the ticks from t on)."""
        if t - self._last_t > STALE and self._last_t > -math.inf:
            self._forget()  # the car was silent: nothing held is current
            self._next = None
        self._last_t = max(self._last_t, t)
        period = self.period
        if self._next is None:
            self._next = math.floor(t / period) + 1
            self.due = min(self._next * period, t + STALE)
            return
        last = math.ceil(t / period) - 1  # the last grid index strictly before t
        if last < self._next:
            return
        first = max(self._next, last - self.ticks.maxlen)  # a long gap: only what the ring can hold
        self._next = last + 1
        self.due = self._next * period
        if self.watched:
            self.refresh()
        sources = self.sources
        values = self.values
        row = tuple(zip(values, values.values(), map(sources.__getitem__, values)))  # C loops: this runs every tick
        sink, ticks = self.sink, self.ticks
        for index in range(first, last + 1):
            tick = (round(index * period, 6), row)
            ticks.append(tick)
            if sink is not None:
                sink(tick)

    def window(self, after: float) -> list[Tick]:
        """The ticks later than `after` (the pre-crash data of a capture triggered at after + length)."""
        return [tick for tick in self.ticks if tick[0] > after]

    def clear(self) -> None:
        self.ticks.clear()
        self.values.clear()
        self.watched.clear()
        self._pickers.clear()
        self._next = None
        self._last_t = -math.inf
        self.due = -math.inf
