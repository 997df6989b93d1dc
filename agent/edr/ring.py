"""The pre-crash ring buffer: every capture signal's value at each 100 ms tick, for the last 20 s.

It lives only in memory. Nothing of it reaches the ledger unless a crash
triggers a capture, which then takes the buffered ticks as its pre-crash
data and keeps receiving new ticks until it ends.

Ticks sit on a fixed grid of the data's clock (multiples of 100 ms), and a
tick holds each signal's latest value at or before it (sample and hold).
A tick is emitted once a sample or a poll shows the clock has passed it.

Most capture signals only fill ticks: for those the ring reads the newest
frame of their message at each tick (`watch`) instead of taking every
sample, the same value sample and hold gives (issue 16: crash readiness
cost 20 % of throughput while every sample was offered).

A tick keeps those frames as they are, not decoded: the car is ready for a
crash all the time and crashes almost never, so the ring decodes a tick
only when somebody reads it (`window`, `ticks`: a capture's pre-crash data)
or a capture is running (`sink`). Between captures a tick costs a tuple of
references to the newest frames and one of the values held by samples, not
a decode of every watched message (issue 16, item 4).
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

#: How the ring reads one watched message: its signals' names, a picker of their values from a decode, the decoder.
_Reader = tuple[tuple[str, ...], Callable[[list], tuple], Callable[[bytes], list]]

#: One tick as the ring keeps it: its index on the grid (its time: round(index * period, 6)), the values held by
#: samples then (name, value), the newest frame of each watched message then (None: none yet), and how to read
#: those frames (one reader per frame).
_Kept = tuple[int, tuple[tuple[str, Any], ...], tuple["bytes | None", ...], tuple[_Reader, ...]]

_LAST_DATA = operator.attrgetter("last_data")
_NEVER = -math.inf


class FrameSource(Protocol):
    """What the ring reads a watched message from: its newest frame, and how to decode it."""

    last_data: bytes | None
    extract: Callable[[bytes], list]


class SnapshotRing:
    """Ticks of the last `length` seconds; `sink`, when set, also gets each new tick (a running capture)."""

    def __init__(self, period: float = PERIOD, length: float = PRE_CRASH):
        self.period = period
        self._kept: collections.deque[_Kept] = collections.deque(maxlen=round(length / period))
        self.values: dict[str, Any] = {}  # signal -> its newest value
        self.sources: dict[str, str | None] = {}  # signal -> its DBC Message.Signal
        self.sink: Callable[[Tick], None] | None = None  # set by follow()
        # frames and samples at or after this time must call advance() first (the hot path's one test);
        # -inf while a capture follows the ring, so that every frame then goes the capture's way
        self.due = -math.inf
        self._next: int | None = None  # index on the grid of the next tick to emit
        self._last_t = -math.inf
        # (bus, message) -> its frame source and the (index, name) of the signals read from it at each tick;
        # keyed by message so that a handler rebuilt for another policy replaces the old one
        self.watched: dict[tuple[str, str], tuple[FrameSource, tuple[tuple[int, str], ...]]] = {}
        # per watched message: its signals' names, and a picker of their values from a decode (C, not a loop)
        self._pickers: dict[tuple[str, str], tuple[tuple[str, ...], Callable[[list], tuple]]] = {}
        # the watched messages' frame sources and readers, in the same order: what a tick keeps
        self._sources: tuple[FrameSource, ...] = ()
        self._readers: tuple[_Reader, ...] = ()

    def watch(self, key: tuple[str, str], source: FrameSource, signals: list[tuple[int, str, "str | None"]]) -> None:
        """Fill ticks with these signals of `source`'s newest frame (index in its decode, name, DBC source)."""
        if key in self.watched:
            self.fold(key)  # the handler it replaces: its newest frame's values stay held until the new one has a frame
        for _, name, dbc in signals:
            self.sources[name] = dbc
        self.watched[key] = (source, tuple((index, name) for index, name, _ in signals))
        indices = [index for index, _, _ in signals]
        pick = operator.itemgetter(*indices) if len(indices) > 1 else (lambda decoded, i=indices[0]: (decoded[i],))
        self._pickers[key] = (tuple(name for _, name, _ in signals), pick)
        self._sources = tuple(source for source, _ in self.watched.values())
        self._readers = tuple((*self._pickers[each], source.extract) for each, (source, _) in self.watched.items())

    @property
    def ticks(self) -> list[Tick]:
        """The ticks the ring holds, oldest first, decoded."""
        return [self._tick(kept) for kept in self._kept]

    def _tick(self, kept: _Kept) -> Tick:
        """A kept tick decoded: the held values, then each watched message's newest frame read over them.

        What `fold` for every watched message at the tick gave: the frames override what samples
        held, and a signal a frame lacks keeps the value held for it.
        """
        index, held, frames, readers = kept
        values = dict(held)
        for data, (names, pick, extract) in zip(frames, readers):
            if data is None:
                continue
            picked = pick(extract(data))
            if None not in picked:
                values.update(zip(names, picked))
                continue
            for name, value in zip(names, picked):
                if value is not None:
                    values[name] = value
        sources = self.sources
        return round(index * self.period, 6), tuple(zip(values, values.values(), map(sources.__getitem__, values)))

    def refresh(self) -> None:
        """Bring the watched signals' held values up to their messages' newest frames (a capture's start)."""
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

    def follow(self, sink: Callable[[Tick], None] | None) -> None:
        """Give each new tick, decoded, to `sink` too (a running capture); None: stop."""
        self.sink = sink
        self._due()

    def _due(self) -> None:
        self.due = -math.inf if self.sink is not None or self._next is None else self._next * self.period

    def offer(self, t: float, name: str, value: Any, source: str | None) -> None:
        if t >= self.due:
            self.advance(t)
        self.values[name] = value
        self.sources[name] = source

    def advance(self, t: float) -> None:
        """Emit every tick before t (a sample at t belongs to the ticks from t on)."""
        last_t = self._last_t
        if t - last_t > STALE and last_t > _NEVER:
            self._forget()  # the car was silent: nothing held is current
            self._next = None
        if t > last_t:
            self._last_t = t
        period = self.period
        following = self._next
        if following is None:
            self._next = math.floor(t / period) + 1
            self.due = min(self._next * period, t + STALE) if self.sink is None else _NEVER
            return
        last = math.ceil(t / period) - 1  # the last grid index strictly before t
        if last < following:
            return
        kept = self._kept
        self._next = last + 1
        sink = self.sink
        self.due = (last + 1) * period if sink is None else _NEVER
        # Kept as they are: the held values, and the newest frames, which advance() runs before any frame at or
        # past the tick replaces (the frame at or before the tick: the value sample and hold gives). C loops only.
        values = self.values
        held = tuple(values.items()) if values else ()
        frames = tuple(map(_LAST_DATA, self._sources))
        if last == following and sink is None:  # one tick, between captures: what runs ten times a second
            kept.append((last, held, frames, self._readers))
            return
        first = following if following > last - kept.maxlen else last - kept.maxlen  # a long gap: what the ring holds
        for index in range(first, last + 1):
            kept.append((index, held, frames, self._readers))
            if sink is not None:
                sink(self._tick(kept[-1]))

    def window(self, after: float) -> list[Tick]:
        """The ticks later than `after` (the pre-crash data of a capture triggered at after + length), decoded."""
        period = self.period
        return [self._tick(kept) for kept in self._kept if round(kept[0] * period, 6) > after]

    def clear(self) -> None:
        self._kept.clear()
        self.values.clear()
        self.watched.clear()
        self._pickers.clear()
        self._sources, self._readers = (), ()
        self._next = None
        self._last_t = -math.inf
        self.due = -math.inf
