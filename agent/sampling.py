"""Sampling: which decoded values become records.

A tap connects one signal to one stream. It records a value when it changes,
at most once per minimum interval; a change held back by the interval is not
lost, it is recorded as soon as the interval has passed (the next frame of
that message), so the ledger never ends on a stale value.
"""

from __future__ import annotations

from typing import Any, Callable

SampleSink = Callable[[float, str, Any, "str | None"], None]


class _Unowned:
    """Stands in for a message handler until one adopts the tap."""

    pending = 0


class Tap:
    """On-change, minimum-interval sampling of one signal into one stream."""

    __slots__ = ("sink", "name", "source", "min_interval", "last", "last_t", "pending", "owner")

    def __init__(self, sink: SampleSink, name: str, source: str | None, min_interval: float, owner: "Any" = None):
        self.sink = sink
        self.name = name
        self.source = source  # DBC Message.Signal when `name` is a VSS path, else None
        self.min_interval = min_interval
        self.last: Any = None
        self.last_t = float("-inf")
        self.pending = False
        self.owner = owner if owner is not None else _Unowned()  # the handler counting taps waiting for their interval

    def offer(self, t: float, value: Any) -> None:
        if value == self.last and not self.pending:
            return
        if t - self.last_t >= self.min_interval:
            if value != self.last:
                self.sink(t, self.name, value, self.source)
                self.last = value
                self.last_t = t
            if self.pending:
                self.pending = False
                self.owner.pending -= 1
        elif not self.pending:
            self.pending = True
            self.owner.pending += 1


class MessageHandler:
    """Everything the pipeline does with one message's frames: skip, extract, sample."""

    __slots__ = ("extract", "taps", "last_data", "pending")
    watched = False  # the crash ring reads this message at its ticks (carledger.edr.recorder.WatchedHandler)

    def __init__(self, extract: Callable[[bytes], list], taps: list[list[Tap]]):
        self.extract = extract
        self.taps = taps  # one list of taps per extracted signal
        self.last_data: bytes | None = None
        self.pending = 0  # taps holding a change back until their interval passes

    def handle(self, t: float, data: bytes) -> None:
        if data == self.last_data and not self.pending:
            return
        self.last_data = data
        for value, taps in zip(self.extract(data), self.taps):
            if value is not None:
                for tap in taps:
                    tap.offer(t, value)
